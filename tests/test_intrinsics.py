"""The LLVM-IR helpers of ``kernels/_tiles.py`` and ``kernels/_pool_vectors.py``, each called directly
through a tiny ``@njit`` wrapper and compared with the formula in its docstring: random offsets,
counts 1..lanes, float32 and float64. Memory corruption is the one failure no end-to-end test reliably
catches, so each test also checks that nothing outside the documented writes changed."""
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

numba = pytest.importorskip("numba")

from fastcnn.kernels import _pool_vectors as pv  # noqa: E402
from fastcnn.kernels import _rows as row_ops  # noqa: E402
from fastcnn.kernels import _tiles as tiles  # noqa: E402
from fastcnn.kernels import jit  # noqa: E402

DTYPES = [np.float32, np.float64]


@numba.njit
def _store_tile(out, w, row, col, src, offsets, first, stop, add):
    tiles.store_tile(out, w, row, col, src, offsets, first, stop, add)


@numba.njit
def _store_row(out, w, row, col, src, offsets, first, stop, add):
    tiles.store_row(out, w, row, col, src, offsets, first, stop, add)


@numba.njit
def _store_point(out, w, row, col, src, offsets, first, stop, add, rows, vectors):
    tiles.store_point(out, w, row, col, src, offsets, first, stop, add, rows, vectors)


@numba.njit
def _dot_tile(out, g, g_starts, x, x_starts, length):
    tiles.dot_tile(out, g, g_starts, x, x_starts, length, 0)


@numba.njit
def _dot_row(out, g, g_starts, x, x_starts, length):
    tiles.dot_row(out, g, g_starts, x, x_starts, length, 0)


@numba.njit
def _dot_segments(out, g, g_starts, g_step, x, x_starts, x_step, length, count):
    tiles.dot_segments(out, g, g_starts, g_step, x, x_starts, x_step, length, count)


@numba.njit
def _dot_segments_row(out, g, g_starts, g_step, x, x_starts, x_step, length, count):
    tiles.dot_segments_row(out, g, g_starts, g_step, x, x_starts, x_step, length, count)


@numba.njit
def _dense_tile(out, g, g_starts, x, x_starts, length, ahead):
    tiles.dense_tile(out, g, g_starts, x, x_starts, length, ahead)


@numba.njit
def _channel_tile(out, at, w, w_at, src, pos, first, taps, width, add):
    tiles.channel_tile(out, at, w, w_at, src, pos, first, taps, width, add)


@numba.njit
def _winograd_input(v, v_at, v_step, p, p_at, p_row, p_col):
    tiles.winograd_input(v, v_at, v_step, p, p_at, p_row, p_col)


@numba.njit
def _winograd_output(o, o_at, o_row, o_col, m, m_at, m_step):
    tiles.winograd_output(o, o_at, o_row, o_col, m, m_at, m_step)


@numba.njit
def _winograd_gradient(z, z_at, z_step, g, g_at, g_row, g_col):
    tiles.winograd_gradient(z, z_at, z_step, g, g_at, g_row, g_col)


@numba.njit
def _transpose_tile(out, out_at, out_step, rows, src, src_at, src_step, cols, plus, plus_at, relu):
    tiles.transpose_tile(out, out_at, out_step, rows, src, src_at, src_step, cols, plus, plus_at, relu)


@numba.njit
def _write_channels(buffer, buffer_at, width, b, c0, count, length, out, out_at, out_step, relu):
    row_ops.write_channels(buffer, buffer_at, width, b, c0, count, length, out, out_at, out_step, relu)


@numba.njit
def _max_pairs(x, at, step, w, relu, y, out, idx, base, count):
    pv.max_pairs(x, at, step, w, None, relu, y, out, idx, base, count)


@numba.njit
def _max_pairs_bias(x, at, step, w, bias, relu, y, out, idx, base, count):
    pv.max_pairs(x, at, step, w, bias, relu, y, out, idx, base, count)


@numba.njit
def _unpool_pairs(g, at, idx, base, w, gate, gated, grad, to, step, count, width):
    return pv.unpool_pairs(g, at, idx, base, w, gate, gated, grad, to, step, count, width)


@numba.njit
def _clear(a, start, length):
    pv.clear(a, start, length)


def _lanes(dtype):
    return tiles.lanes(np.dtype(dtype).itemsize)


