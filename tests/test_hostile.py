"""Hostile files: every loader of files fastcnn did not write in this session checks what a file claims
before allocating it. The only outcomes are a model (or data) or a ValueError/TypeError naming what is
wrong, within seconds, and no allocation beyond the file's size and the model's real weights."""
import contextlib
import gzip
import io
import json
import os
import subprocess
import sys
import textwrap
import time
import warnings
import zipfile

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import fastcnn
from fastcnn import _untrusted, datasets, dispatch
from fastcnn import layers as L

try:
    import resource
except ImportError:  # not POSIX: the loaders are still checked, without an address-space limit
    resource = None

FUZZ = settings(max_examples=int(os.environ.get("FUZZ_EXAMPLES", 60)), deadline=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
HEADER = "__fastcnn__.npy"


def _model():
    return fastcnn.Sequential([L.Conv2D(1, 4, 3, rng=0), L.BatchNorm2D(4), L.ReLU(), L.MaxPool2D(2), L.Flatten(),
                               L.Dense(4 * 13 * 13, 10, rng=0)], input_shape=(1, 28, 28))


@pytest.fixture(scope="module")
def good_members(tmp_path_factory):
    """The members of a real model file, name -> bytes, in order."""
    path = tmp_path_factory.mktemp("good") / "m.npz"
    _model().save(path)
    with zipfile.ZipFile(path) as zf:
        return {name: zf.read(name) for name in zf.namelist()}


def _npy(array) -> bytes:
    buf = io.BytesIO()
    np.lib.format.write_array(buf, np.asarray(array), allow_pickle=False)
    return buf.getvalue()


def _npy_claiming(shape, dtype, data: bytes) -> bytes:
    """An .npy whose header declares ``shape`` and ``dtype`` followed by ``data`` (whatever its size)."""
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": np.lib.format.dtype_to_descr(np.dtype(dtype)),
                                               "fortran_order": False, "shape": tuple(shape)})
    return buf.getvalue() + data


def _header(members) -> dict:
    return json.loads(str(np.lib.format.read_array(io.BytesIO(members[HEADER]))[()]))


def _with_header(members, header: dict | str) -> dict:
    text = header if isinstance(header, str) else json.dumps(header)
    return dict(members, **{HEADER: _npy(np.array(text))})


def _write(path, members, compression=zipfile.ZIP_STORED):
    """``members``: a dict or a list of (name, bytes) pairs (names may repeat)."""
    items = members.items() if isinstance(members, dict) else members
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # zipfile's "Duplicate name"
        with zipfile.ZipFile(path, "w", compression) as zf:
            for name, data in items:
                zf.writestr(name, data)
    return path


@contextlib.contextmanager
def _address_space(extra_bytes: int):
    """Within the block, allocating more than ``extra_bytes`` beyond what the process maps now fails."""
    if resource is None or not os.path.exists("/proc/self/status"):
        yield
        return
    with open("/proc/self/status") as fh:
        vm = next(int(line.split()[1]) * 1024 for line in fh if line.startswith("VmSize:"))
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    resource.setrlimit(resource.RLIMIT_AS, (vm + extra_bytes, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))


def _refused(path, match, load=fastcnn.load_model):
    start = time.perf_counter()
    with _address_space(256 << 20), pytest.raises(ValueError, match=match):
        load(path)
    assert time.perf_counter() - start < 2.0


# ---------------------------------------------------------------- the cases of the issue, one by one
def test_a_config_that_does_not_match_its_weights_is_refused_before_building(tmp_path, good_members):
    header = _header(good_members)
    header["layers"][-1]["config"].update(in_features=100000, out_features=100000)  # 74.5 GiB of weights
    _refused(_write(tmp_path / "m.npz", _with_header(good_members, header)),
             r"layer 5 \(Dense\(100000->100000\)\) needs 5.weight of shape \(100000, 100000\) float32, but the file "
             r"holds float32 \(10, 676\)")
    header["layers"][-1]["config"].update(in_features=676, out_features=700000)  # 1.8 GB: would fit, and be random
    _refused(_write(tmp_path / "m.npz", _with_header(good_members, header)), r"needs 5.weight of shape \(700000, 676\)")
    header = _header(good_members)
    del header["layers"][1]  # the BatchNorm's arrays are still in the file
    _refused(_write(tmp_path / "m.npz", _with_header(good_members, header)), "configurations need arrays")


