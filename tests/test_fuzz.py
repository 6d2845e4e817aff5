"""Property-based fuzzing of the public API with arbitrary arguments.

The only outcomes allowed are a result of the documented shape and dtype, or a ValueError, TypeError
or MemoryError whose message names something; never a Numba typing error, another exception type or
a crash.
"""
import io
import math
import contextlib

import numpy as np
from hypothesis import HealthCheck, find, given, settings
from hypothesis import strategies as st

import fastcnn
import fastcnn.functional as F
from fastcnn import cli, datasets, layers as L

from .conftest import BACKENDS

FUZZ = settings(max_examples=int(__import__("os").environ.get("FUZZ_EXAMPLES", 60)), deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                      HealthCheck.too_slow])
ALLOWED = (ValueError, TypeError, MemoryError)
DTYPES = [np.float32, np.float64, np.float16, np.int32, np.int64, np.uint8, np.bool_, np.complex64, object]
SPECIAL = [0.0, -0.0, 1.0, -1.0, np.nan, np.inf, -np.inf, 1e38, -1e38, 1e-45]


@st.composite
def arrays(draw, min_ndim=0, max_ndim=5, max_side=5):
    shape = tuple(draw(st.lists(EDGE_SIDES.map(lambda s: min(s, max_side)), min_size=min_ndim, max_size=max_ndim)))
    dtype = draw(st.sampled_from(DTYPES))
    values = np.array(draw(st.lists(st.sampled_from(SPECIAL) | st.floats(-3, 3), min_size=1, max_size=8)))
    flat = np.resize(values, int(np.prod(shape)))
    with np.errstate(invalid="ignore", over="ignore"):
        return flat.astype(dtype).reshape(shape) if dtype is not object else flat.astype(object).reshape(shape)


EDGE_SIDES = st.sampled_from([0, 1, 2]) | st.integers(0, 5)  # empty, single and tiny sizes, drawn on purpose


@st.composite
def batches(draw, channels=None):
    """A well-formed NCHW float batch whose batch size is often 0 or 1 and whose sides are small."""
    n = draw(st.sampled_from([0, 0, 1]) | st.integers(0, 3))
    c = channels if channels is not None else draw(st.integers(1, 3))
    h, w = draw(st.integers(1, 6)), draw(st.integers(1, 6))
    values = np.array(draw(st.lists(st.sampled_from(SPECIAL) | st.floats(-3, 3), min_size=1, max_size=8)))
    dtype = draw(st.sampled_from([np.float32, np.float64]))
    return np.resize(values, (n, c, h, w)).astype(dtype)


@st.composite
def conv_pairs(draw):
    """``(x, weight)`` that fit each other (often an empty batch, a 1x1 or a whole-input kernel), or anything."""
    x = draw(batches())
    kh, kw = draw(st.integers(1, x.shape[2])), draw(st.integers(1, x.shape[3]))
    values = np.array(draw(st.lists(st.sampled_from(SPECIAL) | st.floats(-3, 3), min_size=1, max_size=8)))
    return x, np.resize(values, (draw(st.integers(1, 3)), x.shape[1], kh, kw)).astype(x.dtype)


params = st.one_of(st.integers(-2, 6), st.tuples(st.integers(-1, 5), st.integers(-1, 5)), st.sampled_from(
    [None, "same", "valid", "bogus", 1.5, (1, 2, 3), [2, 2], True, 10**9, np.int64(2)]))


def _outcome(fn, *args, allowed=ALLOWED, **kwargs):
    """Call ``fn``; return its result, or None after an allowed error with a real message."""
    try:
        with np.errstate(all="ignore"):
            return fn(*args, **kwargs)
    except allowed as exc:
        assert str(exc).strip(), f"{type(exc).__name__} without a message"
        return None


@FUZZ
@given(xw=conv_pairs() | st.tuples(arrays(), arrays()), b=st.none() | arrays(max_ndim=2), stride=params, padding=params,
       dilation=params, backend=st.sampled_from(BACKENDS + ("auto",)))
