"""The command line, run as a user would: train, predict (test index, PNG, IDX), info, bad arguments."""
import struct
import subprocess
import sys
import zlib

import numpy as np
import pytest

from fastcnn import cli, datasets, dispatch, threads


@pytest.fixture(autouse=True)
def restore_global_settings(monkeypatch):
    """`fastcnn train` sets the process's backend and threads; keep that inside each test."""
    monkeypatch.setattr(dispatch, "_global_policy", None)
    before = threads.get_num_threads()
    yield
    threads.set_num_threads(before)


def _write_png(path, gray):
    h, w = gray.shape
    raw = b"".join(b"\x00" + row.tobytes() for row in gray.astype(np.uint8))

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0))
                     + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("cli") / "tiny.npz"
    code = cli.main(["train", "--model", "tiny_cnn", "--batch-size", "32", "--epochs", "1", "--quiet",
                     "--out", str(out)])
    assert code == 0
    return out


def test_train_output(tmp_path, capsys):
    out = tmp_path / "m.npz"
    assert cli.main(["train", "--model", "tiny_cnn", "--batch-size", "64", "--quiet", "--out", str(out),
                     "--lr", "0.1", "--backend", "numpy", "--threads", "1"]) == 0
    text = capsys.readouterr().out
    assert "training tiny_cnn on 4,000 MNIST images" in text and "backend numpy, 1 threads" in text
    assert "Conv2D(1->1, 3x3)" in text and "test accuracy: 0." in text and "total wall time" in text
    accuracy = float(text.split("test accuracy: ")[1].split()[0])
    assert accuracy > 0.5


def test_plots_are_written(tmp_path, capsys):
    pytest.importorskip("matplotlib")  # part of the dev extra; optional for users
    out = tmp_path / "plots"
    assert cli.main(["train", "--model", "tiny_cnn", "--epochs", "2", "--batch-size", "64", "--lr", "0.1", "--quiet",
                     "--out", str(tmp_path / "m.npz"), "--plot", str(out)]) == 0
    names = sorted(p.name for p in out.iterdir())
    assert names == ["confusion_matrix.png", "test_digits.png", "training_curves.png"]
    assert all((out / n).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for n in names)
    assert "wrote" in capsys.readouterr().out


def test_predict_test_image_png_and_idx(trained, tmp_path, capsys):
    assert cli.main(["predict", str(trained), "--index", "0"]) == 0
    text = capsys.readouterr().out
    assert text.startswith("MNIST test image 0: predicted ") and "(true 7)" in text and "  9: " in text

    _, (xt, _) = datasets.load_mnist(quiet=True)
    png = tmp_path / "digit.png"
    big = np.kron(255 - xt[0], np.ones((2, 2), np.uint8))  # 56x56, dark digit on light: inverted on read
    _write_png(png, big)
    assert cli.main(["predict", str(trained), str(png)]) == 0
    png_line = capsys.readouterr().out.splitlines()[0]
    idx = tmp_path / "images-idx3-ubyte"
    idx.write_bytes(b"\0\0\x08\x03" + struct.pack(">III", 2, 28, 28) + xt[:2].tobytes())
    assert cli.main(["predict", str(trained), str(idx), "--index", "0"]) == 0
    idx_line = capsys.readouterr().out.splitlines()[0]
    assert png_line.split("predicted")[1] == idx_line.split("predicted")[1]


def test_bad_arguments_are_clear_errors(trained, tmp_path, capsys):
    assert cli.main(["train", "--threads", "999", "--quiet"]) == 1
    assert "threads must be an int from 1 to" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["train", "--epochs", "0"])
    assert exit_info.value.code == 2
    assert cli.main(["predict", str(tmp_path / "missing.npz"), "--index", "0"]) == 1
    assert "No such file" in capsys.readouterr().err
    assert cli.main(["predict", str(trained), "--index", "10000"]) == 1
    assert "--index must be in [0, 10000)" in capsys.readouterr().err


def test_info_and_module_entry_point():
    out = subprocess.run([sys.executable, "-m", "fastcnn", "info"], capture_output=True, text=True, check=True).stdout
    assert "threading layer" in out and "numpy" in out and "dispatch decisions" in out


def test_warmup_hands_the_conv_gradients_of_a_model_to_another_process():
    from fastcnn import _warmup, models
    from fastcnn.kernels import jit

    model = models.lenet(seed=0)
    calls = _warmup._conv_gradient_calls(model, 64)
    assert [c["x"] for c in calls] == [(64, 1, 28, 28), (64, 8, 13, 13)]
    assert [c["y"] for c in calls] == [(64, 8, 13, 13), (64, 16, 5, 5)]  # each conv runs with its max-pool
    assert [c["pooled"] for c in calls] == [True, True]
    assert [c["input_grad"] for c in calls] == [False, True]  # the first layer needs no input gradient
    with dispatch.use_backend("numpy"):
        assert _warmup.start(model, 2) is None
    if not jit.NUMBA_AVAILABLE:
        return
    helper = _warmup.start(model, 2)
    assert helper.wait(300) == 0  # it compiled (or loaded) both layers' gradient kernels without error
