import numpy as np
import pytest
import torch

from fusion.models import params
from fusion.models.params import flatten, forward, init_params, layers, loss_and_grad, permute, unit_features
from fusion.models.spec import MLPSpec
from tests.builders import random_stack


def test_spec_parse_and_sizes():
    spec = MLPSpec.parse("1-100-1")
    assert spec.widths == (1, 100, 1) and spec.n_params == 301 and spec.hidden == (100,)
    assert str(spec) == "1-100-1"
    with pytest.raises(ValueError, match="1-100-1"):
        MLPSpec.parse("1-x-1")
    with pytest.raises(ValueError):
        MLPSpec((1,))


def test_flat_layout_matches_torch_sequential():
    spec = MLPSpec((3, 5, 4, 2))
    net = torch.nn.Sequential(
        torch.nn.Linear(3, 5), torch.nn.ReLU(), torch.nn.Linear(5, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2)
    )
    flat = torch.cat([p.detach().reshape(-1) for p in net.state_dict().values()])[None]
    assert list(net.state_dict()) == spec.state_dict_keys()
    x = torch.randn(7, 3)
    assert torch.allclose(forward(flat, spec, x)[0], net(x), atol=1e-6)
    assert torch.equal(flatten(layers(flat, spec)), flat)


def _mse(pred, y):
    return ((pred - y) ** 2).mean(dim=(1, 2))


def _cross_entropy(pred, y):
    return torch.nn.functional.cross_entropy(pred.flatten(0, 1), y.flatten(), reduction="none").view(y.shape).mean(1)


@pytest.mark.parametrize(
    "widths, activation, shared_inputs, loss",
    [
        ((1, 30, 1), "relu", False, _mse),  # the one-input and one-output fast paths
        ((1, 30, 1), "relu", True, _mse),  # inputs shared by all models (probe points)
        ((6, 20, 4), "relu", False, _cross_entropy),
        ((3, 7, 9, 1), "tanh", False, _mse),
        ((2, 5, 1, 4), "relu", True, _mse),  # a one-unit hidden layer
    ],
)
def test_hand_written_backward_equals_autograd(widths, activation, shared_inputs, loss):
    spec, g = MLPSpec(widths, activation), torch.Generator().manual_seed(0)
    flat = torch.randn(5, spec.n_params, generator=g)
    x = torch.randn(11, widths[0], generator=g) if shared_inputs else torch.randn(5, 11, widths[0], generator=g)
    if loss is _cross_entropy:
        y = torch.randint(0, widths[-1], (5, 11), generator=g)
    else:
        y = torch.randn(5, 11, widths[-1], generator=g)
    leaf = flat.clone().requires_grad_(True)
    expected = loss(forward(leaf, spec, x), y)
    expected.sum().backward()
    work: dict = {}
    for _ in range(2):  # the second call reuses the buffers of the first
        losses, grad = loss_and_grad(flat, spec, x, y, loss, work)
        torch.testing.assert_close(losses, expected.detach())
        torch.testing.assert_close(grad, leaf.grad, rtol=1e-5, atol=1e-6)


def test_one_input_path_equals_the_layered_path_with_flat_units_and_repeated_points():
    spec, g = MLPSpec((1, 40, 1)), torch.Generator().manual_seed(1)
    flat = torch.randn(6, spec.n_params, generator=g)
    w1, b1 = layers(flat, spec)[0]
    w1[0, :10, 0] = 0.0  # flat units: on everywhere (b1 > 0) or nowhere
    w1[1, :10, 0] = -0.0
    b1[1, :5] = 0.0
    x = torch.randn(6, 25, 1, generator=g)
    x[:, 10:] = x[:, :15]  # repeated points, as padding (x = 0) makes them
    y = torch.randn(6, 25, 1, generator=g)
    fast = params._one_input_relu(flat, spec, x, y, _mse, {})
    layered = params._layered_loss_and_grad(flat, spec, x, y, _mse, {})
    torch.testing.assert_close(fast[0], layered[0])
    torch.testing.assert_close(fast[1], layered[1], rtol=1e-5, atol=1e-6)


def test_training_on_the_one_input_path_ends_at_autograds_functions(monkeypatch):
    from fusion.adapt.train_config import TrainConfig
    from fusion.adapt.training import relative_mse, train
    from fusion.models import kernels

    monkeypatch.setattr(kernels, "available", lambda: False)  # the torch passes (the kernels: test_kernels.py)
    spec, g = MLPSpec((1, 50, 1)), torch.Generator().manual_seed(2)
    start = torch.stack([init_params(spec, g) for _ in range(8)])
    x = torch.rand(8, 80, 1, generator=g) * 20 - 10  # >= ONE_INPUT_MIN_POINTS
    y = torch.rand(8, 1, 1, generator=g) * 4 * torch.sin(x + torch.rand(8, 1, 1, generator=g) * 3)
    cfg = TrainConfig(steps=300, lr=0.01)
    fast = train(start, spec, x, y, relative_mse, cfg)
    w = start.clone().requires_grad_(True)  # the reference: autograd through forward(), torch.optim
    opt = torch.optim.Adam([w], lr=cfg.lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, cfg.steps, eta_min=cfg.lr / 10)
    for _ in range(cfg.steps):
        opt.zero_grad()
        relative_mse(forward(w, spec, x), y).sum().backward()
        opt.step()
        sched.step()
    grid = torch.linspace(-10, 10, 201).unsqueeze(1)
    diff = (forward(fast, spec, grid) - forward(w.detach(), spec, grid)).pow(2).mean((1, 2)).sqrt()
    rel = diff / y.abs().amax((1, 2))
    # float order only: most parties end within 1e-5; a party whose trajectory is sensitive drifts further (the
    # layer-by-layer pass drifts from autograd just as far on the same parties, ~5e-4 here)
    assert rel.median() < 1e-5 and rel.max() < 1e-2


@pytest.mark.parametrize("widths", [(1, 8, 1), (3, 6, 5, 2)])
def test_permuting_hidden_units_keeps_the_function(widths):
    spec = MLPSpec(widths)
    flat = random_stack(spec, 4)
    rng = np.random.default_rng(0)
    perms = [np.stack([rng.permutation(h) for _ in range(4)]) for h in spec.hidden]
    moved = permute(flat, spec, perms)
    assert not np.allclose(moved, flat)
    x = torch.randn(10, widths[0])
    assert torch.allclose(forward(torch.tensor(moved), spec, x), forward(torch.tensor(flat), spec, x), atol=1e-5)


def test_unit_features_are_incoming_bias_outgoing():
    spec = MLPSpec((2, 3, 4))
    flat = random_stack(spec, 1)
    (w1, b1), (w2, _) = layers(torch.tensor(flat), spec)
    units = unit_features(flat, spec, 0)
    assert units.shape == (1, 3, 2 + 1 + 4)
    np.testing.assert_allclose(units[0, 1], np.concatenate([w1[0, 1], b1[0, 1:2], w2[0, :, 1]]))
