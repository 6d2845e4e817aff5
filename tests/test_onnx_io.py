"""ONNX export and import: against ONNX Runtime, PyTorch's exporter, and the exact round trip."""
import os
import subprocess
import sys
import textwrap
import warnings

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import fastcnn
from fastcnn import cli, models
from fastcnn._checks import conv_geometry
from fastcnn import layers as L
from fastcnn.blocks import Residual

from .reference import random_batch_norm

onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

try:
    import onnxruntime as ort
except ImportError:
    ort = None

needs_ort = pytest.mark.skipif(ort is None, reason="onnxruntime is not installed")




def every_layer_model() -> fastcnn.Sequential:
    """One model holding every layer type and every padding form fastcnn has."""
    return fastcnn.Sequential([
        L.Conv2D(2, 4, 3, padding="same", rng=1), random_batch_norm(L.BatchNorm2D(4, eps=1e-3, momentum=0.2), 2), L.ReLU(),
        L.Conv2D(4, 4, 2, padding="same", rng=3),                     # even kernel: asymmetric "same" pads
        L.MaxPool2D(3, stride=2, padding=1),
        L.Conv2D(4, 5, (3, 2), stride=(2, 1), padding=(1, 0), dilation=(1, 2), rng=4), L.Tanh(),
        L.AvgPool2D(2, padding=1),
        L.Conv2D(5, 3, 1, bias=False, padding="valid", rng=5), L.Sigmoid(),
        L.Flatten(), L.Dropout(0.25, rng=0), L.Dense(12, 6, rng=6), random_batch_norm(L.BatchNorm1D(6), 7), L.ReLU(),
        L.Dense(6, 4, bias=False, rng=8), L.Softmax(),
    ], input_shape=(2, 11, 10))


@pytest.fixture
def x():
    return np.random.default_rng(0).standard_normal((3, 2, 11, 10)).astype(np.float32)


@needs_ort
@pytest.mark.parametrize("batch", [1, 3])
def test_onnx_runtime_runs_every_layer_type_like_predict(tmp_path, x, batch):
    model = every_layer_model()
    path = tmp_path / "m.onnx"
    model.export_onnx(path)
    onnx.checker.check_model(str(path), full_check=True)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run(None, {"input": x[:batch]})[0]
    assert got.shape == (batch, 4)
    np.testing.assert_allclose(got, model.predict(x[:batch]), rtol=0, atol=1e-4)


@needs_ort
@pytest.mark.parametrize("name", sorted(models.PRESETS))
def test_onnx_runtime_runs_every_preset(tmp_path, name):
    model = models.PRESETS[name](seed=0)
    model.export_onnx(tmp_path / "m.onnx")
    xb = np.random.default_rng(1).random((2,) + model.input_shape, dtype=np.float32)
    session = ort.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(session.run(None, {"input": xb})[0], model.predict(xb), rtol=0, atol=1e-4)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_round_trip_is_exact(tmp_path, x, dtype):
    model = every_layer_model().astype(dtype)
    model.export_onnx(tmp_path / "m.onnx")
    back = fastcnn.load_onnx(tmp_path / "m.onnx")
    assert [type(a) for a in back.layers] == [type(a) for a in model.layers]
    shapes = [model.input_shape] + model.output_shapes()
    for a, b, shape in zip(model.layers, back.layers, shapes):  # "same" may come back as the equal explicit padding
        ca, cb = a.get_config(), b.get_config()
        if isinstance(a, L.Conv2D):
            geo = [conv_geometry((1,) + shape, layer.params["weight"].shape, layer.stride, layer.padding,
                                 layer.dilation) for layer in (a, b)]
            assert geo[0] == geo[1]
            del ca["padding"], cb["padding"]
        assert ca == cb
    assert back.input_shape == model.input_shape and back.dtype == dtype
    ours, theirs = model.state_dict(), back.state_dict()
    for name, value in ours.items():
        if not name.endswith("num_batches_tracked"):
            assert theirs[name].dtype == value.dtype and np.array_equal(theirs[name], value), name
    for a, b in zip(model.layers, back.layers):
        if isinstance(a, L.BatchNorm):
            assert (a.eps, a.momentum) == (b.eps, b.momentum)
        if isinstance(a, L.Dropout):
            assert a.p == b.p
    assert np.array_equal(back.predict(x.astype(dtype)), model.predict(x.astype(dtype)))


def test_names_are_readable_and_weights_stored_once(tmp_path):
    model = every_layer_model()
    model.export_onnx(tmp_path / "m.onnx")
    proto = onnx.load(str(tmp_path / "m.onnx"))
    names = [t.name for t in proto.graph.initializer]
    assert len(names) == len(set(names))
    expected = {k for k in model.state_dict() if not k.endswith("num_batches_tracked")} | {"11.ratio"}
    assert set(names) == expected
    assert [n.name for n in proto.graph.node][:3] == ["0.Conv2D", "1.BatchNorm2D", "2.ReLU"]
    assert proto.graph.input[0].name == "input" and proto.graph.output[0].name == "output"
    assert proto.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "N"
    data_bytes = sum(numpy_helper.to_array(t).nbytes for t in proto.graph.initializer)
    assert os.path.getsize(tmp_path / "m.onnx") < data_bytes + 4096