def test_layers_are_built_without_initialisation_when_weights_follow(tmp_path, good_members):
    state = np.random.default_rng(0).bit_generator.state
    fastcnn.seed(123)
    before = fastcnn.init.get_rng().bit_generator.state
    model = fastcnn.load_model(_write(tmp_path / "m.npz", good_members))
    assert fastcnn.init.get_rng().bit_generator.state == before  # no random number was drawn
    assert np.random.default_rng(0).bit_generator.state == state
    with L.weights_follow(np.float64):
        dense = L.Dense(100000, 100000)
    assert dense.params["weight"].shape == (100000, 100000) and dense.params["weight"].dtype == np.float64
    assert dense.params["weight"].strides == (0, 0) and not dense.params["weight"].flags.writeable
    assert model.predict(np.zeros((2, 1, 28, 28), np.float32)).shape == (2, 10)
    history = model.fit(np.zeros((4, 1, 28, 28), np.float32), np.arange(4), epochs=1, batch_size=2, verbose=0)
    assert np.isfinite(history["loss"]).all()  # the placeholders' gradients give way to real ones


def test_a_deeply_nested_or_huge_header_is_a_value_error(tmp_path, good_members):
    _refused(_write(tmp_path / "deep.npz", _with_header(good_members, "[" * 100000 + "]" * 100000)),
             "nested 100000 levels deep; at most 32")
    header = _header(good_members)
    header["padding"] = "x" * (2 << 20)
    _refused(_write(tmp_path / "huge.npz", _with_header(good_members, header)), "header.*at most 1,048,576 characters")


def test_an_npy_header_numpy_cannot_tokenize_is_a_value_error(tmp_path, good_members):
    """A header that is not a literal and ends inside a bracket: NumPy's second reading of it (for old
    files' long types) raises tokenize.TokenError, not a ValueError. Found by the fuzz test below."""
    text = "{'descr': '<f4', 'fortran_order': False, 'shape': (\u00d7".encode("latin1")
    text += b" " * (-(10 + len(text) + 1) % 64) + b"\n"
    members = dict(good_members)
    members["w/5.weight.npy"] = b"\x93NUMPY\x01\x00" + len(text).to_bytes(2, "little") + text + b"\0" * 16
    _refused(_write(tmp_path / "m.npz", members), r"has no readable \.npy header \(TokenError")


def test_an_npy_header_claiming_more_than_its_member_holds_is_refused(tmp_path, good_members):
    members = dict(good_members)
    members["w/5.weight.npy"] = _npy_claiming((4 << 30,), np.float32, b"\0" * 16)  # 16 GB claimed, 16 bytes held
    _refused(_write(tmp_path / "m.npz", members), r"declares shape \(4294967296,\) of float32 \(17,179,869,184 bytes\) "
                                                   r"but holds 16 bytes")
    members["w/5.weight.npy"] = _npy_claiming((10, 676), np.float64, good_members["w/5.weight.npy"][128:])
    _refused(_write(tmp_path / "m.npz", members), "declares shape .* of float64")


def test_duplicate_members_objects_and_deflate_bombs_are_refused(tmp_path, good_members):
    twice = list(good_members.items()) + [("w/5.weight.npy", good_members["w/5.weight.npy"])]
    _refused(_write(tmp_path / "twice.npz", twice), r"members named more than once: \['w/5.weight.npy'\]")
    objects = dict(good_members, **{"w/5.bias.npy": _npy_claiming((10,), object, b"\x80\x04N." * 20)})
    _refused(_write(tmp_path / "objects.npz", objects), "dtype object.*never objects")
    bomb = dict(good_members, **{"w/bomb.npy": _npy(np.zeros(16 << 20, np.uint8))})
    _refused(_write(tmp_path / "bomb.npz", bomb, zipfile.ZIP_DEFLATED), "refused as a decompression bomb")


def test_weights_with_nan_are_refused(tmp_path, good_members):
    header = _header(good_members)
    weight = np.lib.format.read_array(io.BytesIO(good_members["w/5.weight.npy"]))
    weight[3, 4] = np.nan
    header["arrays"]["5.weight"]["sha256"] = fastcnn._files.sha256_hex(weight)
    members = _with_header(dict(good_members, **{"w/5.weight.npy": _npy(weight)}), header)
    _refused(_write(tmp_path / "m.npz", members), "array '5.weight' holds NaN or infinity")


