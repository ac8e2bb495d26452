"""The residual-GP k-shot recipe (fusion.adapt.residual): pure, no Ray."""

from __future__ import annotations

import torch

from fusion.adapt.constraint import Constraint
from fusion.adapt.finetuning import finetune
from fusion.adapt.residual import conditioned, refit_readout, residual_gp
from fusion.adapt.train_config import FinetuneConfig, TrainConfig
from fusion.adapt.training import train
from fusion.models.params import forward, init_params, layers
from fusion.models.spec import MLPSpec

SPEC = MLPSpec((1, 64, 1))
PROBE = torch.linspace(-3, 3, 128)[:, None]


def _mse(pred, y, descriptors):
    return ((pred - y) ** 2).mean(dim=(1, 2))


def _fitted(n: int, seed: int = 0):
    """``n`` nets trained to a·sin(x) on [-3, 3] (a per party): good but imperfect warm starts."""
    g = torch.Generator().manual_seed(seed)
    params = torch.stack([init_params(SPEC, g) for _ in range(n)])
    amp = torch.rand(n, 1, 1, generator=g) + 0.5
    grid = PROBE.expand(n, -1, -1)
    loss = lambda p, t: _mse(p, t, None)  # noqa: E731
    return train(params, SPEC, grid, amp * torch.sin(grid), loss, TrainConfig(steps=300, lr=0.01)), amp


def test_the_readout_refit_solves_least_squares_and_leaves_the_body():
    params, amp = _fitted(3)
    x = PROBE.expand(3, -1, -1)
    t = amp * torch.cos(x)
    tuned = refit_readout(params, SPEC, x, t)
    body = SPEC.offsets[-1][0]
    torch.testing.assert_close(tuned[:, :body], params[:, :body])  # the body as it was
    h = torch.relu(x @ layers(params, SPEC)[0][0].transpose(1, 2) + layers(params, SPEC)[0][1][:, None])
    phi = torch.cat([h, torch.ones_like(h[..., :1])], -1).double()
    best = torch.linalg.lstsq(phi, t.double()).solution
    ls_err = ((phi @ best - t.double()) ** 2).mean()
    ours = ((forward(tuned, SPEC, x).double() - t.double()) ** 2).mean()
    assert ours <= ls_err * 1.01 + 1e-9  # the least-squares optimum up to its tiny ridge


def test_exact_shots_of_a_smooth_error_are_corrected_and_the_start_improves():
    params, amp = _fitted(4, seed=1)
    g = torch.Generator().manual_seed(2)
    x = torch.rand(4, 20, 1, generator=g) * 6 - 3
    truth = lambda z: amp * torch.sin(z) + 0.3 * amp * torch.cos(0.7 * z)  # noqa: E731  (a smooth shift of the task)
    tuned = residual_gp(params, SPEC, x, truth(x), PROBE)
    grid = PROBE.expand(4, -1, -1)
    before = ((forward(params, SPEC, grid) - truth(grid)) ** 2).mean(dim=(1, 2))
    after = ((forward(tuned, SPEC, grid) - truth(grid)) ** 2).mean(dim=(1, 2))
    assert (after < 0.1 * before).all(), (before, after)


def test_shots_that_carry_no_structure_leave_the_start_as_it_is():
    params, amp = _fitted(3, seed=3)
    g = torch.Generator().manual_seed(4)
    x = torch.rand(3, 12, 1, generator=g) * 6 - 3
    noise = 0.05 * torch.randn(3, 12, 1, generator=g)
    y = forward(params, SPEC, x) + noise  # the start is right; the shots differ from it by white noise only
    torch.testing.assert_close(residual_gp(params, SPEC, x, y, PROBE), params)


def test_a_partys_correction_does_not_depend_on_the_batch_and_nan_shots_are_ignored():
    params, amp = _fitted(4, seed=5)
    g = torch.Generator().manual_seed(6)
    x = torch.rand(4, 10, 1, generator=g) * 6 - 3
    y = amp * torch.sin(x) + 0.2 * torch.cos(x)
    together = residual_gp(params, SPEC, x, y, PROBE)
    alone = residual_gp(params[1:2], SPEC, x[1:2], y[1:2], PROBE)
    torch.testing.assert_close(together[1:2], alone)
    padded_x, padded_y = torch.cat([x, torch.zeros(4, 3, 1)], 1), torch.cat([y, torch.full((4, 3, 1), float("nan"))], 1)
    torch.testing.assert_close(residual_gp(params, SPEC, padded_x, padded_y, PROBE), together, rtol=1e-4, atol=1e-5)


def test_the_posterior_mean_interpolates_noise_free_residuals():
    x = torch.linspace(-2, 2, 15)[None, :, None]
    r = torch.sin(1.5 * x[..., 0])
    mean = conditioned(x, r, x[0], torch.ones(1))
    torch.testing.assert_close(mean, r.float(), atol=1e-3, rtol=0)


def test_finetune_takes_the_residual_recipe_with_a_probe_unless_the_readout_is_frozen():
    params, amp = _fitted(2, seed=7)
    x = torch.rand(2, 15, 1, generator=torch.Generator().manual_seed(8)) * 6 - 3
    y = amp * torch.sin(x) + 0.3 * torch.cos(x)
    cfg = FinetuneConfig(steps=20, every=10)
    d = torch.zeros(2, 2)
    tuned = finetune(params, SPEC, x, y, _mse, d, cfg, probe=PROBE)
    torch.testing.assert_close(tuned, residual_gp(params, SPEC, x, y, PROBE))
    body = torch.ones(SPEC.n_params, dtype=torch.bool)
    body[SPEC.offsets[-1][0] :] = False  # the read-out frozen: the step recipe, which cannot move it either
    frozen = finetune(params, SPEC, x, y, _mse, d, cfg, Constraint(mask=body), probe=PROBE)
    torch.testing.assert_close(frozen[:, SPEC.offsets[-1][0] :], params[:, SPEC.offsets[-1][0] :])