class _Custom(L.Layer):
    pass


def test_export_refuses_what_it_cannot_write_and_leaves_the_old_file(tmp_path):
    path = tmp_path / "m.onnx"
    path.write_bytes(b"old")
    with pytest.raises(ValueError, match="_Custom"):
        fastcnn.Sequential([L.ReLU(), _Custom()], input_shape=(3,)).export_onnx(path)
    with pytest.raises(ValueError, match="input shape"):
        fastcnn.Sequential([L.ReLU()]).export_onnx(path)
    assert path.read_bytes() == b"old" and os.listdir(tmp_path) == ["m.onnx"]


def test_cli_export(tmp_path, capsys):
    model = models.lenet(seed=0)
    model.save(tmp_path / "m.npz")
    assert cli.main(["export", str(tmp_path / "m.npz"), str(tmp_path / "m.onnx")]) == 0
    assert "wrote" in capsys.readouterr().out
    back = fastcnn.load_onnx(tmp_path / "m.onnx")
    xb = np.random.default_rng(2).random((2, 1, 28, 28), dtype=np.float32)
    assert np.array_equal(back.predict(xb), model.predict(xb))
    before = back.layers[0].params["weight"].copy()
    back.fit(xb, np.array([1, 2]), epochs=1, batch_size=2, verbose=0)  # an imported model trains on
    assert not np.array_equal(back.layers[0].params["weight"], before)
    assert cli.main(["export", str(tmp_path / "missing.npz"), str(tmp_path / "o.onnx")]) == 1
    assert "error" in capsys.readouterr().err


# ---------------------------------------------------------------------------- PyTorch's exporter
def _torch_export(net, x, path, **options):
    """``torch.onnx.export`` with the TorchScript exporter where it exists (the dynamo one needs onnxscript)."""
    torch = pytest.importorskip("torch")
    kwargs = dict(input_names=["x"], output_names=["y"], dynamic_axes={"x": {0: "N"}, "y": {0: "N"}}, **options)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            torch.onnx.export(net, (torch.from_numpy(x),), str(path), dynamo=False, **kwargs)
        except TypeError:  # a torch without the dynamo switch
            torch.onnx.export(net, (torch.from_numpy(x),), str(path), **kwargs)
        except (ImportError, RuntimeError) as exc:
            pytest.skip(f"torch.onnx.export unavailable here: {exc}")


def test_imports_what_torch_onnx_export_writes(tmp_path):
    torch = pytest.importorskip("torch")
    nn = torch.nn
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.MaxPool2d(2),
                        nn.Conv2d(4, 6, 3, stride=2, dilation=1), nn.Tanh(), nn.AvgPool2d(2, padding=1),
                        nn.Flatten(), nn.Dropout(0.3), nn.Linear(24, 10), nn.BatchNorm1d(10), nn.Sigmoid(),
                        nn.Linear(10, 5), nn.Softmax(-1))
    conv_net = nn.Sequential(nn.Conv2d(1, 3, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(3, 2))
    for module in net.modules():
        if isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d)):
            module.running_mean.uniform_(-1, 1)
            module.running_var.uniform_(0.5, 2)
    x = np.random.default_rng(3).random((2, 1, 14, 14), dtype=np.float32)
    for i, n in enumerate((net.eval(), conv_net.eval())):
        _torch_export(n, x, tmp_path / f"t{i}.onnx")
        model = fastcnn.load_onnx(tmp_path / f"t{i}.onnx")
        with torch.no_grad():
            expected = n(torch.from_numpy(x)).numpy()
        np.testing.assert_allclose(model.predict(x), expected, rtol=0, atol=1e-5)
        assert model.input_shape == (1, 14, 14)


# ---------------------------------------------------------------------------- files we cannot represent
def _model_file(path, nodes, initializers=(), in_shape=("N", 1, 4, 4), out="y", opset=17):
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(in_shape))],
                              [helper.make_tensor_value_info(out, TensorProto.FLOAT, None)], list(initializers))
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    onnx.save(proto, str(path))
    return path


def test_unsupported_op_names_the_node_and_op(tmp_path):
    path = _model_file(tmp_path / "a.onnx", [helper.make_node("Relu", ["x"], ["h"], name="first"),
                                            helper.make_node("Selu", ["h"], ["y"], name="selu")])
    with pytest.raises(ValueError, match=r"node 'selu' \(Selu\).*not supported"):
        fastcnn.load_onnx(path)


