"""The command line, run as a user would: train, predict (test index, PNG, IDX), info, bad arguments."""
import struct
import subprocess
import sys

import numpy as np
import pytest

from fastcnn import cli, datasets, dispatch, threads
from fastcnn.kernels import jit


@pytest.fixture(autouse=True)
def restore_global_settings(monkeypatch):
    """`fastcnn train` sets the process's backend and threads; keep that inside each test."""
    monkeypatch.setattr(dispatch, "_global_policy", None)
    before = threads.get_num_threads()
    yield
    threads.set_num_threads(before)


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

    Image = pytest.importorskip("PIL.Image")
    _, (xt, _) = datasets.load_mnist(quiet=True)
    png = tmp_path / "digit.png"
    big = np.kron(255 - xt[0], np.ones((2, 2), np.uint8))  # 56x56, dark digit on light: inverted on read
    Image.fromarray(big).save(png)
    assert cli.main(["predict", str(trained), str(png), "--no-preprocess"]) == 0
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
    assert any(line.startswith("cpu ") and len(line.split()) > 1 for line in out.splitlines())

    layer = next(line for line in out.splitlines() if line.startswith("threading layer")).split()[-1]
    if jit.NUMBA_AVAILABLE:  # the layer actually started, not "not started"
        assert layer in ("tbb", "omp", "workqueue")
    blas = next(line for line in out.splitlines() if line.startswith("BLAS"))
    if blas.count(" from ") > 1:  # several copies are explained
        assert "each wheel ships its own BLAS" in out and "from numpy" in blas


def test_warmup_hands_the_conv_gradients_of_a_model_to_another_process(monkeypatch):
    from fastcnn import _warmup, models

    model = models.lenet(seed=0)
    calls = _warmup._conv_gradient_calls(model, 64)
    assert [c["x"] for c in calls] == [(64, 1, 28, 28), (64, 8, 13, 13)]
    assert [c["y"] for c in calls] == [(64, 8, 13, 13), (64, 16, 5, 5)]  # each conv runs with its max-pool
    assert [c["pooled"] for c in calls] == [True, True]
    assert [c["input_grad"] for c in calls] == [False, True]  # the first layer needs no input gradient
    if not jit.NUMBA_AVAILABLE:
        return
    import json

    real_start, started = _warmup.start, []
    monkeypatch.setattr(_warmup, "start", lambda calls: started.append(real_start(calls)) or started[-1])
    with _warmup.gradients_compiled_beside(model, 2):  # started from inside Numba's compile event, as in training
        _compiles_a_new_kernel()
    assert len(started) == 1 and started[0].returncode == 0  # waited for: it compiled (or loaded) them
    assert json.loads(started[0].args[-1]) == {"threads": threads.get_num_threads(),
                                               "calls": json.loads(json.dumps(_warmup._conv_gradient_calls(model, 2)))}


class _FakeHelper:
    """Stands in for the second process of ``_warmup.start``: records what is asked of it; with
    ``slow``, its wait times out."""

    def __init__(self, calls, slow=False):
        self.calls, self.slow, self.running, self.waited, self.killed = calls, slow, True, False, False

    def wait(self, timeout=None):
        self.waited = True
        if self.slow and timeout is not None:
            raise subprocess.TimeoutExpired("helper", timeout)
        self.running = False
        return 0

    def poll(self):
        return None if self.running else 0

    def kill(self):
        self.killed, self.slow = True, False


def _compiles_a_new_kernel():
    """Make Numba compile something this process has never compiled (a fresh function each call)."""
    import numba

    numba.njit(lambda a: a + 1)(1)


