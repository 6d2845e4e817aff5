"""Keras habits in fit: optimizers and losses by name, validation_split, callbacks; and the messages for
the shapes Keras users pass (labels as a column, one image, channels-last)."""
import numpy as np
import pytest

import fastcnn
from fastcnn import layers as L
from fastcnn.callbacks import Callback, EarlyStopping, ModelCheckpoint


def _blobs(n=240, seed=0):
    """Three well separated Gaussian blobs in 4-D: learnable in a few epochs by a small MLP."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, n)
    centres = np.eye(3, 4, dtype=np.float32) * 3
    x = (centres[y] + rng.normal(0, 0.5, (n, 4))).astype(np.float32)
    return x, y


def _mlp(seed=0):
    return fastcnn.Sequential([L.Dense(4, 16, rng=seed), L.ReLU(), L.Dense(16, 3, rng=seed)], input_shape=(4,))


class Recorder(Callback):
    def __init__(self):
        self.events = []

    def on_train_begin(self, model):
        self.events.append("begin")

    def on_epoch_end(self, model, epoch, logs):
        self.events.append((epoch, sorted(logs)))

    def on_train_end(self, model, history):
        self.events.append(("end", len(history["loss"])))


def test_optimizer_and_loss_by_name_match_the_instances():
    x, y = _blobs()
    by_name, by_instance = _mlp(), _mlp()
    h1 = by_name.fit(x, y, epochs=2, batch_size=32, optimizer="adam", loss="cross_entropy", seed=0, verbose=0)
    h2 = by_instance.fit(x, y, epochs=2, batch_size=32, optimizer=fastcnn.Adam(1e-3), loss=fastcnn.CrossEntropyLoss(),
                         seed=0, verbose=0)
    assert h1 == h2
    h3 = _mlp().fit(x, y, epochs=1, optimizer="SGD", loss="sparse_categorical_crossentropy", seed=0, verbose=0)
    h4 = _mlp().fit(x, y, epochs=1, optimizer=fastcnn.SGD(0.01), seed=0, verbose=0)
    assert h3 == h4
    onehot = np.eye(3, dtype=np.float32)[y]
    mse = _mlp().fit(x, onehot, epochs=1, loss="mse", verbose=0)
    assert np.isnan(mse["accuracy"][0]) or 0 <= mse["accuracy"][0] <= 1
    sigmoid = fastcnn.Sequential([L.Dense(4, 1, rng=0), L.Sigmoid()])
    bce = sigmoid.fit(x, (y == 0).astype(np.float32)[:, None], epochs=1, loss="bce", optimizer="sgd", verbose=0)
    assert np.isfinite(bce["loss"][0])


def test_unknown_names_list_the_choices():
    x, y = _blobs(16)
    with pytest.raises(ValueError, match=r"unknown optimizer 'adamw'; choose one of 'adam', 'sgd'"):
        _mlp().fit(x, y, optimizer="adamw", verbose=0)
    with pytest.raises(ValueError, match=r"unknown loss 'hinge'; choose one of 'cross_entropy', 'mse', 'bce'"):
        _mlp().fit(x, y, loss="hinge", verbose=0)
    with pytest.raises(TypeError, match="optimizer must be a fastcnn optimizer"):
        _mlp().fit(x, y, optimizer=3, verbose=0)
    with pytest.raises(TypeError, match="callbacks must be fastcnn.callbacks.Callback"):
        _mlp().fit(x, y, callbacks=[print], verbose=0)


def test_validation_split_holds_out_the_last_samples():
    x, y = _blobs(200)
    split = _mlp().fit(x, y, epochs=2, validation_split=0.25, seed=0, verbose=0)
    explicit = _mlp().fit(x[:150], y[:150], epochs=2, validation_data=(x[150:], y[150:]), seed=0, verbose=0)
    assert split == explicit
    with pytest.raises(ValueError, match="validation_data or validation_split, not both"):
        _mlp().fit(x, y, validation_split=0.1, validation_data=(x, y), verbose=0)
    for bad in (1.0, -0.1, "0.1"):
        with pytest.raises(ValueError, match=r"validation_split must be a fraction in \(0, 1\)"):
            _mlp().fit(x, y, validation_split=bad, verbose=0)
    with pytest.raises(ValueError, match="leaves 0 of 2 samples to train on"):
        _mlp().fit(x[:2], y[:2], validation_split=0.9, verbose=0)


def test_callback_hooks_run_in_order_with_the_logs():
    x, y = _blobs(64)
    rec = Recorder()
    _mlp().fit(x, y, epochs=3, validation_split=0.25, callbacks=[rec], verbose=0)
    keys = ["accuracy", "loss", "val_accuracy", "val_loss"]
    assert rec.events == ["begin", (0, keys), (1, keys), (2, keys), ("end", 3)]


def test_early_stopping_stops_and_restores_the_best_weights():
    x, y = _blobs()
    model = _mlp()
    # min_delta larger than any change: only the first epoch improves, so it stops after patience + 1 misses
    stop = EarlyStopping(monitor="val_loss", patience=2, min_delta=100.0, restore_best_weights=True)
    seen = []

    class Weights(Callback):
        def on_epoch_end(self, model, epoch, logs):
            seen.append(model.state_dict())

    history = model.fit(x, y, epochs=40, batch_size=16, optimizer="sgd", validation_split=0.25,
                        callbacks=[Weights(), stop], seed=0, verbose=0)
    assert stop.best_epoch == 0 and stop.stopped_epoch == 3 and len(history["val_loss"]) == 4
    assert not np.array_equal(seen[0]["0.weight"], seen[3]["0.weight"])
    for name, value in model.state_dict().items():
        np.testing.assert_array_equal(value, seen[0][name])
    patient = EarlyStopping(monitor="loss", patience=1)  # the training loss falls every epoch: never stops
    assert len(_mlp().fit(x, y, epochs=5, callbacks=[patient], verbose=0)["loss"]) == 5 and patient.stopped_epoch is None
    with pytest.raises(ValueError, match=r"monitors 'val_loss'.*need validation_data or validation_split"):
        _mlp().fit(x, y, epochs=1, callbacks=[EarlyStopping()], verbose=0)
    with pytest.raises(ValueError, match="patience must be an int >= 0"):
        EarlyStopping(patience=-1)


def test_model_checkpoint_saves_the_best_model_only(tmp_path):
    x, y = _blobs()
    path = tmp_path / "best.npz"
    every = tmp_path / "m-{epoch:02d}.npz"
    best = ModelCheckpoint(path, monitor="val_accuracy", save_best_only=True)
    each = ModelCheckpoint(every)
    history = _mlp().fit(x, y, epochs=4, batch_size=16, optimizer=fastcnn.SGD(0.5), validation_split=0.25,
                         callbacks=[best, each], seed=0, verbose=0)
    acc = history["val_accuracy"]
    improvements = [e for e in range(4) if acc[e] > max(acc[:e], default=-1)]
    assert len(best.saved) == len(improvements) and best.best == max(acc)
    assert each.saved == [str(tmp_path / f"m-{e:02d}.npz") for e in (1, 2, 3, 4)]
    saved = fastcnn.load_model(path)
    _, val_acc = saved.evaluate(x[180:], y[180:])
    assert val_acc == pytest.approx(max(acc))
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_labels_as_a_column_are_class_labels():
    x, y = _blobs(64)
    column = _mlp().fit(x, y[:, None], epochs=1, seed=0, verbose=0)
    flat = _mlp().fit(x, y, epochs=1, seed=0, verbose=0)
    assert column == flat
    assert _mlp().evaluate(x, y[:, None]) == _mlp().evaluate(x, y)
    with pytest.raises(ValueError, match=r"class labels must be integers \(y.ravel\(\).astype\(int\)\)"):
        _mlp().fit(x, y[:, None].astype(np.float32), epochs=1, verbose=0)


def test_one_image_and_channels_last_get_the_fix_in_the_message():
    model = fastcnn.models.lenet(seed=0)
    image = np.zeros((1, 28, 28), np.float32)
    with pytest.raises(ValueError, match=r"for one image use x\[None\]"):
        model.predict(image)
    with pytest.raises(ValueError, match=r"gray images \(N, H, W\) use x\[:, None\]"):
        model.predict(np.zeros((5, 28, 28), np.float32))
    with pytest.raises(ValueError, match=r"channels-last \(NHWC\).*x.transpose\(0, 3, 1, 2\)"):
        model.fit(np.zeros((4, 28, 28, 1), np.float32), np.zeros(4, int), verbose=0)
    assert model.predict(image[None]).shape == (1, 10)