def test_branches_other_than_residual_adds_are_refused(tmp_path):
    nodes = [helper.make_node("Relu", ["x"], ["a"], name="a"), helper.make_node("Tanh", ["x"], ["b"], name="b"),
             helper.make_node("Mul", ["a", "b"], ["y"], name="prod")]
    with pytest.raises(ValueError, match=r"node 'prod' \(Mul\): joins branches from 'x'.*residual"):
        fastcnn.load_onnx(_model_file(tmp_path / "b.onnx", nodes))
    nodes = [helper.make_node("Relu", ["x"], ["a"], name="a"), helper.make_node("Tanh", ["x"], ["y"], name="b")]
    with pytest.raises(ValueError, match=r"node 'b' \(Tanh\).*never meet"):
        fastcnn.load_onnx(_model_file(tmp_path / "c.onnx", nodes))
    nodes = [helper.make_node("Relu", ["x"], ["a"], name="a"), helper.make_node("Add", ["a", "x"], ["d"], name="res"),
             helper.make_node("Add", ["d", "a"], ["y"], name="again")]  # a is read again after the block
    with pytest.raises(ValueError, match=r"node 'again' \(Add\): adds two computed tensors"):
        fastcnn.load_onnx(_model_file(tmp_path / "d.onnx", nodes))
    nodes = [helper.make_node("Relu", ["x"], ["a"], name="a"), helper.make_node("Tanh", ["x"], ["y"], name="b"),
             helper.make_node("Sigmoid", ["a"], ["c"], name="dead")]
    with pytest.raises(ValueError, match=r"never meet"):
        fastcnn.load_onnx(_model_file(tmp_path / "e.onnx", nodes))
    nodes = [helper.make_node("Relu", ["x"], ["y"], name="a"), helper.make_node("Sigmoid", ["z"], ["c"], name="dead")]
    with pytest.raises(ValueError, match=r"node 'dead' \(Sigmoid\).*not on the way"):
        fastcnn.load_onnx(_model_file(tmp_path / "f.onnx", nodes))


def test_three_branches_joined_by_two_adds_are_nested_residuals(tmp_path):
    nodes = [helper.make_node("Relu", ["x"], ["a"]), helper.make_node("Tanh", ["x"], ["b"]),
             helper.make_node("Sigmoid", ["x"], ["c"]), helper.make_node("Add", ["a", "b"], ["d"]),
             helper.make_node("Add", ["d", "c"], ["y"])]
    model = fastcnn.load_onnx(_model_file(tmp_path / "n.onnx", nodes))
    assert [type(layer).__name__ for layer in model.layers] == ["Residual"]
    x = np.random.default_rng(4).standard_normal((2, 1, 4, 4)).astype(np.float32)
    np.testing.assert_allclose(model.predict(x), np.maximum(x, 0) + np.tanh(x) + 1 / (1 + np.exp(-x)), atol=1e-6)


def test_dynamic_spatial_shapes_are_refused(tmp_path):
    path = _model_file(tmp_path / "d.onnx", [helper.make_node("Relu", ["x"], ["y"])], in_shape=("N", 1, "H", "W"))
    with pytest.raises(ValueError, match="fixed positive size"):
        fastcnn.load_onnx(path)


def _raw_tensor(name, dims, raw):
    """A float tensor whose declared shape need not match its bytes (onnx.helper refuses to write one)."""
    t = TensorProto(name=name, data_type=TensorProto.FLOAT, raw_data=raw)
    t.dims.extend(dims)
    return t


def test_inconsistent_or_oversized_tensors_are_refused_before_allocating(tmp_path):
    w = numpy_helper.from_array(np.ones((2, 1, 3, 3), np.float32), "w")
    path = _model_file(tmp_path / "ok.onnx", [helper.make_node("Conv", ["x", "w"], ["y"])], [w])
    assert fastcnn.load_onnx(path).layers[0].params["weight"].shape == (2, 1, 3, 3)
    huge = _raw_tensor("w", [10**6, 10**6, 3, 3], b"\0" * 16)
    with pytest.raises(ValueError, match="more than the whole file"):
        fastcnn.load_onnx(_model_file(tmp_path / "h.onnx", [helper.make_node("Conv", ["x", "w"], ["y"])], [huge]))
    short = _raw_tensor("w", [2, 1, 3, 3], b"\0" * 16)
    with pytest.raises(ValueError, match="holds 16 bytes"):
        fastcnn.load_onnx(_model_file(tmp_path / "s.onnx", [helper.make_node("Conv", ["x", "w"], ["y"])], [short]))
    nan = numpy_helper.from_array(np.full((2, 1, 3, 3), np.nan, np.float32), "w")
    with pytest.raises(ValueError, match="NaN"):
        fastcnn.load_onnx(_model_file(tmp_path / "n.onnx", [helper.make_node("Conv", ["x", "w"], ["y"])], [nan]))
    wrong = numpy_helper.from_array(np.ones((2, 3, 3, 3), np.float32), "w")  # 3 input channels for a 1-channel input
    with pytest.raises(ValueError, match=r"\(Conv\): weight has shape \(2, 3, 3, 3\).*needs \(2, 1, 3, 3\)"):
        fastcnn.load_onnx(_model_file(tmp_path / "w.onnx", [helper.make_node("Conv", ["x", "w"], ["y"])], [wrong]))
    external = _raw_tensor("w", [2, 1, 3, 3], b"")
    external.ClearField("raw_data")
    external.data_location = TensorProto.EXTERNAL
    external.external_data.add(key="location", value="weights.bin")
    with pytest.raises(ValueError, match="external data"):
        fastcnn.load_onnx(_model_file(tmp_path / "e.onnx", [helper.make_node("Conv", ["x", "w"], ["y"])], [external]))


