"""Sequential end to end: gradients of a whole model, learning, presets, files, bad input."""
import zipfile

import numpy as np
import pytest

import fastcnn
from fastcnn import layers as L
from fastcnn.datasets import load_mnist

from .reference import numeric_grad


def _small_cnn(seed=0):
    return fastcnn.Sequential([
        L.Conv2D(1, 3, 3, padding=1, rng=seed), L.BatchNorm2D(3), L.ReLU(), L.MaxPool2D(2), L.Conv2D(3, 4, 2, rng=seed),
        L.Tanh(), L.AvgPool2D(2), L.Flatten(), L.Dense(4, 6, rng=seed), L.BatchNorm1D(6), L.Sigmoid(),
        L.Dense(6, 3, rng=seed),
    ], input_shape=(1, 8, 8))


def test_run_order_rewrites_give_identical_results(rng, backend):
    """Sequential runs ReLU after an adjacent MaxPool2D (they commute), and then the Conv2D and the
    MaxPool2D as one op; outputs and gradients must be the very bits of running the layers as declared,
    ties among negative values included."""
    model = fastcnn.Sequential([L.Conv2D(1, 4, 3, rng=0), L.ReLU(), L.MaxPool2D(2), L.Flatten(), L.Dense(144, 5, rng=0)],
                               input_shape=(1, 14, 14))
    assert [type(layer).__name__ for layer in model._run_order()][:2] == ["ConvMaxPool", "Flatten"]
    assert model._run_order()[0].relu is model.layers[1]
    x = rng.standard_normal((3, 1, 14, 14)).astype(np.float32)
    x[0, 0, :4, :4] = -1.0  # windows of equal negative values
    gy = rng.standard_normal((3, 5)).astype(np.float32)
    with fastcnn.use_backend(backend):
        out = model.forward(x, training=True)
        gx = model.backward(gy)
        grads = {name: g.copy() for name, _, g in model.named_parameters()}
        h = x
        for layer in model.layers:  # the declared order
            h = layer.forward(h, training=True)
        g = gy
        for layer in reversed(model.layers):
            g = layer.backward(g)
    np.testing.assert_array_equal(out, h)
    np.testing.assert_array_equal(gx, g)
    for name, _, grad in model.named_parameters():
        np.testing.assert_array_equal(grads[name], grad)


def test_run_order_follows_changes_to_the_layers():
    conv, pool = L.Conv2D(1, 2, 3, rng=0), L.MaxPool2D(2)
    model = fastcnn.Sequential([conv, pool, L.Flatten()], input_shape=(1, 8, 8))
    assert [type(step).__name__ for step in model._run_order()] == ["ConvMaxPool", "Flatten"]
    assert model._run_order() is model._run_order()  # made once
    model.layers.insert(1, L.Tanh())
    assert [type(step).__name__ for step in model._run_order()] == ["Conv2D", "Tanh", "MaxPool2D", "Flatten"]
    del model.layers[1]
    pool.backend = "numpy"  # pinned apart: not one op
    assert [type(step).__name__ for step in model._run_order()] == ["Conv2D", "MaxPool2D", "Flatten"]


def test_whole_model_gradient_matches_finite_differences(rng):
    model = _small_cnn().astype(np.float64)
    x = rng.standard_normal((4, 1, 8, 8))
    y = rng.integers(0, 3, 4)
    loss = fastcnn.CrossEntropyLoss()

    def value():
        return loss(model.forward(x, training=True), y)

    value()
    model.backward(loss.backward())
    analytic = {name: g.copy() for name, _, g in model.named_parameters()}
    for name, p, _ in model.named_parameters():
        np.testing.assert_allclose(analytic[name], numeric_grad(value, p), rtol=1e-5, atol=1e-7, err_msg=name)


def _synthetic_digits(n, seed=0):
    """MNIST-like data: 10 blurry prototype strokes, shifted and noised."""
    rng = np.random.default_rng(seed)
    protos = np.zeros((10, 28, 28), np.float32)
    for k in range(10):
        pts = rng.integers(6, 22, (6, 2))
        for (a, b), (c, d) in zip(pts[:-1], pts[1:]):
            for t in np.linspace(0, 1, 30):
                protos[k, int(a + t * (c - a)), int(b + t * (d - b))] = 1.0
    y = rng.integers(0, 10, n)
    x = np.stack([np.roll(protos[k], tuple(rng.integers(-2, 3, 2)), axis=(0, 1)) for k in y])
    x = np.clip(x + rng.normal(0, 0.2, x.shape), 0, 1).astype(np.float32)
    return x[:, None], y


def test_training_learns_on_mnist_like_data():
    x, y = _synthetic_digits(3000)
    model = fastcnn.models.lenet(seed=0)
    before, _ = model.evaluate(x, y)
    history = model.fit(x[:2500], y[:2500], epochs=2, batch_size=32, optimizer=fastcnn.Adam(2e-3), seed=0,
                        verbose=0, validation_data=(x[2500:], y[2500:]))
    assert history["loss"][-1] < before / 2
    assert history["val_accuracy"][-1] > 0.8  # chance is 0.1
    assert set(history) == {"loss", "accuracy", "val_loss", "val_accuracy"}


