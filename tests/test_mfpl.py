"""The MFPL meta-model: ELBO, likelihood-cost assignments, config (its strategy contract is in
tests/test_strategy_contract.py)."""

import numpy as np
import pytest
import torch

from cluster.config import ConfigError, resolve
from fusion.matching.alignment import identity_perms
from fusion.metamodels.mfpl import MFPLModel, fit_elbo, fit_mfpl, reassign
from fusion.metamodels.mfpl_config import MFPLConfig
from fusion.methods import make_strategy
from fusion.models.params import forward, permute, unit_features
from fusion.models.spec import MLPSpec
from fusion.strategies import FitContext
from tests.builders import FAST, SPEC, outputs, permuted_copies, random_stack
from tests.builders import fit_context as ctx

SMALL = FAST.settings["mfpl"]


def family(spec: MLPSpec, n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Models that vary smoothly with a 1-d descriptor, all in one unit order: (n, D), descriptors (n, 1)."""
    gen = torch.Generator().manual_seed(seed)
    base, direction = random_stack(spec, 2, seed=seed)
    tau = torch.linspace(0, 1, n, dtype=torch.float64)[:, None].numpy()
    noise = 0.002 * torch.randn(n, spec.n_params, generator=gen).numpy()
    return (base + tau * direction + noise).astype(np.float32), tau


def planted(spec: MLPSpec, n: int, seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [np.stack([rng.permutation(h) for _ in range(n)]) for h in spec.hidden]


def test_elbo_increases():
    models, desc = family(SPEC, 30)
    model, x, y = MFPLModel.initialise(SMALL, models, desc, seed=0)
    history, _ = fit_elbo(model, x, y, SMALL, torch.Generator().manual_seed(0))
    assert np.mean(history[-20:]) > np.mean(history[:20]) + 1.0


def test_likelihood_costs_recover_planted_permutations_layer_by_layer():
    spec = MLPSpec((2, 6, 5, 1))
    models, desc = family(spec, 24, seed=1)
    model, x, y = MFPLModel.initialise(SMALL, models, desc, seed=0)
    fit_elbo(model, x, y, SMALL, torch.Generator().manual_seed(0))
    shuffled = permute(models, spec, planted(spec, 24, seed=2))
    moments = model.moments(desc, torch.Generator().manual_seed(1))
    perms = reassign(shuffled, spec, identity_perms(24, spec), moments)
    np.testing.assert_allclose(permute(shuffled, spec, perms), models, atol=1e-6)


def test_alternation_brings_planted_permutations_to_one_order():
    spec = MLPSpec((1, 8, 1))
    models, desc = family(spec, 20, seed=3)
    shuffled = permute(models, spec, planted(spec, 20, seed=4))
    fitted = fit_mfpl(shuffled, desc, spec, SMALL, seed=0)
    back = permute(shuffled, spec, fitted.perms)
    # one common order: the first model's slots name the family's units, the same for every model
    dist = ((unit_features(back, spec, 0)[0][:, None] - unit_features(models, spec, 0)[0][None]) ** 2).sum(-1)
    common = np.tile(dist.argmin(1), (20, 1))
    np.testing.assert_allclose(back, permute(models, spec, [common]), atol=1e-6)


def test_noalign_mfpl_does_not_recover_permuted_copies():
    base = random_stack(SPEC, 1, seed=7)
    rng = np.random.default_rng(8)
    copies, desc = permuted_copies(base, SPEC, 8, rng), rng.uniform(size=(8, 2))
    aligned = make_strategy("mfpl", FAST).fit(copies, desc, ctx()).predict(desc[:1])
    unaligned = make_strategy("mfpl", FAST, aligned=False).fit(copies, desc, ctx()).predict(desc[:1])
    truth = outputs(base)
    assert (outputs(unaligned) - truth).abs().mean() > 10 * (outputs(aligned) - truth).abs().mean()


def test_warm_start_is_the_decoder_at_the_gp_mean():
    models, desc = family(SPEC, 16, seed=5)
    fitted = make_strategy("mfpl", FAST).fit(models, desc, ctx())
    summary = fitted.summary()
    assert summary["elbo_steps"][0] >= 2 * SMALL.window and np.isfinite(summary["elbo"])
    x = torch.linspace(-2, 2, 25)[:, None]
    got = forward(torch.as_tensor(fitted.predict(desc[[3, 9]])), SPEC, x)
    want = forward(torch.as_tensor(models[[3, 9]]), SPEC, x)
    assert (got - want).abs().mean() < 0.05 * want.abs().mean()


def test_mfpl_refit_needs_probe_inputs():
    with pytest.raises(ValueError, match="probe inputs"):
        make_strategy("mfpl_refit", FAST).fit(random_stack(SPEC, 4), np.zeros((4, 2)), FitContext(SPEC, config=FAST))


def test_mfpl_config_from_toml_and_errors_name_the_key():
    cfg = resolve({"fusion": {"strategy": "mfpl", "mfpl": {"task_dim": 8, "lr": 0.005}}})
    assert cfg.fusion.settings["mfpl"] == MFPLConfig(task_dim=8, lr=0.005) and cfg.fusion.strategy == "mfpl"
    with pytest.raises(ConfigError, match="fusion.mfpl.task_dim"):
        resolve({"fusion": {"mfpl": {"task_dim": 0}}})
    with pytest.raises(ConfigError, match="fusion.mfpl.bogus"):
        resolve({"fusion": {"mfpl": {"bogus": 1}}})