@pytest.mark.parametrize("features, forced, want", [
    ("+avx2,+fma,+avx512f,+avx512bw", "", 64), ("+avx2,-avx512f", "", 32), ("", "", 32), (None, "32", 32),
    ("+avx2", "64", 64)])
def test_vector_width_follows_the_features_numba_compiles_for(monkeypatch, features, forced, want):
    monkeypatch.setattr(jit.numba.config, "CPU_FEATURES", features)
    monkeypatch.setenv("FASTCNN_VECTOR_BYTES", forced)
    assert jit._vector_bytes() == want


def test_a_vector_width_other_than_32_or_64_is_refused(monkeypatch):
    monkeypatch.setenv("FASTCNN_VECTOR_BYTES", "48")
    with pytest.raises(ValueError, match="FASTCNN_VECTOR_BYTES must be 32 or 64, got '48'"):
        jit._vector_bytes()


STORE_TILES = ([("tile", tiles.ROWS, tiles.VECTORS), ("row", 1, tiles.VECTORS)]
               + [("point", rows, vectors) for rows in (tiles.POINT_ROWS, 1) for vectors in range(1, tiles.POINT_VECTORS + 1)])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind, rows, vectors", STORE_TILES)
def test_store_tile_sums_shifted_reads(dtype, kind, rows, vectors):
    """``store_tile``, ``store_row`` and every geometry of the 1x1 conv's ``store_point``."""
    rng = np.random.default_rng(rows * 10 + vectors)
    width = vectors * _lanes(dtype)
    if kind == "point":
        def call(*args):
            _store_point(*args, rows, vectors)
    else:
        call = _store_tile if kind == "tile" else _store_row
    for trial in range(6):
        n_taps = int(rng.integers(1, 20))
        out = rng.standard_normal((rows + 3, width * 2 + 5)).astype(dtype)
        w = rng.standard_normal((rows + 3, n_taps)).astype(dtype)
        src = rng.standard_normal(400).astype(dtype)
        col = int(rng.integers(0, out.shape[1] - width + 1))
        row = int(rng.integers(0, 4))
        offsets = rng.integers(0, src.size - width - col + 1, n_taps).astype(np.int64)
        first = int(rng.integers(0, n_taps))
        stop = int(rng.integers(first, n_taps + 1))
        add = bool(trial % 2)
        expected = out.astype(np.float64)
        tile = sum(w[row : row + rows, t, None].astype(np.float64) * src[offsets[t] + col : offsets[t] + col + width]
                   for t in range(first, stop)) + np.zeros((rows, width))
        expected[row : row + rows, col : col + width] = tile + (expected[row : row + rows, col : col + width] if add else 0)
        call(out, w, row, col, src, offsets, first, stop, add)
        np.testing.assert_allclose(out, expected, rtol=1e-5 if dtype == np.float32 else 1e-12, atol=1e-5)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind", ["tile", "row", "dense"])