def _claims(tmp_path) -> dict:
    """Files whose declared shapes claim far more than they hold, each refused with this message."""
    ones = {k: numpy_helper.from_array(np.ones(1, np.float32), k) for k in "gbmv"}
    w = numpy_helper.from_array(np.ones((8, 1, 1, 1), np.float32), "w")
    pool_scaled = [helper.make_node("AveragePool", ["x"], ["p"], kernel_shape=[2, 2], strides=[2, 2], ceil_mode=1),
                   helper.make_node("Mul", ["p", "s"], ["y"], name="scale")]  # the last row's windows are cut
    wide = helper.make_node("ConvTranspose", ["x", "wt"], ["y"], name="up", strides=[2**16, 2**16])
    files = {
        "channels.onnx": ([helper.make_node("Conv", ["x", "w"], ["y"], name="c")], [w], (2**30, 1, 1),
                          r"node 'c' \(Conv\): weight has shape \(8, 1, 1, 1\)"),
        "norm.onnx": ([helper.make_node("BatchNormalization", ["x", *"gbmv"], ["y"], name="bn")], list(ones.values()),
                      (2**28, 1, 1), r"node 'bn' \(BatchNormalization\): weight has shape \(1,\)"),
        "input.onnx": ([helper.make_node("Relu", ["x"], ["y"])], [], (1, 2**40, 2**40),
                       r"input 'x' has shape \(N, 1, 1099511627776, 1099511627776\).*more than the 2,147,483,648"),
        "output.onnx": ([wide], [numpy_helper.from_array(np.ones((1, 1, 1, 1), np.float32), "wt")], (1, 2**10, 2**10),
                        r"node 'up' \(ConvTranspose\): its output has shape \(N, 1, 67043329, 67043329\)"),
        # under the bound: the pool's scales (3.2 GB) must not be made to see that a window is cut
        "pool.onnx": (pool_scaled, [numpy_helper.from_array(np.array(2.0, np.float32), "s")], (1, 40001, 40000),
                      r"node 'scale' \(Mul\).*divisor"),
    }
    return {name: (_model_file(tmp_path / name, nodes, inits, in_shape=("N", *shape)), match)
            for name, (nodes, inits, shape, match) in files.items()}


def test_declared_shapes_are_bounded_and_never_allocated(tmp_path):
    """A file's claims of huge channels, planes or outputs give ValueErrors naming the node, before
    any allocation of that size; the same model with a whole-window scale (4 / 4 = 1) loads."""
    for path, match in _claims(tmp_path).values():
        with pytest.raises(ValueError, match=match):
            fastcnn.load_onnx(path)
    scaled = [helper.make_node("AveragePool", ["x"], ["p"], kernel_shape=[2, 2], strides=[2, 2]),
              helper.make_node("Mul", ["p", "s"], ["y"])]
    path = _model_file(tmp_path / "whole.onnx", scaled, [numpy_helper.from_array(np.array(1.0, np.float32), "s")],
                       in_shape=("N", 1, 40000, 40000))
    assert fastcnn.load_onnx(path).layers[0].divisor_override == 4


