"""The error function to float32 accuracy as a rational function, for the GELU kernels of both backends.

``erf(x) ~= x * P(x^2) / Q(x^2)`` for ``|x| <= 4`` (and +-1 beyond, where erf is 1 to float32
precision), Eigen's ``generic_fast_erf_float`` coefficients: at most 6.5e-8 from :func:`math.erf` in
float64 arithmetic (tested), about half an ulp of 1 in float32. It is plain arithmetic, so NumPy evaluates
it without SciPy and Numba vectorises it, where ``math.erf`` is a scalar library call.
"""
from __future__ import annotations

ERF_CLAMP = 4.0
ERF_NUMERATOR = (-1.60960333262415e-02, -2.95459980854025e-03, -7.34990630326855e-04, -5.69250639462346e-05,
                 -2.10102402082508e-06, 2.77068142495902e-08, -2.72614225801306e-10)  # x^1, x^3, ..., x^13
ERF_DENOMINATOR = (-1.42647390514189e-02, -7.37332916720468e-03, -1.68282697438203e-03, -2.13374055278905e-04,
                   -1.45660718464996e-05)  # x^0, x^2, ..., x^8


def erf_rational(c, x2):
    """The rational function at ``c`` (already clamped to [-4, 4]) with ``x2 = c * c``; scalars or arrays."""
    a0, a1, a2, a3, a4, a5, a6 = ERF_NUMERATOR
    b0, b1, b2, b3, b4 = ERF_DENOMINATOR
    p = ((((((a6 * x2 + a5) * x2 + a4) * x2 + a3) * x2 + a2) * x2 + a1) * x2 + a0) * c
    q = (((b4 * x2 + b3) * x2 + b2) * x2 + b1) * x2 + b0
    return p / q