def test_dot_tile_gives_dot_products(dtype, kind):
    rng = np.random.default_rng(7)
    rows, cols, call = {"tile": (tiles.DOT_ROWS, tiles.DOT_COLS, _dot_tile), "row": (1, tiles.DOT_COLS, _dot_row),
                        "dense": (tiles.DENSE_ROWS, tiles.DENSE_COLS, _dense_tile)}[kind]
    n = _lanes(dtype)
    for _ in range(6):
        length = n * int(rng.integers(0, 6))
        g = rng.standard_normal(300).astype(dtype)
        x = rng.standard_normal(300).astype(dtype)
        g_starts = rng.integers(0, g.size - length + 1, rows).astype(np.int64)
        x_starts = rng.integers(0, x.size - length + 1, cols).astype(np.int64)
        out = np.full((rows + 1, cols), 7.0, dtype)  # C-contiguous rows of cols values; the last row must stay
        args = (out, g, g_starts, x, x_starts, length) + ((int(rng.integers(0, 64)),) if kind == "dense" else ())
        call(*args)
        expected = [g[g_starts[a] : g_starts[a] + length].astype(np.float64) @ x[x_starts[b] : x_starts[b] + length]
                    for a in range(rows) for b in range(cols)]
        np.testing.assert_allclose(out[:rows].ravel(), expected, rtol=1e-5 if dtype == np.float32 else 1e-12, atol=1e-5)
        assert (out[rows] == 7.0).all()


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind", ["tile", "row"])
def test_dot_segments_sums_dot_products_over_segments_of_any_length(dtype, kind):
    rng = np.random.default_rng(8)
    rows, call = {"tile": (tiles.DOT_ROWS, _dot_segments), "row": (1, _dot_segments_row)}[kind]
    cols, n = tiles.DOT_COLS, _lanes(dtype)
    for length in [0, 1, n - 1, n, n + 1, 3 * n + 2, 49]:  # whole vectors, a masked last vector, or both
        count = int(rng.integers(1, 4))
        g_step, x_step = length + int(rng.integers(1, 9)), length + int(rng.integers(1, 9))

        def segments(step, heads):  # NaN everywhere but the segments: a lane read past a segment's end shows
            data = np.full(heads * (count * step + 2 * n) + n, np.nan, dtype)
            starts = np.arange(heads, dtype=np.int64) * (count * step + 2 * n) + int(rng.integers(0, n))
            for start in starts:
                for k in range(count):
                    data[start + k * step : start + k * step + length] = rng.standard_normal(length)
            return data, starts

        g, g_starts = segments(g_step, rows)
        x, x_starts = segments(x_step, cols)
        out = np.full((rows + 1, cols), 7.0, dtype)
        call(out, g, g_starts, g_step, x, x_starts, x_step, length, count)
        expected = [sum(g[g_starts[a] + s * g_step : g_starts[a] + s * g_step + length].astype(np.float64)
                        @ x[x_starts[b] + s * x_step : x_starts[b] + s * x_step + length] for s in range(count))
                    for a in range(rows) for b in range(cols)]
        np.testing.assert_allclose(out[:rows].ravel(), np.array(expected, np.float64).ravel(),
                                   rtol=1e-5 if dtype == np.float32 else 1e-12, atol=1e-5)
        assert (out[rows] == 7.0).all()


@pytest.mark.parametrize("c_out", [2, 16, 32, 33, 64])  # blocks of one vector, then of CHANNEL_VECTORS (float32: past 16 on AVX2, 32 on AVX-512)
@pytest.mark.parametrize("dtype", DTYPES)
def test_channel_tile_sums_broadcast_reads_times_channel_vectors(dtype, c_out):
    rng = np.random.default_rng(11)
    itemsize = np.dtype(dtype).itemsize
    width = tiles.channel_width(c_out, itemsize)
    positions = tiles.channel_positions(width, itemsize)
    assert positions * width == tiles.CHANNEL_ACCUMULATORS * tiles.lanes(itemsize)
    for attempt in range(6):
        n_taps = int(rng.integers(1, 30))
        src = rng.standard_normal(500).astype(dtype)
        w = rng.standard_normal((n_taps + 3) * width).astype(dtype)
        w_at = int(rng.integers(0, 3 * width + 1))
        pos = rng.integers(0, 250, positions + 4).astype(np.int64)
        first = int(rng.integers(0, 5))
        taps = rng.integers(0, 250, n_taps).astype(np.int64)
        out = np.full((positions + 3) * width, 7.0, dtype)
        at = int(rng.integers(0, 3 * width + 1))
        held = rng.standard_normal(positions * width).astype(dtype)  # what the tile adds to, with add
        out[at : at + positions * width] = held
        add = attempt % 2 == 1
        _channel_tile(out, at, w, w_at, src, pos, first, taps, width, add)
        weights = w[w_at : w_at + n_taps * width].reshape(n_taps, width).astype(np.float64)
        reads = src[pos[first : first + positions, None] + taps[None, :]].astype(np.float64)  # (positions, taps)
        want = (reads @ weights).ravel() + (held if add else 0)
        np.testing.assert_allclose(out[at : at + positions * width], want,
                                   rtol=1e-5 if dtype == np.float32 else 1e-12, atol=1e-5)
        assert (out[:at] == 7.0).all() and (out[at + positions * width :] == 7.0).all()


def _max_pairs_reference(x, at, step, w, bias, relu, base, count):
    """The docstring's formula: per window, the first maximum of its four values (plus bias)."""
    values, positions = [], []
    for q in range(count):
        window = [x[at + 2 * q], x[at + 2 * q + 1], x[at + step + 2 * q], x[at + step + 2 * q + 1]]
        window = [v + bias for v in window] if bias is not None else window
        offsets = [0, 1, w, w + 1]
        k = int(np.argmax(window))  # the first maximum (no NaN here)
        best = window[k]
        values.append(0.0 if relu and best <= 0 else best)
        positions.append(base + 2 * q + offsets[k])
    return np.array(values), np.array(positions)


