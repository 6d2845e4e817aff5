"""Fixtures shared by the tests (the root conftest.py points FASTCNN_HOME at a temporary directory)."""
import numpy as np
import pytest

import fastcnn

BACKENDS = fastcnn.available_backends()


@pytest.fixture(params=BACKENDS)
def backend(request):
    return request.param


@pytest.fixture
def rng():
    return np.random.default_rng(1234)