@pytest.mark.skipif(not jit.NUMBA_AVAILABLE, reason="needs Numba")
def test_warmup_starts_the_second_process_only_when_this_one_compiles(monkeypatch):
    import threading

    from fastcnn import _warmup, models

    started, slow = [], []
    monkeypatch.setattr(_warmup, "start", lambda calls: started.append(_FakeHelper(calls, bool(slow))) or started[-1])
    model = models.lenet(seed=0)
    x = np.zeros((4, 1, 28, 28), np.float32)
    model.predict(x)  # compiles (or loads) the forward pass's kernels
    with _warmup.gradients_compiled_beside(model, 4):
        model.predict(x)  # the warm case: nothing compiles
    assert started == []
    with _warmup.gradients_compiled_beside(model, 4):
        _compiles_a_new_kernel()
        _compiles_a_new_kernel()
    assert len(started) == 1 and started[0].calls == _warmup._conv_gradient_calls(model, 4)
    assert started[0].waited and not started[0].killed  # the block waits for it
    with pytest.raises(KeyboardInterrupt), _warmup.gradients_compiled_beside(model, 4):
        _compiles_a_new_kernel()
        raise KeyboardInterrupt
    assert started[1].killed  # interrupted: the second process is stopped too
    slow.append(True)
    with _warmup.gradients_compiled_beside(model, 4, timeout=0.01):
        _compiles_a_new_kernel()
    assert started[2].waited and started[2].killed  # past the timeout: stopped, training compiles the rest
    with dispatch.use_backend("numpy"), _warmup.gradients_compiled_beside(model, 4):
        _compiles_a_new_kernel()
    with _warmup.gradients_compiled_beside(model, 4):  # another thread's compile is not this block's
        other = threading.Thread(target=_compiles_a_new_kernel)
        other.start()
        other.join()
    monkeypatch.setattr(jit, "_cache_warned", True)  # no on-disk cache: a second process would compile in vain
    with _warmup.gradients_compiled_beside(model, 4):
        _compiles_a_new_kernel()
    assert len(started) == 3


@pytest.mark.skipif(not jit.NUMBA_AVAILABLE, reason="needs Numba")
def test_warmup_without_a_second_process_still_compiles(monkeypatch):
    from fastcnn import _warmup, models

    def fails(calls):
        raise OSError("no process for you")

    monkeypatch.setattr(_warmup, "start", fails)
    with _warmup.gradients_compiled_beside(models.lenet(seed=0), 4):
        _compiles_a_new_kernel()  # the compile that would start it goes on
        _compiles_a_new_kernel()


def test_warmup_sees_the_convolutions_inside_blocks():
    from fastcnn import Conv2D, MaxPool2D, ReLU, Residual, Sequential, _warmup

    model = Sequential([Conv2D(1, 4, 3, padding=1), MaxPool2D(2),
                        Residual([Conv2D(4, 4, 3, padding=1), ReLU(), Conv2D(4, 4, 3, padding=1)],
                                 shortcut=[Conv2D(4, 4, 1)])], input_shape=(1, 8, 8))
    calls = _warmup._conv_gradient_calls(model, 2)
    assert [(c["x"], c["y"], c["pooled"], c["input_grad"]) for c in calls] == [
        ((2, 1, 8, 8), (2, 4, 4, 4), True, False),  # the first step needs no input gradient
        ((2, 4, 4, 4), (2, 4, 4, 4), False, True), ((2, 4, 4, 4), (2, 4, 4, 4), False, True),  # the body
        ((2, 4, 4, 4), (2, 4, 4, 4), False, True)]  # the shortcut
    assert calls[3]["weight"] == (4, 4, 1, 1)


def test_default_output_is_named_after_the_preset(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "lenet.npz").write_bytes(b"the default preset's model")
    assert cli.main(["train", "--model", "tiny_cnn", "--epochs", "1", "--quiet"]) == 0
    assert "model saved to tiny_cnn.npz" in capsys.readouterr().out
    assert (tmp_path / "lenet.npz").read_bytes() == b"the default preset's model"  # untouched
    assert sorted(p.name for p in tmp_path.iterdir()) == ["lenet.npz", "tiny_cnn.npz"]