@pytest.mark.parametrize("dtype", DTYPES)
def test_max_pairs_takes_the_first_maximum_of_each_window(dtype):
    rng = np.random.default_rng(3)
    n = _lanes(dtype)
    for count in range(1, n + 1):
        x = rng.integers(-2, 3, 200).astype(dtype)  # small integers: many ties
        step = int(rng.integers(2 * count, 40))
        at = int(rng.integers(0, x.size - step - 2 * count + 1))
        w, base = int(rng.integers(2 * count, 50)), int(rng.integers(0, 100))
        relu = bool(count % 2)
        bias = None if count % 3 else dtype(0.5)
        y = np.full(n + 6, 9.0, dtype)
        idx = np.full(n + 6, -9, np.int64)
        out = int(rng.integers(0, 6))
        if bias is None:
            _max_pairs(x, at, step, w, relu, y, out, idx, base, count)
        else:
            _max_pairs_bias(x, at, step, w, bias, relu, y, out, idx, base, count)
        values, positions = _max_pairs_reference(x, at, step, w, bias, relu, base, count)
        np.testing.assert_array_equal(y[out : out + count], values.astype(dtype))
        np.testing.assert_array_equal(idx[out : out + count], positions)
        outside = np.r_[0:out, out + count : y.size]
        assert (y[outside] == 9.0).all() and (idx[outside] == -9).all()
        unindexed = np.full(n + 6, 9.0, dtype)  # without an argmax (inference): the same values
        if bias is None:
            _max_pairs(x, at, step, w, relu, unindexed, out, None, base, count)
        else:
            _max_pairs_bias(x, at, step, w, bias, relu, unindexed, out, None, base, count)
        np.testing.assert_array_equal(unindexed, y)


@pytest.mark.parametrize("dtype", DTYPES)
def test_unpool_pairs_routes_each_gradient_to_its_window_position(dtype):
    rng = np.random.default_rng(5)
    n = _lanes(dtype)
    for count in range(1, n + 1):
        g = rng.standard_normal(n + 4).astype(dtype)
        gate = rng.standard_normal(n + 4).astype(dtype)
        at, base, w = int(rng.integers(0, 4)), int(rng.integers(0, 50)), int(rng.integers(2 * count, 40))
        choice = rng.integers(0, 4, count)
        idx = np.zeros(n + 4, np.int64)
        idx[at : at + count] = base + 2 * np.arange(count) + np.array([0, 1, w, w + 1])[choice]
        width = int(rng.integers(2 * count, 2 * n + 1))
        step = int(rng.integers(width, 60))
        to = int(rng.integers(0, 5))
        gated = bool(count % 2)
        grad = np.full(to + step + width + 7, 5.0, dtype)
        expected = grad.copy()
        for row in (to, to + step):
            expected[row : row + width] = 0
        for q in range(count):
            value = g[at + q] if not gated or gate[at + q] > 0 else 0
            k = choice[q]
            expected[to + (step if k >= 2 else 0) + 2 * q + k % 2] = value
        assert _unpool_pairs(g, at, idx, base, w, gate, gated, grad, to, step, count, width)
        np.testing.assert_array_equal(grad, expected)
        idx[at] = base + 2  # the next window's position: not its own
        assert not _unpool_pairs(g, at, idx, base, w, gate, gated, grad, to, step, count, width)


@pytest.mark.parametrize("dtype", DTYPES)
def test_clear_zeroes_exactly_its_span(dtype):
    rng = np.random.default_rng(9)
    for _ in range(20):
        a = np.full(100, 3.0, dtype)
        start = int(rng.integers(0, 100))
        length = int(rng.integers(0, 100 - start + 1))
        _clear(a, start, length)
        assert (a[start : start + length] == 0).all()
        assert (a[:start] == 3.0).all() and (a[start + length :] == 3.0).all()


