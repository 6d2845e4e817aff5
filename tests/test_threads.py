"""Thread pools: the one knob for Numba and BLAS, and BLAS held off small products."""
import numpy as np
import pytest
from threadpoolctl import threadpool_info

import fastcnn
from fastcnn import threads
from fastcnn.kernels import blas


def _blas_threads():
    return [i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"]


@pytest.mark.parametrize("shape", [(8, 16, 4), (3000, 200, 10), (10, 200, 3000), (10, 30000, 20)])
def test_matmul_is_right_repeatable_and_restores_the_blas_thread_count(rng, shape):
    """Small, then large products split by rows, by columns and along the summed axis."""
    m, k, n = shape
    a, b = rng.standard_normal((m, k)), rng.standard_normal((k, n))
    before = _blas_threads()
    got = blas.matmul(a, b)
    np.testing.assert_allclose(got, a @ b, rtol=1e-12, atol=1e-12)
    np.testing.assert_array_equal(blas.matmul(a, b), got)
    assert _blas_threads() == before


def test_set_num_threads_sets_numba_and_blas_and_checks_its_argument():
    before = threads.get_num_threads()
    try:
        threads.set_num_threads(1)
        assert threads.get_num_threads() == 1
        assert set(_blas_threads()) <= {1}
    finally:
        threads.set_num_threads(before)
    for bad in (0, -1, threads.max_threads() + 1, 1.5, True, "2"):
        with pytest.raises(ValueError, match="threads must be an int from 1 to"):
            fastcnn.set_num_threads(bad)


def test_set_num_threads_works_from_any_python_thread():
    """BLAS's thread count is process-wide: a second Python thread can change it too (threadpoolctl's
    own limits would let only the first thread that called them do so)."""
    import threading

    before = threads.get_num_threads()
    try:
        threads.set_num_threads(threads.max_threads())
        worker = threading.Thread(target=threads.set_num_threads, args=(1,))
        worker.start()
        worker.join()
        assert set(_blas_threads()) <= {1}
    finally:
        threads.set_num_threads(before)