def test_a_missing_output_folder_is_an_error_unless_asked(tmp_path, trained, capsys):
    out = tmp_path / "no" / "such" / "m.npz"
    assert cli.main(["train", "--model", "tiny_cnn", "--quiet", "--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert f"the folder {out.parent} does not exist (create it, or pass --parents)" in err
    assert not (tmp_path / "no").exists()
    assert cli.main(["train", "--model", "tiny_cnn", "--quiet", "--plot", str(tmp_path / "a" / "b")]) == 1
    assert "does not exist" in capsys.readouterr().err
    show = tmp_path / "new" / "seen.png"
    assert cli.main(["predict", str(trained), "--index", "0", "--show", str(show)]) == 1
    assert cli.main(["predict", str(trained), "--index", "0", "--show", str(show), "--parents"]) == 0
    assert show.exists()


def _interrupt_on_call(monkeypatch, target, name, call, through_c=False):
    """Ctrl-C in the ``call``-th call of ``target.name``; with ``through_c``, as a C function that called
    Python reports it (Numba's dispatcher loading a cached kernel): a SystemError caused by it."""
    real, calls = getattr(target, name), []

    def interrupted(*args, **kwargs):
        calls.append(1)
        if len(calls) == call:
            if through_c:
                try:
                    raise KeyboardInterrupt
                except KeyboardInterrupt as exc:
                    raise SystemError("<function _numba_unpickle> returned a result with an exception set") from exc
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(target, name, interrupted)


@pytest.mark.parametrize("through_c", [False, True])
def test_ctrl_c_during_training_says_where_and_saves_nothing(tmp_path, monkeypatch, capsys, through_c):
    from fastcnn.model import Sequential

    out = tmp_path / "m.npz"
    out.write_bytes(b"an older model")
    _interrupt_on_call(monkeypatch, Sequential, "_train_epoch", 2, through_c)  # in the second epoch
    code = cli.main(["train", "--model", "tiny_cnn", "--epochs", "3", "--quiet", "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 130
    assert err.strip().splitlines() == [f"fastcnn train: interrupted at epoch 2 of 3; nothing was saved ({out} is as it was)"]
    assert out.read_bytes() == b"an older model" and [p.name for p in tmp_path.iterdir()] == ["m.npz"]


def test_ctrl_c_while_saving_leaves_no_half_written_file(tmp_path, monkeypatch, capsys):
    from fastcnn import saving

    _interrupt_on_call(monkeypatch, saving.np, "savez", 1)
    out = tmp_path / "m.npz"
    assert cli.main(["train", "--model", "tiny_cnn", "--epochs", "1", "--quiet", "--out", str(out)]) == 130
    assert "interrupted after training, before saving; nothing was saved" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []  # neither the model nor a temporary file


def test_ctrl_c_in_a_real_process_exits_130_with_one_line(tmp_path):
    """SIGINT sent to `fastcnn train` while it runs: exit status 130, one line, no traceback.

    The process starts with SIGINT's default action, as a command run from a terminal does: a test run
    started in the background of a script inherits SIGINT ignored, and so would the process (Python
    then leaves it ignored, as it should for a background job)."""
    import os
    import signal
    import time

    inherited = signal.signal(signal.SIGINT, signal.default_int_handler)  # a handler: exec resets it to default
    try:
        proc = subprocess.Popen([sys.executable, "-m", "fastcnn", "train", "--model", "tiny_cnn", "--epochs", "50",
                                 "--out", str(tmp_path / "m.npz")], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True, env=dict(os.environ, PYTHONUNBUFFERED="1"))
    finally:
        signal.signal(signal.SIGINT, inherited)
    line = ""
    deadline = time.monotonic() + 240
    while "total parameters" not in line and time.monotonic() < deadline:  # the summary: training is next
        line = proc.stdout.readline()
        assert line or proc.poll() is None, proc.stderr.read()
    time.sleep(1.0)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "Traceback" not in err
    last = err.strip().splitlines()[-1]
    assert last.startswith("fastcnn train: interrupted ") and "nothing was saved" in last
    assert list(tmp_path.iterdir()) == []


def test_predict_reads_pictures_and_shows_what_it_classified(trained, tmp_path, capsys):
    Image = pytest.importorskip("PIL.Image")
    from fastcnn import images

    _, (xt, yt) = datasets.load_mnist(quiet=True)
    ink = Image.fromarray(xt[0]).resize((90, 90), Image.Resampling.BILINEAR)  # a small 7
    canvas = Image.new("RGBA", (600, 400), (0, 0, 0, 0))  # transparent, as drawing apps export
    canvas.paste(Image.new("RGBA", (90, 90), (0, 0, 0, 255)), (420, 40), mask=ink)  # black ink, alpha = the digit
    canvas.save(tmp_path / "seven.png")
    show = tmp_path / "seen.png"
    assert cli.main(["predict", str(trained), str(tmp_path / "seven.png"), "--show", str(show)]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"{tmp_path / 'seven.png'}: predicted ") and f"classified: {show}" in out
    seen = images.read_gray(show)
    np.testing.assert_allclose(seen, images.load_digit(tmp_path / "seven.png"), atol=0.5 / 255 + 1e-6)
    assert np.corrcoef(seen.ravel(), xt[0].ravel())[0, 1] > 0.9  # the 7 it came from, rebuilt
    assert cli.main(["predict", str(trained), str(tmp_path / "seven.png"), "--show", str(show), "--no-preprocess"]) == 0
    assert np.corrcoef(images.read_gray(show).ravel(), xt[0].ravel())[0, 1] < 0.5


def test_no_message_suggests_unpickling(tmp_path, capsys):
    text = tmp_path / "model.npz"
    text.write_text("layers: conv, relu, dense\n")
    assert cli.main(["predict", str(text), "--index", "0"]) == 1
    err = capsys.readouterr().err
    assert "not a .npz archive" in err and "never unpickles" in err
    assert "allow_pickle" not in err and "unsafe" not in err
