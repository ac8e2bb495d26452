"""The compiled kernels of fusion/_kernels.c against the torch passes they replace."""

import shutil

import numpy as np
import pytest
import torch

from fusion.adapt.optimizer import Optimizer
from fusion.adapt.train_config import TrainConfig
from fusion.adapt.training import relative_mse, train
from fusion.models import kernels
from fusion.models.loss import RowLoss, autograd_value_and_grad
from fusion.models.params import forward, init_params, layers, loss_and_grad
from fusion.models.spec import MLPSpec
from scenarios import build, make_options

needs_kernels = pytest.mark.skipif(not kernels.available(), reason="fusion._kernels not built (no C compiler)")


def _mse(pred, y):
    return ((pred - y) ** 2).mean(dim=(1, 2))


def test_the_kernels_are_built_where_a_compiler_is():
    if shutil.which("cc") or shutil.which("gcc"):
        assert kernels.available(), "a C compiler is here but fusion._kernels did not load: pip install -e . again"


def _stack(h: int, p: int, seed: int) -> torch.Tensor:
    spec, g = MLPSpec((1, h, 1)), torch.Generator().manual_seed(seed)
    flat = torch.stack([init_params(spec, g) for _ in range(p)]) * 3
    w1, b1 = layers(flat, spec)[0]
    w1[0, : h // 3, 0] = 0.0  # flat units: on everywhere (b1 > 0) or nowhere
    b1[0, : h // 6] = 0.0
    return flat


@needs_kernels
@pytest.mark.parametrize("hidden, points", [(1, 1), (8, 7), (30, 33), (101, 100), (100, 257)])
@pytest.mark.parametrize("shared", [False, True])
def test_kernel_loss_and_grad_equal_autograd(hidden, points, shared):
    spec, g = MLPSpec((1, hidden, 1)), torch.Generator().manual_seed(hidden + points)
    flat = _stack(hidden, 5, hidden)
    x = torch.randn(points, 1, generator=g) * 3 if shared else torch.randn(5, points, 1, generator=g) * 3
    if not shared and points > 4:
        x[:, points // 2 :] = x[:, : points - points // 2]  # repeated points, as padding (x = 0) makes them
    y = torch.randn(5, points, 1, generator=g)
    leaf = flat.clone().requires_grad_(True)
    expected = _mse(forward(leaf, spec, x), y)
    expected.sum().backward()
    work: dict = {}
    for _ in range(2):  # the second call reuses the kept inputs and buffers
        losses, grad = kernels.one_input_relu(flat, hidden, x, y, _mse, work)
        torch.testing.assert_close(losses, expected.detach(), rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(grad, leaf.grad, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(kernels.forward(flat, hidden, x), forward(flat, spec, x)[..., 0], rtol=1e-5, atol=1e-5)


@needs_kernels
def test_loss_and_grad_takes_the_kernel_for_one_input_relu_nets_and_a_model_ignores_its_batch():
    spec, g = MLPSpec((1, 40, 1)), torch.Generator().manual_seed(3)
    flat, x, y = _stack(40, 9, 3), torch.randn(9, 50, 1, generator=g), torch.randn(9, 50, 1, generator=g)
    whole = loss_and_grad(flat, spec, x, y, _mse)
    torch.testing.assert_close(whole, kernels.one_input_relu(flat, 40, x, y, _mse), rtol=0, atol=0)
    part = loss_and_grad(flat[2:5], spec, x[2:5], y[2:5], _mse)
    assert torch.equal(part[0], whole[0][2:5]) and torch.equal(part[1], whole[1][2:5])  # bit for bit


@pytest.mark.parametrize("points", [(100, 100), (40, 100)])
def test_sine_closed_form_loss_gradient_equals_autograd(points):
    sc = build("sine-domains", make_options("sine-domains", {"train_points": points}))
    rng, g = np.random.default_rng(0), torch.Generator().manual_seed(0)
    desc = torch.as_tensor(np.stack([sc.descriptor(rng) for _ in range(6)]), dtype=torch.float32)
    data = [sc.train_data(d.numpy(), rng) for d in desc]
    y = torch.as_tensor(np.stack([d[1] for d in data]))
    pred = torch.randn(y.shape, generator=g)
    loss = RowLoss(sc.loss, desc, sc.loss_grad)
    losses, grad = loss.value_and_grad(pred, y)
    ref_losses, ref_grad = autograd_value_and_grad(loss, pred, y)
    torch.testing.assert_close(losses, ref_losses)
    torch.testing.assert_close(grad, ref_grad)
    assert torch.isnan(y).any() == (points[0] < points[1])


@needs_kernels
def test_fused_adam_equals_the_torch_update():
    g = torch.Generator().manual_seed(4)
    start = torch.randn(7, 31, generator=g)
    cfg = TrainConfig(steps=50)
    fused, plain = Optimizer(cfg, start.clone(), 50), Optimizer(cfg, start.clone(), 50, fused=False)
    assert fused.fused and not plain.fused
    for _ in range(50):
        grad = torch.randn(7, 31, generator=g)
        grad[0, :5] = 0.0  # exact zeros (units off at every point)
        fused.step(grad.clone())
        plain.step(grad.clone())
    torch.testing.assert_close(fused.weights, plain.weights, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(fused.v, plain.v)


@needs_kernels
def test_training_through_the_kernels_ends_where_the_torch_passes_end(monkeypatch):
    spec, g = MLPSpec((1, 50, 1)), torch.Generator().manual_seed(2)
    start = torch.stack([init_params(spec, g) for _ in range(8)])
    x = torch.rand(8, 80, 1, generator=g) * 20 - 10
    y = torch.rand(8, 1, 1, generator=g) * 4 * torch.sin(x + torch.rand(8, 1, 1, generator=g) * 3)
    cfg = TrainConfig(steps=300, lr=0.01)
    fast = train(start, spec, x, y, relative_mse, cfg)
    monkeypatch.setattr(kernels, "available", lambda: False)
    ref = train(start, spec, x, y, relative_mse, cfg)
    grid = torch.linspace(-10, 10, 201).unsqueeze(1)
    diff = (forward(fast, spec, grid) - forward(ref, spec, grid)).pow(2).mean((1, 2)).sqrt()
    rel = diff / y.abs().amax((1, 2))
    assert rel.median() < 1e-4 and rel.max() < 1e-2  # float order only (as the torch passes against autograd)
