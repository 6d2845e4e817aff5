"""fastcnn: fast convolutional networks on the CPU, in NumPy and Numba."""
from . import functional
from .dispatch import (
    BackendUnavailableError,
    available_backends,
    clear_dispatch_decisions,
    dispatch_decisions,
    dispatch_report,
    get_backend,
    set_backend,
    use_backend,
)

__version__ = "0.1.0"

__all__ = [
    "functional",
    "BackendUnavailableError",
    "available_backends",
    "clear_dispatch_decisions",
    "dispatch_decisions",
    "dispatch_report",
    "get_backend",
    "set_backend",
    "use_backend",
]