def test_conv2d_takes_anything(xw, b, stride, padding, dilation, backend):
    x, w = xw
    y = _outcome(F.conv2d, x, w, b, stride, padding, dilation, backend=backend)
    if y is not None:
        assert y.dtype == x.dtype and y.ndim == 4 and y.shape[:2] == (x.shape[0], w.shape[0])
        g = _outcome(F.conv2d_backward, np.ones_like(y), x, w, stride, padding, dilation, backend=backend)
        assert g is not None and g[0].shape == x.shape and g[1].shape == w.shape


@FUZZ
@given(xw=conv_pairs() | st.tuples(arrays(), arrays()), stride=params, pool=params,
       relu=st.sampled_from([False, True, 1, "no"]), other=arrays(), backend=st.sampled_from(BACKENDS + ("auto",)))
def test_conv2d_max_pool2d_takes_anything(xw, stride, pool, relu, other, backend):
    x, w = xw
    out = _outcome(F.conv2d_max_pool2d, x, w, None, stride, pool_size=pool, relu=relu, backend=backend)
    if out is not None:
        y, idx = out
        assert y.shape == idx.shape and y.dtype == x.dtype and y.shape[:2] == (x.shape[0], w.shape[0])
        g = _outcome(F.conv2d_max_pool2d_backward, np.ones_like(y), idx, x, w, stride, relu_output=y if relu else None,
                     backend=backend)
        assert g is not None and g[0].shape == x.shape and g[1].shape == w.shape
        _outcome(F.conv2d_max_pool2d_backward, other, idx, x, w, stride, relu_output=other, backend=backend)


@FUZZ
@given(x=batches() | arrays(), kernel=params, stride=params, padding=params, backend=st.sampled_from(BACKENDS + ("auto",)))
def test_pools_take_anything(x, kernel, stride, padding, backend):
    out = _outcome(F.max_pool2d, x, kernel, stride, padding, backend=backend)
    if out is not None:
        y, idx = out
        assert y.shape == idx.shape and y.dtype == x.dtype
        gx = _outcome(F.max_pool2d_backward, np.ones_like(y), idx, x.shape, backend=backend)
        assert gx is not None and gx.shape == x.shape
    y = _outcome(F.avg_pool2d, x, kernel, stride, padding, backend=backend)
    if y is not None:
        gx = _outcome(F.avg_pool2d_backward, np.ones_like(y), x.shape, kernel, stride, padding, backend=backend)
        assert gx is not None and gx.shape == x.shape


@FUZZ
@given(g=arrays(), idx=arrays(), shape=st.lists(st.integers(-2, 10**6), max_size=5), backend=st.sampled_from(BACKENDS))
def test_max_pool2d_backward_takes_anything(g, idx, shape, backend):
    out = _outcome(F.max_pool2d_backward, g, idx, tuple(shape), backend=backend)
    if out is not None:
        assert out.shape == tuple(shape)


@FUZZ
@given(x=batches().map(lambda a: a.reshape(a.shape[0], math.prod(a.shape[1:]))) | arrays(), w=arrays(max_ndim=3), other=arrays(),
       backend=st.sampled_from(BACKENDS + ("auto",)))
def test_linear_and_relu_take_anything(x, w, other, backend):
    y = _outcome(F.linear, x, w, backend=backend)
    if y is not None:
        assert y.shape == (x.shape[0], w.shape[0])
        _outcome(F.linear_backward, np.ones_like(y), x, w, backend=backend)
    r = _outcome(F.relu, x, backend=backend)
    if r is not None:
        assert r.shape == x.shape
        _outcome(F.relu_backward, other, r, backend=backend)
    d = _outcome(F.dropout, x, 0.5, 7, backend=backend)
    if d is not None:
        assert d.shape == x.shape
    labels = other if other.dtype.kind != "f" or not x.ndim else np.arange(x.shape[0]) % 3
    ce = _outcome(F.softmax_cross_entropy, x, labels, backend=backend)
    if ce is not None:
        assert ce[1].shape == x.shape


