import os
import tempfile

# Keep every test away from the user's real cache (dispatch decisions, data sets).
os.environ.setdefault("FASTCNN_HOME", tempfile.mkdtemp(prefix="fastcnn-test-home-"))

import numpy as np  # noqa: E402
import pytest  # noqa: E402

import fastcnn  # noqa: E402

BACKENDS = fastcnn.available_backends()


@pytest.fixture(params=BACKENDS)
def backend(request):
    return request.param


@pytest.fixture
def rng():
    return np.random.default_rng(1234)