def test_real_mnist_subset_learns():
    (x, y), (xt, yt) = load_mnist(as_float=True, quiet=True)
    model = fastcnn.models.lenet(seed=0)
    model.fit(x[:6000], y[:6000], epochs=1, batch_size=64, optimizer=fastcnn.Adam(2e-3), seed=0, verbose=0)
    _, acc = model.evaluate(xt[:2000], yt[:2000])
    assert acc > 0.85


def test_toy_conv_cost_drops():
    x, y = fastcnn.models.toy_data()
    model = fastcnn.models.toy_conv(seed=0)
    before = fastcnn.MSELoss()(model.predict(x), y)
    history = model.fit(x, y, verbose=0, seed=0, **model.recipe.fit_kwargs())
    assert history["loss"][-1] < before / 10


@pytest.mark.parametrize("name", sorted(fastcnn.models.PRESETS))
def test_presets_build_and_run(name):
    model = fastcnn.models.PRESETS[name](seed=0)
    shape = model.input_shape
    model.summary()
    out = model.predict(np.random.default_rng(0).random((3,) + shape, dtype=np.float32))
    assert out.shape[0] == 3 and np.isfinite(out).all()
    assert model.recipe.make_optimizer() is not None


def test_summary_lists_layers_shapes_and_parameters():
    text = fastcnn.models.lenet().summary()
    assert "Conv2D(8->16, 3x3)" in text and "(N, 16, 5, 5)" in text and "total parameters: 53,866" in text


def test_mismatched_layers_are_reported_with_names_and_shapes():
    model = fastcnn.Sequential([L.Conv2D(1, 4, 3), L.Flatten(), L.Dense(100, 10)], input_shape=(1, 28, 28))
    with pytest.raises(ValueError, match=r"layer 2 \(Dense\) cannot take the output of layer 1 \(Flatten\), shape \(N, 2704\)"):
        model.summary()
    with pytest.raises(ValueError, match=r"layer 0 \(Conv2D\) cannot take the output of the model input, shape \(N, 3, 28, 28\)"):
        model.predict(np.zeros((2, 3, 28, 28), np.float32))


def test_fit_rejects_bad_labels_and_inputs():
    model = fastcnn.models.lenet()
    x = np.zeros((4, 1, 28, 28), np.float32)
    with pytest.raises(ValueError, match=r"labels must be in \[0, 10\)"):
        model.fit(x, np.array([0, 1, 2, 10]), verbose=0)
    with pytest.raises(ValueError, match=r"target has 3 samples"):
        model.fit(x, np.array([0, 1, 2]), verbose=0)
    with pytest.raises(TypeError, match=r"x must be floating point .* uint8"):
        model.predict(np.zeros((4, 1, 28, 28), np.uint8))
    with pytest.raises(ValueError, match="batch_size must be a positive int"):
        model.fit(x, np.zeros(4, int), batch_size=0, verbose=0)
    with pytest.raises(ValueError, match="x is empty"):
        model.predict(x[:0])


def test_divergence_stops_with_last_good_weights():
    x, y = _synthetic_digits(256)
    targets = np.eye(10, dtype=np.float32)[y]
    model = fastcnn.Sequential([L.Flatten(), L.Dense(784, 10, rng=0)])
    with pytest.raises(fastcnn.TrainingDivergedError, match=r"loss became (nan|inf) .* Try a lower learning rate") as info:
        model.fit(x, targets, epochs=50, batch_size=32, optimizer=fastcnn.SGD(10.0), loss=fastcnn.MSELoss(), verbose=0)
    weights = model.layers[1].params["weight"]
    assert np.isfinite(weights).all()
    assert np.isfinite(fastcnn.MSELoss()(model.forward(x), targets))
    assert isinstance(info.value.history, dict)


def test_save_load_round_trip_is_bit_exact(tmp_path):
    model = _small_cnn()
    model.fit(*_synthetic_digits_small(), epochs=1, batch_size=8, verbose=0)
    path = tmp_path / "m.npz"
    model.save(path)
    loaded = fastcnn.load_model(path)
    x = np.random.default_rng(0).random((5, 1, 8, 8), dtype=np.float32)
    np.testing.assert_array_equal(loaded.predict(x), model.predict(x))
    assert loaded.summary() == model.summary()
    assert list(tmp_path.iterdir()) == [path]  # no temporary file left behind


def _synthetic_digits_small():
    rng = np.random.default_rng(0)
    return rng.random((32, 1, 8, 8), dtype=np.float32), rng.integers(0, 3, 32)


def test_float64_models_save_and_load(tmp_path):
    model = _small_cnn().astype(np.float64)
    model.save(tmp_path / "m.npz")
    assert fastcnn.load_model(tmp_path / "m.npz").dtype == np.float64