def test_the_strategies_draw_empty_batches_and_edge_sizes():
    assert find(conv_pairs(), lambda xw: xw[0].shape[0] == 0 and xw[1].shape[2:] == xw[0].shape[2:]) is not None
    assert find(batches(), lambda x: x.shape[0] == 0 and x.shape[2] == 1) is not None
    assert find(arrays(min_ndim=4, max_ndim=4), lambda a: a.shape[0] == 0 and a.shape[1] == 1) is not None


layer_args = st.lists(st.one_of(st.integers(-2, 40), st.floats(-1, 2), st.none(), st.text(max_size=3),
                                st.tuples(st.integers(-1, 4), st.integers(-1, 4))), max_size=4)


@FUZZ
@given(kind=st.sampled_from(sorted(L.LAYER_TYPES)), args=layer_args, x=arrays(max_side=6))
def test_layers_take_anything(kind, args, x):
    layer = _outcome(L.LAYER_TYPES[kind], *args)
    if layer is None:
        return
    y = _outcome(layer.forward, x, True)
    if y is not None and isinstance(y, np.ndarray):
        _outcome(layer.backward, np.ones_like(y))


@st.composite
def images(draw):
    """Mostly the right shape (N, 1, 8, 8), with any dtype and special values, or anything at all."""
    n = draw(st.integers(0, 5))
    values = arrays(max_ndim=1, max_side=8).filter(lambda a: a.size > 0)
    well_formed = st.builds(lambda v, n: np.resize(v, (n, 1, 8, 8)), values, st.just(n))
    return draw(well_formed | arrays(max_side=9))


@FUZZ
@given(x=images(), y=arrays(max_ndim=2, max_side=6) | st.lists(st.integers(-2, 11), max_size=6).map(np.array),
       batch=st.integers(-1, 6), epochs=st.integers(-1, 2))
def test_fit_and_predict_take_anything(x, y, batch, epochs):
    model = fastcnn.Sequential([L.Conv2D(1, 2, 3, rng=0), L.ReLU(), L.MaxPool2D(2), L.Flatten()], input_shape=(1, 8, 8))
    # Finite but huge images (1e38) overflow the conv to infinity: fit's documented divergence error.
    history = _outcome(model.fit, x, y, epochs=epochs, batch_size=batch, verbose=0,
                       allowed=ALLOWED + (fastcnn.TrainingDivergedError,))
    if history is not None:
        assert len(history["loss"]) == epochs
    _outcome(model.predict, x, batch_size=batch)


@FUZZ
@given(data=st.binary(max_size=300), kind=st.sampled_from(["idx", "csv", "model"]))
def test_loaders_refuse_garbage_cleanly(tmp_path_factory, data, kind):
    path = tmp_path_factory.mktemp("fuzz") / f"file.{kind}"
    path.write_bytes(data)
    load = {"idx": datasets.read_idx, "csv": datasets.read_kaggle_csv, "model": fastcnn.load_model}[kind]
    _outcome(load, path)


cli_words = st.sampled_from(["train", "predict", "info", "bogus", "--model", "lenet", "mlp", "nope", "--epochs",
                             "0", "-1", "x", "--threads", "999", "--backend", "numbo", "--lr", "-3", "inf",
                             "--index", "70000", "missing.npz", "--batch-size", "--data", "/nonexistent"])


@FUZZ
@given(argv=st.lists(cli_words, max_size=6))
def test_cli_never_shows_a_traceback(argv):
    if "train" in argv:
        argv = argv + ["--epochs", "0"]  # never start a real training run from the fuzzer (the last value wins)
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            code = cli.main(argv)
        except SystemExit as exc:  # argparse's usage errors
            code = exc.code
    assert "Traceback" not in err.getvalue()
    assert code in (0, 1, 2)