def test_loading_needs_no_more_memory_than_the_file(tmp_path):
    """Under an address-space limit of 1 GiB past what the interpreter holds, a good file loads (the
    reader asks for its size, not for the 2 GiB an ONNX file may reach) and every claim is refused
    with a ValueError, not a MemoryError."""
    resource = pytest.importorskip("resource")
    good = tmp_path / "good.onnx"
    models.lenet(seed=0).export_onnx(good)
    paths = [str(path) for path, _ in _claims(tmp_path).values()]
    code = textwrap.dedent("""
        import resource, sys, fastcnn, onnx
        with open("/proc/self/status") as fh:
            vm = next(int(line.split()[1]) * 1024 for line in fh if line.startswith("VmSize:"))
        resource.setrlimit(resource.RLIMIT_AS, (vm + (1 << 30), resource.getrlimit(resource.RLIMIT_AS)[1]))
        print(len(fastcnn.load_onnx(sys.argv[1]).layers))
        for name in sys.argv[2:]:
            try:
                fastcnn.load_onnx(name)
                print("loaded", name)
            except ValueError:
                print("ValueError")
    """)
    result = subprocess.run([sys.executable, "-c", code, str(good), *paths], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.split() == [str(len(models.lenet().layers))] + ["ValueError"] * len(paths)


def test_asymmetric_pads_pads_and_scales_outside_what_fastcnn_represents_are_refused(tmp_path):
    w = numpy_helper.from_array(np.ones((2, 1, 3, 3), np.float32), "w")
    conv = helper.make_node("Conv", ["x", "w"], ["y"], name="c", pads=[0, 0, 1, 2])  # top, left, bottom, right
    assert fastcnn.load_onnx(_model_file(tmp_path / "p.onnx", [conv], [w])).layers[0].padding == (0, 2, 0, 1)
    pool = helper.make_node("MaxPool", ["x"], ["y"], name="m", kernel_shape=[2, 2], pads=[0, 0, 1, 1])
    with pytest.raises(ValueError, match=r"node 'm' \(MaxPool\).*asymmetric"):
        fastcnn.load_onnx(_model_file(tmp_path / "m.onnx", [pool]))
    pads = numpy_helper.from_array(np.array([0, 0, 1, 1, 0, 0, 1, 1], np.int64), "pads")
    lone_pad = [helper.make_node("Pad", ["x", "pads"], ["p"], name="pad", mode="reflect"),
                helper.make_node("Relu", ["p"], ["y"], name="relu")]
    with pytest.raises(ValueError, match=r"node 'relu' \(Relu\): follows a Pad"):
        fastcnn.load_onnx(_model_file(tmp_path / "pad.onnx", lone_pad, [pads]))
    scale = numpy_helper.from_array(np.array(1.5, np.float32), "s")  # 4 / 1.5 is no whole divisor
    scaled = [helper.make_node("AveragePool", ["x"], ["p"], kernel_shape=[2, 2], strides=[2, 2]),
              helper.make_node("Mul", ["p", "s"], ["y"], name="scale")]
    with pytest.raises(ValueError, match=r"node 'scale' \(Mul\).*divisor"):
        fastcnn.load_onnx(_model_file(tmp_path / "s.onnx", scaled, [scale]))
    with pytest.raises(ValueError, match=r"node 'scale' \(Mul\).*average pool"):
        fastcnn.load_onnx(_model_file(tmp_path / "r.onnx", [helper.make_node("Relu", ["x"], ["p"]), scaled[1]], [scale]))


def test_not_an_onnx_file(tmp_path):
    (tmp_path / "junk.onnx").write_bytes(b"\xff" * 64)
    with pytest.raises(ValueError, match="not an ONNX model"):
        fastcnn.load_onnx(tmp_path / "junk.onnx")
    with pytest.raises(FileNotFoundError):
        fastcnn.load_onnx(tmp_path / "missing.onnx")


# ---------------------------------------------------------------------------- fuzzing
_SEED_FILES: dict[str, bytes] = {}


def _seed_models() -> dict:
    return {
        "lenet": lambda: fastcnn.Sequential(
            [L.Conv2D(1, 2, 3, padding=1, rng=0), random_batch_norm(L.BatchNorm2D(2), 0), L.ReLU(), L.MaxPool2D(2), L.AvgPool2D(2),
             L.Flatten(), L.Dense(2, 3, rng=0), L.Softmax()], input_shape=(1, 4, 4)),
        "residual": lambda: fastcnn.Sequential(
            [L.Conv2D(1, 2, 3, padding=1, padding_mode="reflect", rng=0),
             Residual([L.Conv2D(2, 2, 3, padding=1, groups=2, rng=1), L.SiLU()], [L.Conv2D(2, 2, 1, rng=2)]),
             Residual([L.GELU(), L.LeakyReLU()]), L.AvgPool2D(2, divisor_override=3), L.GlobalAvgPool2D(),
             L.Dense(2, 3, rng=3)], input_shape=(1, 4, 4)),
    }


def _seed_bytes(tmp_path_factory, name: str = "lenet") -> bytes:
    if name not in _SEED_FILES:
        path = tmp_path_factory.mktemp("fuzz") / "seed.onnx"
        _seed_models()[name]().export_onnx(path)
        _SEED_FILES[name] = path.read_bytes()
    return _SEED_FILES[name]


FUZZ = settings(max_examples=int(os.environ.get("FUZZ_EXAMPLES", 60)), deadline=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


def _load_or_refuse(path):
    try:
        model = fastcnn.load_onnx(path)
    except (ValueError, TypeError):
        return
    if np.prod(model.input_shape) > 10**6:  # a mutated input size: loading it allocated nothing, running it would
        return
    x = np.zeros((1,) + model.input_shape, np.float32)
    try:
        model.predict(x)
    except (ValueError, TypeError):  # a file may hold a model whose shapes only its own runtime would refuse
        pass


@FUZZ
@given(edits=st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 255)), min_size=1, max_size=8),
       cut=st.one_of(st.none(), st.integers(0, 10**6)), seed=st.sampled_from(["lenet", "residual"]))
