"""Residual blocks: forward, gradients (finite differences), shapes, summaries, files, fused steps
inside, and weights exchanged with the equivalent PyTorch module."""
import numpy as np
import pytest

import fastcnn
from fastcnn import layers as L
from fastcnn.blocks import Residual

from .reference import numeric_grad

try:
    import torch
    from torch import nn
except ImportError:
    torch = None


def _model(rng=0):
    return fastcnn.Sequential([
        L.Conv2D(1, 4, 3, padding=1, rng=rng),
        Residual([L.Conv2D(4, 4, 3, padding=1, rng=rng + 1), L.BatchNorm2D(4), L.ReLU(),
                  L.Conv2D(4, 6, 3, padding=1, rng=rng + 2)],
                 shortcut=[L.Conv2D(4, 6, 1, bias=False, rng=rng + 3)]),
        L.ReLU(),
        Residual([L.Conv2D(6, 6, 3, padding=1, rng=rng + 4), L.ReLU(), L.MaxPool2D(2)],
                 shortcut=[L.AvgPool2D(2)]),
        Residual([L.LeakyReLU(0.1)]),
        L.Flatten(), L.Dense(6 * 3 * 3, 3, rng=rng + 5),
    ], input_shape=(1, 6, 6))


def test_state_dict_names_follow_pytorch_and_summary_shows_inner_layers():
    model = _model()
    names = list(model.state_dict())
    assert names[:6] == ["0.weight", "0.bias", "1.body.0.weight", "1.body.0.bias", "1.body.1.weight", "1.body.1.bias"]
    assert "1.body.1.running_mean" in names and "1.shortcut.0.weight" in names and "3.body.0.weight" in names
    assert [n for n, _, _ in model.named_parameters()] == [n for n in names if "running" not in n and "tracked" not in n]
    text = model.summary()
    for row in ("1.body.3", "1.shortcut.0", "3.shortcut.0", "4.shortcut", "identity", "(N, 6, 3, 3)"):
        assert row in text
    total = sum(p.size for _, p, _ in model.named_parameters())
    assert f"total parameters: {total:,}" in text


def test_residual_gradients_match_finite_differences():
    model = _model().astype(np.float64)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((3, 1, 6, 6))
    g = rng.standard_normal((3, 3))

    def loss():
        return float((model.forward(x, training=True) * g).sum())

    model.forward(x, training=True)
    gx = model.backward(g)
    grads = {name: grad.copy() for name, _, grad in model.named_parameters()}
    np.testing.assert_allclose(gx, numeric_grad(loss, x), rtol=1e-5, atol=1e-7)
    for name, p, _ in model.named_parameters():
        np.testing.assert_allclose(grads[name], numeric_grad(loss, p), rtol=1e-5, atol=1e-7, err_msg=name)
    model.forward(x, training=True)
    model.backward(g, input_grad=False)  # training's path: the first step fills its grads only
    for name, _, grad in model.named_parameters():
        np.testing.assert_allclose(grad, grads[name], rtol=1e-12, atol=1e-14, err_msg=name)


def test_a_residual_first_gets_its_gradients_in_training():
    block = Residual([L.Conv2D(1, 2, 3, padding=1, rng=0)], shortcut=[L.Conv2D(1, 2, 1, rng=1)])
    model = fastcnn.Sequential([block, L.Flatten(), L.Dense(2 * 16, 2, rng=2)], input_shape=(1, 4, 4)).astype(np.float64)
    x = np.random.default_rng(1).standard_normal((2, 1, 4, 4))
    g = np.ones((2, 2))
    model.forward(x, training=True)
    model.backward(g, input_grad=False)
    expected = {name: grad.copy() for name, _, grad in model.named_parameters()}
    model.forward(x, training=True)
    model.backward(g)
    for name, _, grad in model.named_parameters():
        np.testing.assert_allclose(expected[name], grad, err_msg=name)
        assert np.abs(grad).sum() > 0, name


def test_fused_steps_run_inside_the_body():
    block = Residual([L.Conv2D(2, 3, 3, rng=0), L.ReLU(), L.MaxPool2D(2)], shortcut=[L.Conv2D(2, 3, 3, stride=2, rng=1)])
    assert [type(step).__name__ for step in block.body.steps()] == ["ConvMaxPool"]
    x = np.random.default_rng(2).standard_normal((2, 2, 8, 8)).astype(np.float32)
    expected = L.MaxPool2D(2).forward(L.ReLU().forward(block.body.layers[0].forward(x))) + block.shortcut.forward(x)
    np.testing.assert_allclose(block.forward(x), expected, rtol=1e-6, atol=1e-6)