BOUNDS_SCRIPT = textwrap.dedent("""
    import numba, numpy as np
    from fastcnn.kernels import _pool_vectors as pv, _tiles as tiles, jit
    assert jit.CHECK_BOUNDS

    @numba.njit
    def clear(a, start, length):
        pv.clear(a, start, length)

    @numba.njit
    def store(out, w, src, offsets):
        tiles.store_tile(out, w, 0, 0, src, offsets, 0, 1, False)

    @numba.njit
    def channels(out, w, src, pos, taps, width):
        tiles.channel_tile(out, 0, w, 0, src, pos, 0, taps, width, False)

    @numba.njit
    def transpose(out, src, rows, cols):
        tiles.transpose_tile(out, 0, cols, rows, src, 0, rows, cols, np.zeros(rows, out.dtype), 0, False)

    a = np.zeros(10, np.float32)
    clear(a, 2, 8)  # in bounds
    n, width = tiles.lanes(4), tiles.tile_width(4)  # the target's geometry (jit.VECTOR_BYTES)
    wide, narrow = tiles.CHANNEL_VECTORS * n, tiles.CHANNEL_ACCUMULATORS
    positions = tiles.channel_positions(wide, 4)
    for call in (lambda: clear(a, 5, 8),
                 lambda: store(np.zeros((8, width), np.float32), np.zeros((8, 1), np.float32),
                               np.zeros(width + 2, np.float32), np.array([3], np.int64)),
                 lambda: channels(np.zeros(positions * wide, np.float32), np.zeros(wide, np.float32),
                                  np.zeros(50, np.float32), np.array(list(range(positions - 1)) + [49], np.int64),
                                  np.array([1], np.int64), wide),
                 lambda: channels(np.zeros(narrow * n, np.float32), np.zeros(n, np.float32), np.zeros(50, np.float32),
                                  np.array([0] * (narrow - 1) + [49], np.int64), np.array([1], np.int64), n),
                 lambda: channels(np.zeros(narrow * 3 * n, np.float32), np.zeros(3 * n, np.float32),
                                  np.zeros(50, np.float32), np.zeros(narrow, np.int64), np.array([1], np.int64),
                                  3 * n),  # a width that is no block's
                 lambda: transpose(np.zeros(n * n - 1, np.float32), np.zeros(n * n, np.float32), n, n)):
        try:
            call()
        except AssertionError as exc:
            print("refused:", exc)
        else:
            raise SystemExit("an out-of-bounds call was not refused")
""")