def test_fuzz_byte_mutations_give_a_model_or_a_clear_error(tmp_path_factory, edits, cut, seed):
    data = bytearray(_seed_bytes(tmp_path_factory, seed))
    for pos, value in edits:
        data[pos % len(data)] = value
    if cut is not None:
        data = data[: cut % len(data)]
    path = tmp_path_factory.mktemp("m") / "m.onnx"
    path.write_bytes(bytes(data))
    _load_or_refuse(path)


@FUZZ
@given(node=st.integers(0, 50), attr=st.integers(0, 50), value=st.one_of(
    st.integers(-3, 40), st.lists(st.integers(-3, 9), max_size=6), st.floats(allow_nan=True)),
    dim=st.one_of(st.none(), st.tuples(st.integers(0, 50), st.integers(0, 5), st.integers(-2, 10**9))),
    seed=st.sampled_from(["lenet", "residual"]), rewire=st.one_of(st.none(), st.tuples(st.integers(0, 50),
                                                                                         st.integers(0, 50))))
def test_fuzz_graph_mutations_give_a_model_or_a_clear_error(tmp_path_factory, node, attr, value, dim, seed, rewire):
    proto = onnx.ModelProto()
    proto.ParseFromString(_seed_bytes(tmp_path_factory, seed))
    if rewire is not None:  # a node reads another tensor of the graph: branches, cycles, dead ends
        nodes = proto.graph.node
        target = nodes[rewire[0] % len(nodes)]
        if target.input:
            target.input[0] = (["input"] + [n.output[0] for n in nodes])[rewire[1] % (len(nodes) + 1)]
    n = proto.graph.node[node % len(proto.graph.node)]
    if n.attribute:
        a = n.attribute[attr % len(n.attribute)]
        if isinstance(value, list) and a.type == onnx.AttributeProto.INTS:
            del a.ints[:]
            a.ints.extend(value)
        elif isinstance(value, int) and a.type == onnx.AttributeProto.INT:
            a.i = value
        elif isinstance(value, float) and a.type == onnx.AttributeProto.FLOAT:
            a.f = value
    if dim is not None:
        t = proto.graph.initializer[dim[0] % len(proto.graph.initializer)]
        if t.dims:
            t.dims[dim[1] % len(t.dims)] = dim[2]
    path = tmp_path_factory.mktemp("g") / "g.onnx"
    path.write_bytes(proto.SerializeToString())
    _load_or_refuse(path)