def test_shape_mismatch_names_both_shapes():
    body, short = [L.Conv2D(2, 3, 3, rng=0)], [L.Conv2D(2, 3, 1, rng=0)]
    with pytest.raises(ValueError, match=r"\(N, 3, 4, 4\).*\(N, 3, 6, 6\)"):
        Residual(body, short, input_shape=(2, 6, 6))
    block = Residual(body, short)  # no input_shape: found at the first forward
    with pytest.raises(ValueError, match=r"\(1, 3, 4, 4\).*\(1, 3, 6, 6\)"):
        block.forward(np.zeros((1, 2, 6, 6), np.float32))
    with pytest.raises(ValueError, match="layer 0 \\(Residual\\)"):
        fastcnn.Sequential([block], input_shape=(2, 6, 6)).summary()
    for bad in (L.ReLU(), 3, [L.ReLU(), "relu"], None):
        with pytest.raises(TypeError, match="body"):
            Residual(bad)


def test_save_and_load_round_trip(tmp_path):
    model = _model()
    x = np.random.default_rng(3).standard_normal((4, 1, 6, 6)).astype(np.float32)
    model.fit(x, np.arange(4) % 3, epochs=1, batch_size=2, verbose=0)
    model.save(tmp_path / "res.npz")
    loaded = fastcnn.load_model(tmp_path / "res.npz")
    assert loaded.get_config() == model.get_config()
    assert loaded.summary() == model.summary()
    np.testing.assert_array_equal(loaded.predict(x), model.predict(x))
    for name, value in model.state_dict().items():
        np.testing.assert_array_equal(loaded.state_dict()[name], value, err_msg=name)


def test_fit_seeds_the_dropout_inside_a_block():
    def trained(seed, dropout_rng):
        model = fastcnn.Sequential([L.Flatten(), L.Dense(8, 8, rng=0),
                                    Residual([L.Dropout(0.5, rng=dropout_rng), L.Dense(8, 8, rng=1)]),
                                    L.Dense(8, 2, rng=2)], input_shape=(8,))
        x = np.random.default_rng(5).standard_normal((16, 8)).astype(np.float32)
        model.fit(x, np.arange(16) % 2, epochs=2, batch_size=4, verbose=0, seed=seed)
        return model.state_dict()["2.body.1.weight"]

    np.testing.assert_array_equal(trained(7, dropout_rng=1), trained(7, dropout_rng=2))  # fit's seed decides
    assert not np.array_equal(trained(7, dropout_rng=1), trained(8, dropout_rng=1))


def test_empty_batches():
    block = Residual([L.SiLU(), L.MaxPool2D(3, stride=1, padding=1)], shortcut=[L.LeakyReLU(0.2)])
    x = np.zeros((0, 2, 5, 5), np.float32)  # (conv2d's own N = 0 cases belong to the empty-batch work)
    assert block.forward(x, training=True).shape == x.shape
    assert block.backward(x).shape == x.shape


@pytest.mark.skipif(torch is None, reason="needs torch")
def test_weights_exchange_with_the_equivalent_torch_module():
    class TorchResidual(nn.Module):
        def __init__(self, body, shortcut=None):
            super().__init__()
            self.body = nn.Sequential(*body)
            self.shortcut = nn.Sequential(*shortcut) if shortcut else nn.Identity()

        def forward(self, x):
            return self.body(x) + self.shortcut(x)

    net = nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1),
        TorchResidual([nn.Conv2d(4, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 6, 3, padding=1)],
                      [nn.Conv2d(4, 6, 1, bias=False)]),
        nn.ReLU(),
        TorchResidual([nn.Conv2d(6, 6, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2)], [nn.AvgPool2d(2)]),
        TorchResidual([nn.LeakyReLU(0.1)]),
        nn.Flatten(), nn.Linear(6 * 3 * 3, 3),
    ).double()
    model = _model(rng=7).astype(np.float64)
    assert sorted(net.state_dict()) == sorted(model.state_dict())
    model.load_state_dict(net.state_dict())
    x = np.random.default_rng(4).standard_normal((5, 1, 6, 6))
    xt = torch.from_numpy(x).requires_grad_()
    out = net(xt)
    out.backward(torch.ones_like(out))
    np.testing.assert_allclose(model.forward(x, training=True), out.detach().numpy(), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(model.backward(np.ones((5, 3))), xt.grad.numpy(), rtol=1e-10, atol=1e-12)
    torch_grads = dict(net.named_parameters())
    for name, _, grad in model.named_parameters():
        np.testing.assert_allclose(grad, torch_grads[name].grad.numpy(), rtol=1e-9, atol=1e-12, err_msg=name)
    for name, value in model.state_dict().items():  # the running statistics moved alike
        np.testing.assert_allclose(value, net.state_dict()[name].numpy(), rtol=1e-10, atol=1e-12, err_msg=name)
    net.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in model.state_dict().items()})