def test_bounds_switch_refuses_out_of_bounds_calls(tmp_path):
    """Under FASTCNN_CHECK_BOUNDS=1 a call that would touch memory outside its arrays raises instead."""
    env = dict(os.environ, FASTCNN_CHECK_BOUNDS="1", NUMBA_CACHE_DIR=str(tmp_path))
    result = subprocess.run([sys.executable, "-c", BOUNDS_SCRIPT], env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("refused:") == 6, result.stdout
    assert "transpose_tile: a write is out of bounds" in result.stdout, result.stdout
    assert "channel_tile: the width is not a block's" in result.stdout, result.stdout



WINOGRAD_BT = np.array([[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]], dtype=np.float64)
WINOGRAD_AT = np.array([[1, 1, 1, 0], [0, 1, -1, -1]], dtype=np.float64)
# each transform: its wrapper, T (the result is T x T^t), and whether its source (else its result) is the
# 4x4 tile of 16 entries that lie ``step`` apart
WINOGRAD = {"input": (_winograd_input, WINOGRAD_BT, True), "output": (_winograd_output, WINOGRAD_AT, False),
            "gradient": (_winograd_gradient, WINOGRAD_AT.T, True)}


@pytest.mark.parametrize("kind", list(WINOGRAD))
@pytest.mark.parametrize("dtype", DTYPES)
def test_winograd_transforms_a_tile_a_vector_of_lanes_at_a_time(dtype, kind):
    """Each lane's tile ``x`` becomes ``T x T^t``: the input transform ``B^T d B`` reads a 4x4 tile at
    ``at + i*row + j*col`` and writes entry ``(u, a)`` at ``at + (4u + a)*step``; the output transform
    ``A^T M A`` reads ``M`` so and writes a 2x2 tile by rows and columns; the gradient's ``A g A^T``
    reads a 2x2 tile and writes as the input's. Nothing else in the output is written."""
    call, t, tile_first = WINOGRAD[kind]
    rng = np.random.default_rng(11)
    n = _lanes(dtype)
    size, out_size = t.shape[1], t.shape[0]
    for row, col, step, src_at, out_at in ((5 * n, n, 2 * n, 3, 1), (n, 7 * n, n + 3, 0, 0), (9 * n + 2, 2 * n, 3 * n, 5, 2)):
        if tile_first:  # (row, col) place the source tile, step the result's 16 entries
            src_index = lambda i, j: src_at + i * row + j * col  # noqa: E731
            out_index = lambda u, a: out_at + (4 * u + a) * step  # noqa: E731
            out_extent, src_extent = 15 * step, (size - 1) * (row + col)
        else:  # step places the source's 16 entries, (row, col) the result's 2x2 tile
            src_index = lambda i, j: src_at + (4 * i + j) * step  # noqa: E731
            out_index = lambda u, a: out_at + u * row + a * col  # noqa: E731
            out_extent, src_extent = row + col, 15 * step
        src = rng.standard_normal(src_at + src_extent + n + 3).astype(dtype)
        out = np.full(out_at + out_extent + n + 4, np.nan, dtype)
        call(out, out_at, *((step, src, src_at, row, col) if tile_first else (row, col, src, src_at, step)))
        lane = np.arange(n)
        x = np.stack([np.stack([src[src_index(i, j) + lane] for j in range(size)]) for i in range(size)])
        want = np.einsum("ui,ijl,aj->ual", t, x.astype(np.float64), t)
        written = np.zeros(out.size, bool)
        for u in range(out_size):
            for a in range(out_size):
                at = out_index(u, a) + lane
                np.testing.assert_allclose(out[at], want[u, a], rtol=1e-6 if dtype == np.float32 else 1e-14, atol=1e-6)
                written[at] = True
        assert np.isnan(out[~written]).all()


@pytest.mark.parametrize("relu", [False, True])
@pytest.mark.parametrize("dtype", DTYPES)
def test_transpose_tile_writes_a_position_major_tile_channel_major(dtype, relu):
    """``out[out_at + c*out_step + p] = src[src_at + p*src_step + c] + plus[plus_at + c]`` (through a ReLU
    that keeps NaN, with ``relu``) for ``c < rows``, ``p < cols``: whole tiles and every kind of part tile;
    nothing else in ``out`` is written."""
    rng = np.random.default_rng(12)
    n = _lanes(dtype)
    for rows, cols in ((n, n), (n, 1), (1, n), (3, n - 1), (n - 1, 2), (1, 1), (0, n), (n, 0)):
        out_at, out_step, src_at, src_step, plus_at = 3, n + 5, 2, n + 1, 4
        src = rng.standard_normal(src_at + n * src_step + n).astype(dtype)
        src[src_at + src_step + 1] = np.nan  # position 1, channel 1
        plus = rng.standard_normal(plus_at + n).astype(dtype)
        out = np.full(out_at + n * out_step + n, 7.5, dtype)
        want = out.copy()
        for c in range(rows):
            for p in range(cols):
                v = src[src_at + p * src_step + c] + plus[plus_at + c]
                want[out_at + c * out_step + p] = 0 if relu and v <= 0 else v
        _transpose_tile(out, out_at, out_step, rows, src, src_at, src_step, cols, plus, plus_at, relu)
        np.testing.assert_array_equal(out, want, err_msg=f"rows {rows}, cols {cols}")


@pytest.mark.parametrize("relu", [False, True])
@pytest.mark.parametrize("dtype", DTYPES)
def test_write_channels_writes_any_block_of_a_position_major_buffer_channel_major(dtype, relu):
    """``write_channels`` tiles ``transpose_tile`` over channel and position counts that are not whole
    vectors (and are): the same values as a loop, nothing else in ``out`` written."""
    rng = np.random.default_rng(13)
    n = _lanes(dtype)
    for width, c0, count, length in ((n, 0, n, 3 * n), (2 * n, 3, 2 * n - 3, 2 * n + 5), (n + 3, 1, n + 2, 7),
                                     (1, 0, 1, 1)):
        buffer_at, out_at, out_step = 5, 2, length + 3
        buffer = rng.standard_normal(buffer_at + length * width).astype(dtype)
        b = rng.standard_normal(c0 + count).astype(dtype)
        out = np.full(out_at + count * out_step, 7.5, dtype)
        want = out.copy()
        block = buffer[buffer_at:].reshape(length, width)[:, :count].T + b[c0:, None]
        want[out_at:].reshape(count, out_step)[:, :length] = np.where(relu & (block <= 0), 0, block)
        _write_channels(buffer, buffer_at, width, b, c0, count, length, out, out_at, out_step, relu)
        np.testing.assert_array_equal(out, want, err_msg=f"width {width}, count {count}, length {length}")
