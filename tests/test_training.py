"""Batched training and the k-shot fine-tuning recipe (pure, no Ray)."""

from __future__ import annotations

import pytest
import torch

from fusion.adapt.finetuning import finetune
from fusion.adapt.optimizer import Optimizer
from fusion.adapt.train_config import FinetuneConfig, TrainConfig
from fusion.adapt.training import train, train_shared
from fusion.models.params import forward, init_params, loss_and_grad
from fusion.models.spec import MLPSpec

SPEC = MLPSpec((1, 16, 1))


def _mse(pred, y, descriptors):
    return ((pred - y) ** 2).mean(dim=(1, 2))


def _task(n_parties: int, n_points: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    params = torch.stack([init_params(SPEC, g) for _ in range(n_parties)])
    x = torch.rand(n_parties, n_points, 1, generator=g) * 4 - 2
    amp = torch.rand(n_parties, 1, 1, generator=g) + 0.5
    return params, x, amp * torch.sin(x), torch.zeros(n_parties, 2)


def test_a_partys_result_does_not_depend_on_the_batch():
    params, x, y, d = _task(4, 10)
    cfg = FinetuneConfig(steps=60, lr=0.01, every=20)
    together = finetune(params, SPEC, x, y, _mse, d, cfg)
    alone = finetune(params[2:3], SPEC, x[2:3], y[2:3], _mse, d[2:3], cfg)
    torch.testing.assert_close(together[2:3], alone)


@pytest.mark.parametrize("n_parties, n_points", [(6, 5), (12, 40)])
def test_a_partys_trained_model_is_bitwise_the_same_in_any_batch(n_parties, n_points):
    params, x, y, d = _task(n_parties, n_points, seed=1)
    cfg = TrainConfig(steps=150, lr=0.01)
    loss = lambda p, t: _mse(p, t, d)  # noqa: E731  (the loss of a mean over points: per party)
    together = train(params, SPEC, x, y, loss, cfg)
    for lo in range(0, n_parties, 4):  # the same parties in batches of 4, as another sharding would make them
        part = train(params[lo : lo + 4], SPEC, x[lo : lo + 4], y[lo : lo + 4], loss, cfg)
        assert torch.equal(part, together[lo : lo + 4])


@pytest.mark.parametrize("optimizer", ["adam", "sgd"])
def test_train_takes_torch_optims_steps(optimizer):
    params, x, y, d = _task(3, 20)
    cfg = TrainConfig(steps=50, lr=0.01, optimizer=optimizer)
    ours = train(params, SPEC, x, y, lambda p, t: _mse(p, t, d), cfg)
    w = params.clone().requires_grad_(True)
    opt = (torch.optim.Adam if optimizer == "adam" else torch.optim.SGD)([w], lr=cfg.lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, cfg.steps, eta_min=cfg.lr / 10)
    for _ in range(cfg.steps):
        opt.zero_grad()
        _mse(forward(w, SPEC, x), y, d).sum().backward()
        opt.step()
        sched.step()
    torch.testing.assert_close(ours, w.detach(), rtol=1e-4, atol=1e-5)


def test_without_folds_it_is_plain_training():
    params, x, y, d = _task(3, 10)
    cfg = FinetuneConfig(steps=30, lr=0.01, folds=0)
    plain = train(params, SPEC, x, y, lambda p, t: _mse(p, t, d), TrainConfig(steps=30, lr=0.01))
    torch.testing.assert_close(finetune(params, SPEC, x, y, _mse, d, cfg), plain)


def test_the_chosen_step_count_is_one_of_the_candidates():
    params, x, y, d = _task(5, 12)
    cfg = FinetuneConfig(steps=80, lr=0.01, every=20)
    seen: dict[int, torch.Tensor] = {}
    train(params, SPEC, x, y, lambda p, t: _mse(p, t, d), cfg, at_steps=lambda s, w: seen.setdefault(s, w.clone()))
    tuned = finetune(params, SPEC, x, y, _mse, d, cfg)
    for i in range(len(params)):
        assert any(torch.equal(tuned[i], seen[s][i]) for s in cfg.candidates())


def test_a_random_init_trains_and_a_perfect_warm_start_is_kept():
    params, x, y, d = _task(3, 20)
    cfg = FinetuneConfig(steps=200, lr=0.01, every=20)
    tuned = finetune(params, SPEC, x, y, _mse, d, cfg)
    before, after = _mse(forward(params, SPEC, x), y, d), _mse(forward(tuned, SPEC, x), y, d)
    assert (after < 0.5 * before).all()
    # Shots drawn from the warm start's own function: no step can lower the held-out loss below 0.
    exact = forward(tuned, SPEC, x).detach()
    kept = finetune(tuned, SPEC, x, exact, _mse, d, cfg)
    torch.testing.assert_close(kept, tuned)


def test_parties_that_take_steps_train_as_they_would_alone_beside_parties_that_keep_their_start():
    # Prepare: two random inits (they train) and a warm start whose shots are its own outputs (it keeps its start)
    params, x, y, d = _task(3, 20)
    y[1] = forward(params[1:2], SPEC, x[1:2])[0].detach()
    cfg = FinetuneConfig(steps=100, lr=0.01, every=20)
    # Execute
    together = finetune(params, SPEC, x, y, _mse, d, cfg)
    alone = [finetune(params[i : i + 1], SPEC, x[i : i + 1], y[i : i + 1], _mse, d[i : i + 1], cfg) for i in (0, 2)]
    # Assert
    assert torch.equal(together[1], params[1]) and not torch.equal(together[0], params[0])
    assert torch.equal(together[0:1], alone[0]) and torch.equal(together[2:3], alone[1])


@pytest.mark.parametrize("kwargs", [{"folds": 1}, {"folds": -1}, {"every": 0}, {"steps": -1}])
def test_bad_finetune_configs_are_refused(kwargs):
    with pytest.raises(ValueError):
        FinetuneConfig(**kwargs)


def test_choose_steps_margin_zero_is_the_lowest_mean_loss():
    from fusion.adapt.finetuning import choose_steps

    held = torch.tensor([[[1.0, 0.9, 0.95]], [[1.0, 0.7, 0.8]]], dtype=torch.float64)  # (F=2, P=1, C=3)
    assert choose_steps(held, [0, 10, 20], margin=0.0).tolist() == [10]


def test_choose_steps_keeps_the_start_unless_every_fold_clearly_prefers_an_update():
    from fusion.adapt.finetuning import choose_steps

    noisy = torch.tensor([[[1.0, 0.5]], [[1.0, 1.4]], [[1.0, 0.9]]], dtype=torch.float64)  # mean gain 0.07, noisy
    clear = torch.tensor([[[1.0, 0.50]], [[1.0, 0.52]], [[1.0, 0.49]]], dtype=torch.float64)
    assert choose_steps(noisy, [0, 20], margin=0.0).tolist() == [20]
    assert choose_steps(noisy, [0, 20], margin=2.0).tolist() == [0]
    assert choose_steps(clear, [0, 20], margin=2.0).tolist() == [20]


def test_adam_steps_equal_torch_optims_bit_for_bit_on_zero_and_tiny_gradients():
    """The denominator's clamp at the smallest normal float (zeros kept out of sqrt) changes no update."""
    grads = torch.tensor([[0.0, 1e-41, 1e-30, 1e-20, 3e-3, -0.5]]).repeat(30, 1) * torch.linspace(1, 2, 30)[:, None]
    ours = torch.ones(6)
    opt = Optimizer(TrainConfig(lr=0.01, decay=False), ours, steps=30, fused=False)  # (fused: tests/test_kernels.py)
    w = torch.ones(6, requires_grad=True)
    ref = torch.optim.Adam([w], lr=0.01)

    for g in grads:
        opt.step(g.clone())
        w.grad = g.clone()
        ref.step()

    assert torch.equal(ours, w.detach())


@pytest.mark.parametrize("optimizer", ["adam", "sgd"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_the_unfused_optimizer_takes_torch_optims_steps_bit_for_bit(optimizer, dtype):
    """What lets every training loop of fusion/ use one optimizer: at a constant lr it is torch.optim, exactly."""
    g = torch.Generator().manual_seed(5)
    start = torch.randn(4, 9, generator=g, dtype=dtype)
    grads = torch.randn(40, 4, 9, generator=g, dtype=dtype) * torch.logspace(-6, 1, 40, dtype=dtype)[:, None, None]
    ours = start.clone()
    opt = Optimizer(TrainConfig(lr=0.03, decay=False, optimizer=optimizer), ours, steps=40, fused=False)
    w = start.clone().requires_grad_(True)
    ref = (torch.optim.Adam if optimizer == "adam" else torch.optim.SGD)([w], lr=0.03)

    for grad in grads:
        opt.step(grad.clone())
        w.grad = grad.clone()
        ref.step()

    assert torch.equal(ours, w.detach())


@pytest.mark.parametrize("widths, activation", [((6, 5, 3), "relu"), ((6, 5, 4, 1), "relu"), ((6, 5, 4, 3), "tanh")])
def test_inputs_shared_by_the_stack_give_the_gradient_of_per_model_inputs(widths, activation):
    # Prepare: a stack of MLPs and one input matrix, given shared (N, in) and as every model's own copy
    spec, g = MLPSpec(widths, activation), torch.Generator().manual_seed(3)
    params = torch.stack([init_params(spec, g) for _ in range(4)])
    x, y = torch.randn(9, 6, generator=g), torch.randn(4, 9, widths[-1], generator=g)
    loss = lambda p, t: ((p - t) ** 2).mean((1, 2))  # noqa: E731
    # Execute
    shared = loss_and_grad(params, spec, x, y, loss, {})
    own = loss_and_grad(params, spec, x.expand(4, 9, 6).contiguous(), y, loss, {})
    # Assert
    torch.testing.assert_close(shared[0], own[0])
    torch.testing.assert_close(shared[1], own[1])


def test_training_on_shared_inputs_leaves_the_weights_of_unused_input_columns_as_they_are():
    # Prepare: a probe whose columns 0 and 3 are 0 at every input
    spec, g = MLPSpec((5, 8, 2)), torch.Generator().manual_seed(4)
    params = torch.stack([init_params(spec, g) for _ in range(3)])
    x = torch.randn(20, 5, generator=g)
    x[:, [0, 3]] = 0
    y = torch.randn(3, 20, 2, generator=g)
    cfg = TrainConfig(steps=50, lr=0.01)
    # Execute
    narrow = train_shared(params, spec, x, y, lambda p, t: ((p - t) ** 2).mean((1, 2)), cfg)
    whole = train(params, spec, x.expand(3, 20, 5), y, lambda p, t: ((p - t) ** 2).mean((1, 2)), cfg)
    # Assert: the unused columns' weights are the start's, and the whole net trains as the narrow one did
    first = lambda w: w[:, : 8 * 5].reshape(3, 8, 5)  # noqa: E731
    assert torch.equal(first(narrow)[:, :, [0, 3]], first(params)[:, :, [0, 3]])
    assert torch.equal(first(whole)[:, :, [0, 3]], first(params)[:, :, [0, 3]])
    torch.testing.assert_close(narrow, whole)


def test_a_partys_training_on_shared_inputs_is_bitwise_the_same_in_any_batch():
    # Prepare: five models, one probe shared by all (some columns unused), per-model targets
    spec, g = MLPSpec((20, 8, 3)), torch.Generator().manual_seed(5)
    params = torch.stack([init_params(spec, g) for _ in range(5)])
    x = torch.rand(30, 20, generator=g)
    x[:, :4] = 0
    y = torch.softmax(torch.randn(5, 30, 3, generator=g), -1)
    loss = lambda p, t: ((p - t) ** 2).mean((1, 2))  # noqa: E731
    cfg = TrainConfig(steps=40, lr=0.01)
    # Execute
    together = train_shared(params, spec, x, y, loss, cfg)
    # Assert: alone, or with other models, as another sharding of the parties would batch it
    for lo, hi in [(0, 1), (1, 3), (2, 5), (4, 5)]:
        assert torch.equal(train_shared(params[lo:hi], spec, x, y[lo:hi], loss, cfg), together[lo:hi])