def test_corrupt_foreign_and_future_files_are_refused(tmp_path):
    model = _small_cnn()
    good = tmp_path / "good.npz"
    model.save(good)
    data = bytearray(good.read_bytes())

    truncated = tmp_path / "truncated.npz"
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="not a readable fastcnn model file"):
        fastcnn.load_model(truncated)

    # Flip a byte inside a weight array: the zip CRC or our SHA-256 must catch it.
    flipped = tmp_path / "flipped.npz"
    with zipfile.ZipFile(good) as zf:
        members = {n: zf.read(n) for n in zf.namelist()}
    name = next(n for n in members if n.startswith("w/0.weight"))
    raw = bytearray(members[name])
    raw[-1] ^= 0xFF
    members[name] = bytes(raw)
    with zipfile.ZipFile(flipped, "w") as zf:
        for n, b in members.items():
            zf.writestr(n, b)
    with pytest.raises(ValueError, match=r"damaged: array '0.weight' fails its SHA-256 check"):
        fastcnn.load_model(flipped)

    foreign = tmp_path / "foreign.npz"
    np.savez(foreign, a=np.zeros(3))
    with pytest.raises(ValueError, match="not a fastcnn model file"):
        fastcnn.load_model(foreign)

    pickled = tmp_path / "pickled.npz"
    np.savez(pickled, __fastcnn__=np.array([{"format": "fastcnn.model"}], dtype=object))
    with pytest.raises(ValueError, match="has dtype object; .*never objects"):
        fastcnn.load_model(pickled)

    import json
    future = tmp_path / "future.npz"
    with zipfile.ZipFile(good) as zf:
        members = {n: zf.read(n) for n in zf.namelist()}
    with np.load(good) as d:
        header = json.loads(str(d["__fastcnn__"][()]))
        arrays = {k: d[k] for k in d.files if k != "__fastcnn__"}
    header["format_version"] = 99
    np.savez(future, __fastcnn__=np.array(json.dumps(header)), **arrays)
    with pytest.raises(ValueError, match="format version 99; this fastcnn reads versions up to 1"):
        fastcnn.load_model(future)


def test_state_dict_names_match_pytorch_sequential():
    names = list(fastcnn.models.lenet().state_dict())
    assert names == ["0.weight", "0.bias", "3.weight", "3.bias", "7.weight", "7.bias", "9.weight", "9.bias"]
    bn = fastcnn.Sequential([L.Conv2D(1, 2, 3), L.BatchNorm2D(2)])
    assert list(bn.state_dict()) == ["0.weight", "0.bias", "1.weight", "1.bias", "1.running_mean", "1.running_var",
                                     "1.num_batches_tracked"]
    with pytest.raises(ValueError, match=r"0.weight: shape \(2, 1, 3, 3\) in the state dict, \(8, 1, 3, 3\) in the model"):
        fastcnn.models.lenet().load_state_dict({**fastcnn.models.lenet().state_dict(), "0.weight": np.zeros((2, 1, 3, 3))})


def test_weights_move_to_and_from_pytorch():
    torch = pytest.importorskip("torch")
    model = fastcnn.models.lenet(seed=0)
    net = torch.nn.Sequential(
        torch.nn.Conv2d(1, 8, 3), torch.nn.ReLU(), torch.nn.MaxPool2d(2), torch.nn.Conv2d(8, 16, 3), torch.nn.ReLU(),
        torch.nn.MaxPool2d(2), torch.nn.Flatten(), torch.nn.Linear(400, 128), torch.nn.ReLU(), torch.nn.Linear(128, 10))
    net.load_state_dict({k: torch.from_numpy(v) for k, v in model.state_dict().items()})
    x = np.random.default_rng(0).random((4, 1, 28, 28), dtype=np.float32)
    np.testing.assert_allclose(net(torch.from_numpy(x)).detach().numpy(), model.predict(x), rtol=1e-4, atol=1e-5)
    model.load_state_dict(net.state_dict())


def test_fit_refuses_nan_or_infinite_inputs_and_targets():
    """Found by the fuzzer: NaN images used to surface as a misleading 'lower the learning rate'."""
    model = fastcnn.models.tiny_cnn(seed=0)
    x = np.zeros((4, 1, 28, 28), np.float32)
    x[2, 0, 5, 7] = np.nan
    with pytest.raises(ValueError, match=r"x holds NaN or infinity \(first at index \(2, 0, 5, 7\)\)"):
        model.fit(x, np.zeros(4, np.int64), verbose=0)
    toy = fastcnn.models.toy_conv(seed=0)
    tx, ty = fastcnn.models.toy_data()
    ty[1, 0] = np.inf
    with pytest.raises(ValueError, match=r"y holds NaN or infinity \(first at index \(1, 0\)\)"):
        toy.fit(tx, ty, loss=fastcnn.MSELoss(), verbose=0)