def test_a_header_table_that_disagrees_with_the_members_is_refused(tmp_path, good_members):
    header = _header(good_members)
    header["arrays"]["5.weight"]["shape"] = [10, 677]
    _refused(_write(tmp_path / "m.npz", _with_header(good_members, header)),
             r"array '5.weight' is float32 \(10, 676\) in the file, float32 \(10, 677\) in the header")
    header["arrays"]["5.weight"]["shape"] = [-1]
    _refused(_write(tmp_path / "m.npz", _with_header(good_members, header)), "entry for array '5.weight'")


def test_no_large_allocation_in_a_fresh_process_with_little_address_space(tmp_path, good_members):
    """As the issue's 16 GB example: under an address-space limit, hostile files give ValueErrors, not MemoryErrors."""
    if resource is None:
        pytest.skip("no resource module")
    header = _header(good_members)
    header["layers"][-1]["config"].update(in_features=676, out_features=2_000_000)  # 5.4 GB float32, 10.8 GB drawn
    _write(tmp_path / "config.npz", _with_header(good_members, header))
    _write(tmp_path / "npy.npz", dict(good_members, **{"w/5.weight.npy": _npy_claiming((4 << 30,), np.float32, b"\0" * 16)}))
    _write(tmp_path / "good.npz", good_members)
    code = textwrap.dedent("""
        import resource, sys, fastcnn
        with open("/proc/self/status") as fh:
            vm = next(int(line.split()[1]) * 1024 for line in fh if line.startswith("VmSize:"))
        resource.setrlimit(resource.RLIMIT_AS, (vm + (1 << 30), resource.RLIMIT_AS and resource.getrlimit(resource.RLIMIT_AS)[1]))
        for name in sys.argv[1:3]:
            try:
                fastcnn.load_model(name)
                print("loaded", name)
            except ValueError as exc:
                print("ValueError", type(exc).__name__)
        print(fastcnn.load_model(sys.argv[3]).layers[-1].params["weight"].shape)
    """)
    result = subprocess.run([sys.executable, "-c", code] + [str(tmp_path / n) for n in ("config.npz", "npy.npz", "good.npz")],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.split("\n")[:3] == ["ValueError ValueError", "ValueError ValueError", "(10, 676)"]


class _Spy:
    """A file object that records the sizes asked of ``read``."""

    def __init__(self, fh, reads):
        self._fh, self._reads = fh, reads

    def read(self, size=-1):
        self._reads.append(size)
        return self._fh.read(size)

    def __getattr__(self, name):
        return getattr(self._fh, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self._fh.close()


def test_read_limited_reads_files_and_pipes_up_to_the_limit(tmp_path, monkeypatch):
    """Every byte up to the limit, one past it refused; from a pipe (no stated size) in chunks."""
    data = bytes(range(256)) * 40
    path = tmp_path / "f.bin"
    path.write_bytes(data)
    assert _untrusted.read_limited(path, len(data), "f") == data
    with pytest.raises(ValueError, match=f"larger than the {len(data) - 1:,} bytes"):
        _untrusted.read_limited(path, len(data) - 1, "f")
    reads = []
    real_open = open
    monkeypatch.setattr("builtins.open", lambda *a, **k: _Spy(real_open(*a, **k), reads))
    with pytest.raises(ValueError, match="larger than"):  # a regular file's size is known: refused unread
        _untrusted.read_limited(path, len(data) - 1, "f")
    assert reads == []
    monkeypatch.undo()
    if not hasattr(os, "mkfifo"):
        return
    monkeypatch.setattr(_untrusted, "_READ_CHUNK", 1000)
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    for limit, expected in ((len(data), data), (len(data) - 1, None)):
        writer = subprocess.Popen([sys.executable, "-c", f"open({str(fifo)!r}, 'wb').write(bytes(range(256)) * 40)"])
        try:
            if expected is None:
                with pytest.raises(ValueError, match="larger than"):
                    _untrusted.read_limited(fifo, limit, "pipe")
            else:
                assert _untrusted.read_limited(fifo, limit, "pipe") == expected
        finally:
            writer.wait(timeout=30)


# ---------------------------------------------------------------- the other loaders
def test_the_dispatch_cache_refuses_hostile_json(monkeypatch, tmp_path):
    monkeypatch.setenv("FASTCNN_HOME", str(tmp_path))
    monkeypatch.setenv("FASTCNN_DISPATCH_PERSIST", "1")
    path = dispatch.decisions_path()
    path.parent.mkdir(parents=True)
    good = {"op": "relu", "signature": "((2, 3), 'f')@2", "choice": fastcnn.available_backends()[0],
            "ms": {"numpy": 0.1}, "measure_ms": 1.0}
    for text in ("[" * 100000 + "]" * 100000, json.dumps({"x": good}), json.dumps({"relu((2, 3), 'f')@2": dict(good, ms=3)}),
                 " " * (9 << 20), json.dumps([1, 2])):
        path.write_text(text)
        dispatch.clear_dispatch_decisions()
        monkeypatch.setattr(dispatch, "_loaded", False)
        assert fastcnn.dispatch_decisions() == []
        fastcnn.dispatch_report()
    path.write_text(json.dumps({"relu((2, 3), 'f')@2": good}))
    monkeypatch.setattr(dispatch, "_loaded", False)
    assert fastcnn.dispatch_decisions() == [good]
    dispatch.clear_dispatch_decisions()


def test_the_mnist_readers_refuse_bombs_and_lies(tmp_path):
    bomb = tmp_path / "train-images-idx3-ubyte.gz"
    bomb.write_bytes(gzip.compress(b"\0\0\x08\x03" + (20000).to_bytes(4, "big") + (28).to_bytes(4, "big") * 2
                                   + bytes(20000 * 28 * 28)))
    _refused(bomb, "decompression bomb", datasets.read_idx)
    lying = tmp_path / "idx"
    lying.write_bytes(b"\0\0\x08\x01" + (1 << 31).to_bytes(4, "big") + b"12")
    _refused(lying, "IDX header promises", datasets.read_idx)
    pkl = tmp_path / "mnist.pkl.gz"
    pkl.write_bytes(gzip.compress(bytes(20 << 20)))
    _refused(pkl, "decompression bomb", datasets.read_mnist_pkl)
    cache = tmp_path / "mnist.npz"
    _write(cache, {f"{k}.npy": _npy_claiming(datasets.SHAPES[k], np.uint8, b"") for k in datasets.SHA256})
    _refused(cache, "damaged.*declares shape", datasets._read_cache)
    _write(cache, {f"{k}.npy": _npy(np.zeros(3, np.uint8)) for k in datasets.SHA256})
    _refused(cache, "damaged.*expected uint8", datasets._read_cache)


# ---------------------------------------------------------------- fuzzing
def _header_edits():
    """Edits of a real header: configurations, shapes, nesting and sizes an attacker might choose."""
    number = st.sampled_from([0, -1, 1, 2, 3, 676, 10**5, 2**31, 2**63, 10**30, 1.5, float("nan"), None, True, "3", [3, 3]])
    config_edit = st.tuples(st.just("config"), st.integers(0, 5), st.sampled_from(
        ["in_features", "out_features", "in_channels", "out_channels", "kernel_size", "num_features", "bias", "padding",
         "stride", "p", "bogus"]), number)
    shape_edit = st.tuples(st.just("shape"), st.sampled_from(["0.weight", "5.weight", "1.running_mean", "0.bias"]),
                           st.lists(st.integers(-1, 2**40) | st.sampled_from([0, 1, 10, 676]), max_size=3))
    structural = st.sampled_from([("nest", 10**4), ("nest", 40), ("type", "Conv3D"), ("dtype", "float16"),
                                  ("dtype", "object"), ("layers", "x"), ("input_shape", [0]), ("input_shape", "abc"),
                                  ("arrays", []), ("format_version", 1.5), ("big", 2 << 20)])
    return st.lists(config_edit | shape_edit | structural, max_size=3)


def _apply(header, edits):
    for edit in edits:
        kind = edit[0]
        if kind == "config" and isinstance(header["layers"], list):
            _, index, key, value = edit
            header["layers"][index % len(header["layers"])]["config"][key] = value
        elif kind == "shape" and isinstance(header["arrays"], dict):
            header["arrays"][edit[1]]["shape"] = edit[2]
        elif kind == "nest":
            header["nested"] = json.loads("[" * edit[1] + "]" * edit[1]) if edit[1] < 500 else None
            if edit[1] >= 500:
                return json.dumps(header)[:-1] + ', "deep": ' + "[" * edit[1] + "]" * edit[1] + "}"
        elif kind == "big":
            header["big"] = "x" * edit[1]
        elif kind not in ("config", "shape"):
            header[kind] = edit[1]
    return header


member_edits = st.lists(st.tuples(
    st.sampled_from(["w/0.weight.npy", "w/5.weight.npy", "w/1.num_batches_tracked.npy", "w/extra.npy", HEADER]),
    st.sampled_from(["drop", "twice", "truncate", "extend", "claim", "object", "random", "nan"]),
    st.integers(0, 2**40), st.binary(max_size=64)), max_size=3)


def _mutate(members, edits):
    items = list(members.items())
    for name, how, number, blob in edits:
        data = members.get(name, _npy(np.zeros(3, np.float32)))
        if how == "drop":
            items = [(n, d) for n, d in items if n != name]
            continue
        if how == "truncate":
            data = data[: number % (len(data) + 1)]
        elif how == "extend":
            data = data + blob
        elif how == "claim":
            data = _npy_claiming((number,), np.float32, data[128:])
        elif how == "object":
            data = data.replace(b"'<f4'", b"'|O' ")
        elif how == "random":
            data = blob
        elif how == "nan":
            data = _npy(np.full(max(1, number % 50), np.nan, np.float32))
        items = [(n, d) for n, d in items if n != name or how == "twice"] + [(name, data)]
    return items


def _load_outcome(path, file_size):
    """Load ``path`` under an address-space limit; only a model or a ValueError/TypeError with a message."""
    start = time.perf_counter()
    with _address_space(file_size + (192 << 20)):
        try:
            model = fastcnn.load_model(path)
        except (ValueError, TypeError) as exc:
            assert str(exc).strip()
            model = None
    assert time.perf_counter() - start < 5.0
    return model


def test_a_file_whose_layers_do_not_take_its_input_is_refused(tmp_path, good_members):
    """Found by the fuzz test below in a fresh venv: the conv's padding edited to 1, so that the Dense
    after it no longer takes its output. The file loaded, and the model failed at its first predict."""
    header = _apply(_header(good_members), [("config", 0, "padding", 1)])
    path = _write(tmp_path / "m.npz", _with_header(good_members, header))
    with pytest.raises(ValueError, match=r"cannot rebuild the model: layer \d+ \(\w+\) cannot take the output"):
        fastcnn.load_model(path)


@FUZZ
@given(edits=_header_edits(), members=member_edits, deflate=st.booleans())
def test_hostile_model_files_are_refused_cleanly(tmp_path_factory, good_members, edits, members, deflate):
    header = _apply(_header(good_members), edits)
    files = _mutate(_with_header(good_members, header), members)
    path = _write(tmp_path_factory.mktemp("fuzz") / "m.npz", files, zipfile.ZIP_DEFLATED if deflate else zipfile.ZIP_STORED)
    model = _load_outcome(path, path.stat().st_size)
    if model is not None:
        assert model.predict(np.zeros((1, 1, 28, 28), model.dtype)).shape == (1, 10)


@FUZZ
@given(data=st.binary(max_size=2000), cut=st.integers(0, 4000), flip=st.integers(0, 4000))
def test_damaged_and_random_bytes_are_refused_cleanly(tmp_path_factory, good_members, data, cut, flip):
    folder = tmp_path_factory.mktemp("fuzz")
    good = bytearray(_write(folder / "good.npz", good_members).read_bytes())
    if flip < len(good):
        good[flip] ^= 0xFF
    for raw in (data, bytes(good[: len(good) - cut]), bytes(good)):
        path = folder / "m.npz"
        path.write_bytes(raw)
        _load_outcome(path, len(raw))


def _depth(value) -> int:
    if isinstance(value, list):
        return 1 + max(map(_depth, value), default=0)
    if isinstance(value, dict):
        return 1 + max(map(_depth, value.values()), default=0)
    return 0


json_values = st.recursive(st.none() | st.booleans() | st.integers() | st.text(alphabet='[]{}"\\ab\u00e9\u4e2d', max_size=6),
                           lambda inner: st.lists(inner, max_size=3)
                           | st.dictionaries(st.text(alphabet='[]{}"\\ab', max_size=4), inner, max_size=3), max_leaves=12)


@FUZZ
@given(value=json_values, ascii=st.booleans())
def test_the_nesting_scan_measures_what_the_parser_would(value, ascii):
    text = json.dumps(value, ensure_ascii=ascii)
    assert _untrusted._nesting(np.frombuffer(text.encode("utf-32-le"), np.uint32)) == _depth(value)
    assert _untrusted._nesting(np.frombuffer(text.encode(), np.uint8)) == _depth(value)
    assert _untrusted.parse_json(text, "x", 10**6, max_depth=_depth(value)) == value
    if _depth(value):
        with pytest.raises(ValueError, match="nested"):
            _untrusted.parse_json(text, "x", 10**6, max_depth=_depth(value) - 1)