def test_reshape_matmul_add_constants_and_global_pools(tmp_path):
    rng = np.random.default_rng(8)
    w = rng.standard_normal((2, 3)).astype(np.float32)  # MatMul's right operand: (in, out)
    b = rng.standard_normal(3).astype(np.float32)
    nodes = [helper.make_node("GlobalMaxPool", ["x"], ["p"], name="gmax"),
             helper.make_node("Identity", ["p"], ["i"]),
             helper.make_node("Constant", [], ["shape"], value=numpy_helper.from_array(np.array([0, -1], np.int64))),
             helper.make_node("Reshape", ["i", "shape"], ["f"], name="flat"),
             helper.make_node("MatMul", ["f", "w"], ["m"]), helper.make_node("Add", ["b", "m"], ["y"])]
    path = _model_file(tmp_path / "r.onnx", nodes, [numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b")],
                       in_shape=("N", 2, 3, 4))
    model = fastcnn.load_onnx(path)
    assert [type(layer) for layer in model.layers] == [L.GlobalMaxPool2D, L.Dense]  # the global pool and its flatten
    x = rng.standard_normal((3, 2, 3, 4)).astype(np.float32)
    np.testing.assert_allclose(model.predict(x), x.max(axis=(2, 3)) @ w + b, rtol=1e-6, atol=1e-6)
    bad = [helper.make_node("Constant", [], ["shape"], value=numpy_helper.from_array(np.array([0, 5, -1], np.int64))),
           helper.make_node("Reshape", ["x", "shape"], ["y"], name="reshape")]
    with pytest.raises(ValueError, match=r"node 'reshape' \(Reshape\).*flatten"):
        fastcnn.load_onnx(_model_file(tmp_path / "bad.onnx", bad, in_shape=("N", 2, 3, 4)))


# ---------------------------------------------------------------------------- issue 16's layer types
def new_layers_model() -> fastcnn.Sequential:
    """Grouped, depthwise, padding-mode and transposed convs, pool options, global pools, the new
    activations and residual blocks (both kinds of shortcut), on tiny shapes; ceil_mode changes each
    pool's output size here, so that it survives the round trip."""
    return fastcnn.Sequential([
        L.Conv2D(2, 4, 3, padding=1, padding_mode="reflect", groups=2, rng=1), L.LeakyReLU(0.2), L.SiLU(),
        Residual([L.Conv2D(4, 4, 3, padding="same", groups=4, rng=2), L.GELU()]),
        Residual([L.Conv2D(4, 6, 3, stride=2, padding="same", rng=3), random_batch_norm(L.BatchNorm2D(6), 4), L.GELU("tanh")],
                 [L.Conv2D(4, 6, 1, stride=2, bias=False, rng=5), random_batch_norm(L.BatchNorm2D(6), 6)]),
        L.ConvTranspose2D(6, 4, 3, stride=2, padding=1, output_padding=1, groups=2, rng=7),
        L.Conv2D(4, 4, 3, padding=(1, 0, 2, 1), padding_mode="circular", rng=8),
        L.Conv2D(4, 4, 3, padding=1, padding_mode="replicate", rng=9),
        L.MaxPool2D(2, stride=1, padding=1, dilation=2), L.MaxPool2D(2, ceil_mode=True),
        L.AvgPool2D(3, stride=2, padding=1, ceil_mode=True, count_include_pad=False),
        L.AvgPool2D(2, stride=1, divisor_override=3),
        L.GlobalAvgPool2D(), L.Dense(4, 3, rng=10),
    ], input_shape=(2, 9, 8))


def global_max_model() -> fastcnn.Sequential:
    return fastcnn.Sequential([L.ConvTranspose2D(2, 3, 2, dilation=2, rng=0), L.GlobalMaxPool2D(), L.GELU()],
                              input_shape=(2, 3, 4))


NEW_MODELS = {"new_layers": new_layers_model, "global_max": global_max_model}


@needs_ort
@pytest.mark.parametrize("name", sorted(NEW_MODELS))
def test_onnx_runtime_runs_the_new_layer_types_like_predict(tmp_path, name):
    model = NEW_MODELS[name]()
    model.export_onnx(tmp_path / "m.onnx")
    onnx.checker.check_model(str(tmp_path / "m.onnx"), full_check=True)
    x = np.random.default_rng(5).standard_normal((3,) + model.input_shape).astype(np.float32)
    session = ort.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(session.run(None, {"input": x})[0], model.predict(x), rtol=0, atol=1e-4)


def _assert_same_layers(ours, theirs, shape):
    """Same types and configurations (a conv's padding compared as the pads it gives), recursing into blocks."""
    assert [type(a) for a in ours] == [type(b) for b in theirs]
    for a, b in zip(ours, theirs):
        if isinstance(a, Residual):
            _assert_same_layers(a.body.layers, b.body.layers, shape)
            assert (a.shortcut is None) == (b.shortcut is None)
            if a.shortcut is not None:
                _assert_same_layers(a.shortcut.layers, b.shortcut.layers, shape)
        else:
            ca, cb = a.get_config(), b.get_config()
            if isinstance(a, L.Conv2D):
                assert a._pads((1,) + shape) == b._pads((1,) + shape)
                del ca["padding"], cb["padding"]
            assert ca == cb, (ca, cb)
        shape = a.output_shape(shape)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("name", sorted(NEW_MODELS))
def test_round_trip_of_the_new_layer_types_is_exact(tmp_path, name, dtype):
    model = NEW_MODELS[name]().astype(dtype)
    model.export_onnx(tmp_path / "m.onnx")
    back = fastcnn.load_onnx(tmp_path / "m.onnx")
    _assert_same_layers(model.layers, back.layers, model.input_shape)
    ours, theirs = model.state_dict(), back.state_dict()
    assert {k for k in ours if "num_batches" not in k} == {k for k in theirs if "num_batches" not in k}
    for key, value in ours.items():
        if "num_batches" not in key:
            assert theirs[key].dtype == value.dtype and np.array_equal(theirs[key], value), key
    x = np.random.default_rng(6).standard_normal((2,) + model.input_shape).astype(dtype)
    assert np.array_equal(back.predict(x), model.predict(x))


def test_new_layer_names_are_the_state_dict_names(tmp_path):
    model = new_layers_model()
    model.export_onnx(tmp_path / "m.onnx")
    proto = onnx.load(str(tmp_path / "m.onnx"))
    names = {t.name for t in proto.graph.initializer}
    assert names == {k for k in model.state_dict() if "num_batches" not in k} | {"0.pads", "6.pads", "7.pads",
                                                                                    "11.divisor"}
    nodes = [n.name for n in proto.graph.node]
    assert nodes[:5] == ["0.Conv2D.pad", "0.Conv2D", "1.LeakyReLU", "2.SiLU.sigmoid", "2.SiLU"]
    assert "4.body.0.Conv2D" in nodes and "4.shortcut.1.BatchNorm2D" in nodes and "4.Residual" in nodes


def test_export_refuses_a_divisor_override_onnx_cannot_state_exactly(tmp_path):
    model = fastcnn.Sequential([L.AvgPool2D(2, ceil_mode=True, divisor_override=3)], input_shape=(1, 5, 5))
    with pytest.raises(ValueError, match=r"layer 0 \(AvgPool2D\(2x2.*divisor_override.*no exact ONNX form"):
        model.export_onnx(tmp_path / "m.onnx")
    assert not os.listdir(tmp_path)


class _TorchResidual:
    """``body(x) + shortcut(x)`` as a torch module (built lazily: torch is optional)."""

    @staticmethod
    def make(body, shortcut=None):
        import torch

        class Block(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.body = torch.nn.Sequential(*body)
                self.shortcut = torch.nn.Sequential(*shortcut) if shortcut else torch.nn.Identity()

            def forward(self, x):
                return self.body(x) + self.shortcut(x)

        return Block()


@pytest.mark.parametrize("opset", [13, 20])
def test_imports_what_torch_writes_for_the_new_layer_types(tmp_path, opset):
    """Residual blocks (a 1x1 stride-2 conv + BN shortcut, an identity one), depthwise conv, LeakyReLU,
    SiLU (Sigmoid + Mul), GELU (its op at opset 20, its formula before), ConvTranspose2d and
    AdaptiveAvgPool2d(1) + Flatten."""
    torch = pytest.importorskip("torch")
    nn = torch.nn
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1),
        _TorchResidual.make([nn.Conv2d(4, 4, 3, padding=1, bias=False), nn.BatchNorm2d(4), nn.SiLU(),
                             nn.Conv2d(4, 8, 3, stride=2, padding=1)],
                            [nn.Conv2d(4, 8, 1, stride=2, bias=False), nn.BatchNorm2d(8)]),
        nn.ReLU(),
        _TorchResidual.make([nn.Conv2d(8, 8, 3, padding=1, groups=8), nn.GELU(), nn.GELU(approximate="tanh"),
                             nn.LeakyReLU(0.3)]),
        nn.ConvTranspose2d(8, 4, 3, stride=2, padding=1, output_padding=1), nn.SiLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3)).eval()
    for module in net.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.uniform_(-1, 1)
            module.running_var.uniform_(0.5, 2)
    x = np.random.default_rng(7).standard_normal((2, 1, 8, 8)).astype(np.float32)
    path = tmp_path / "t.onnx"
    _torch_export(net, x, path, opset_version=opset)
    model = fastcnn.load_onnx(path)
    assert [type(layer).__name__ for layer in model.layers] == ["Conv2D", "Residual", "ReLU", "Residual",
                                                                "ConvTranspose2D", "SiLU", "GlobalAvgPool2D", "Dense"]
    inner = [type(layer).__name__ for layer in model.layers[3].body.layers]
    assert inner == ["Conv2D", "GELU", "GELU", "LeakyReLU"] and model.layers[3].shortcut is None
    assert [layer.approximate for layer in model.layers[3].body.layers[1:3]] == ["none", "tanh"]
    assert model.layers[1].shortcut.layers[0].stride == (2, 2) and model.layers[3].body.layers[0].groups == 8
    with torch.no_grad():
        expected = net(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(model.predict(x), expected, rtol=0, atol=1e-5)


def test_imports_torch_padding_mode_convs_whose_pads_are_computed_from_constants(tmp_path):
    torch = pytest.importorskip("torch")
    nn = torch.nn
    torch.manual_seed(1)
    net = nn.Sequential(nn.Conv2d(2, 4, 3, groups=2, padding=1, padding_mode="reflect"), nn.ReLU(),
                        nn.Conv2d(4, 2, 3, padding=(1, 2), padding_mode="replicate")).eval()
    x = np.random.default_rng(8).standard_normal((2, 2, 6, 6)).astype(np.float32)
    _torch_export(net, x, tmp_path / "p.onnx")
    model = fastcnn.load_onnx(tmp_path / "p.onnx")
    assert [(layer.padding, layer.padding_mode) for layer in model.layers[::2]] == [((1, 1), "reflect"),
                                                                                    ((1, 2), "replicate")]
    with torch.no_grad():
        expected = net(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(model.predict(x), expected, rtol=0, atol=1e-5)


def test_constant_computations_are_bounded_and_checked(tmp_path):
    huge = numpy_helper.from_array(np.array([10**6, 10**6], np.int64), "shape")
    nodes = [helper.make_node("ConstantOfShape", ["shape"], ["c"], name="big"), helper.make_node("Relu", ["x"], ["y"])]
    with pytest.raises(ValueError, match=r"node 'big' \(ConstantOfShape\).*over 1024 elements"):
        fastcnn.load_onnx(_model_file(tmp_path / "c.onnx", nodes, [huge]))
    data = numpy_helper.from_array(np.arange(6, dtype=np.int64), "d")
    target = numpy_helper.from_array(np.array([4, -1], np.int64), "t")
    nodes = [helper.make_node("Reshape", ["d", "t"], ["c"], name="bad"), helper.make_node("Relu", ["x"], ["y"])]
    with pytest.raises(ValueError, match=r"node 'bad' \(Reshape\): cannot compute it"):
        fastcnn.load_onnx(_model_file(tmp_path / "r.onnx", nodes, [data, target]))
