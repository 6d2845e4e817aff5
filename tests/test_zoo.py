"""The model zoo's networks build, and their PyTorch twins compute the same thing (bench/zoo.py)."""
import numpy as np
import pytest

import fastcnn
from bench import zoo


@pytest.mark.parametrize("name", list(zoo.ZOO))
def test_zoo_net_builds_with_its_input_shape(name):
    model = zoo.build(name)
    assert model.output_shapes()[-1] == (10,)
    x, _ = zoo.data(name, 2)
    assert model.predict(x).shape == (2, 10)


@pytest.mark.parametrize("name", list(zoo.ZOO))
def test_torch_twin_matches_in_training_and_inference(name):
    torch = pytest.importorskip("torch")
    from bench import torch_peer

    model = zoo.build(name)
    x, y = zoo.data(name, 4)
    net = torch_peer.mirror(model)
    tx = torch.from_numpy(x)
    out = model.forward(x, training=True)
    tout = net.train()(tx)
    np.testing.assert_allclose(out, tout.detach().numpy(), rtol=1e-3, atol=1e-4)
    loss = fastcnn.CrossEntropyLoss()
    loss(out, y)
    model.backward(loss.backward())
    torch.nn.functional.cross_entropy(tout, torch.from_numpy(y)).backward()
    ours = {name: grad for name, _, grad in model.named_parameters()}
    for key, param in net.named_parameters():
        np.testing.assert_allclose(ours[key], param.grad.numpy(), rtol=1e-3, atol=1e-4, err_msg=key)
    state = model.state_dict()  # running statistics after the training step
    for key, buf in net.state_dict().items():
        np.testing.assert_allclose(state[key], buf.numpy(), rtol=1e-4, atol=1e-6, err_msg=key)
    with torch.no_grad():
        np.testing.assert_allclose(model.predict(x), net.eval()(tx).numpy(), rtol=1e-3, atol=1e-4)
