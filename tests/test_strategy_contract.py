"""One contract over every registered strategy, built the way a run builds it (``fusion.methods.make_strategy``):
each strategy x aligned / not (where it aligns) x regression / classification fits tiny synthetic models in
process (no Ray), predicts finite float32 warm starts of the right shape, and survives save -> load with the
same predictions. A strategy that cannot be constructed or fitted from a run's config fails here first."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fusion.io import load_warm_starter, save_warm_starter
from fusion.metamodels.gp_config import GPConfig
from fusion.metamodels.mfpl_config import MFPLConfig
from fusion.methods import make_strategy
from fusion.models.params import forward, init_params
from fusion.models.spec import MLPSpec
from fusion.strategies import STRATEGIES, FitContext, FusionConfig
from fusion.strategies.maml import MAMLConfig

TINY = FusionConfig(
    gp=GPConfig(max_steps=10, inducing=8),
    align_iters=2,
    refit_steps=20,
    settings={
        "mfpl": MFPLConfig(base_dim=2, task_dim=2, hidden=8, inducing=4, max_steps=20, window=5, alternations=1),
        "maml": MAMLConfig(meta_steps=3, meta_batch=4, support=3, query=3),
    },
)
PROBLEMS = {  # spec, what the outputs are
    "regression": (MLPSpec((1, 6, 1)), "values"),
    "classification": (MLPSpec((3, 6, 4)), "logits"),
}
CASES = [
    (name, aligned, problem)
    for name, cls in sorted(STRATEGIES.items())
    for aligned in ((True, False) if cls.alignable else (True,))
    for problem in PROBLEMS
]


def _tasks(spec: MLPSpec, outputs: str, n: int, gen: torch.Generator):
    x = torch.randn(n, 8, spec.widths[0], generator=gen)
    if outputs == "logits":
        y = torch.randint(spec.widths[-1], (n, 8, 1), generator=gen).float()

        def loss(pred, y, _d):
            return (
                torch.nn.functional.cross_entropy(pred.flatten(0, 1), y.long().flatten(), reduction="none")
                .view(len(pred), -1)
                .mean(1)
            )
    else:
        y = torch.sin(x.sum(-1, keepdim=True))

        def loss(pred, y, _d):
            return ((pred - y) ** 2).mean((1, 2))

    real = torch.ones(n, 8, dtype=torch.bool)
    return lambda: (x, y, loss, lambda s, g: init_params(s, g), real)


@pytest.mark.parametrize(("name", "aligned", "problem"), CASES, ids=lambda v: str(v))
def test_strategy_contract(name, aligned, problem, tmp_path):
    spec, outputs = PROBLEMS[problem]
    gen = torch.Generator().manual_seed(0)
    n = 6
    models = torch.stack([init_params(spec, gen) for _ in range(n)]).numpy().astype(np.float32)
    descriptors = np.random.default_rng(0).uniform(size=(n, 2))
    probe = torch.randn(10, spec.widths[0], generator=gen).numpy()
    ctx = FitContext(spec, seed=1, config=TINY, probe=probe, tasks=_tasks(spec, outputs, n, gen), outputs=outputs)

    strategy = make_strategy(name, TINY, aligned=aligned)
    fitted = strategy.fit(models, descriptors, ctx)
    targets = np.random.default_rng(1).uniform(size=(3, 2))
    warm = fitted.predict(targets)

    out_spec = getattr(fitted, "spec", spec)  # maml_40_40 carries its own architecture
    assert warm.shape == (3, out_spec.n_params) and warm.dtype == np.float32
    assert np.isfinite(warm).all()
    assert forward(torch.as_tensor(warm), out_spec, torch.as_tensor(probe)).shape == (3, 10, spec.widths[-1])
    save_warm_starter(fitted, spec, tmp_path / "model.pt")
    loaded, loaded_spec = load_warm_starter(tmp_path / "model.pt")
    assert loaded_spec == spec and type(loaded) is type(fitted)
    np.testing.assert_allclose(loaded.predict(targets), warm, rtol=1e-5, atol=1e-5)


def test_strategies_without_alignment_refuse_aligned_false():
    plain = sorted(n for n, c in STRATEGIES.items() if not c.alignable)
    assert plain
    for name in plain:
        with pytest.raises(ValueError, match="fusion_noalign"):
            make_strategy(name, TINY, aligned=False)


def test_each_strategy_gets_its_own_settings_table():
    for name, cls in STRATEGIES.items():
        strategy = make_strategy(name, TINY)
        if cls.settings_key:
            assert strategy.settings == TINY.settings[cls.settings_key]
        else:
            assert strategy.settings is None


def test_files_saved_under_class_names_still_load(tmp_path):
    """Files written before stable kinds carry the class name (``"RefitWarmStarter"``, init ``"GPWarmStarter"``)."""
    spec, _ = PROBLEMS["regression"]
    ctx = FitContext(spec, config=TINY, probe=np.linspace(-1, 1, 10, dtype=np.float32)[:, None])
    models = np.random.default_rng(2).normal(size=(5, spec.n_params)).astype(np.float32)
    fitted = make_strategy("gp_refit", TINY).fit(models, np.random.default_rng(3).uniform(size=(5, 2)), ctx)
    state = fitted.export()
    assert state["init_kind"] == "gp"
    old = {**state, "init_kind": "GPWarmStarter"}
    save_warm_starter(old, spec, tmp_path / "old.pt", kind="RefitWarmStarter")
    assert torch.load(tmp_path / "old.pt", weights_only=True)["kind"] == "RefitWarmStarter"
    loaded, _ = load_warm_starter(tmp_path / "old.pt")
    targets = np.array([[0.3, 0.7]])
    np.testing.assert_allclose(loaded.predict(targets), fitted.predict(targets), rtol=1e-5, atol=1e-5)


def test_strategy_settings_from_toml_round_trip_and_errors():
    from cluster.config import ConfigError, dumps_toml, resolve, to_dict
    from fusion.matching.pfnm import PFNMConfig

    tree = {
        "methods": ["fusion", "maml", "matched_average"],
        "fusion": {
            "align_iters": 3,
            "refit_steps": 10,
            "gp": {"inducing": 16},
            "maml": {"meta_steps": 5, "inner_lr": 0.1},
            "matched_average": {"sigma": 0.2, "normalizers": True},
        },
    }
    cfg = resolve(tree)
    assert cfg.fusion.align_iters == 3 and cfg.fusion.refit_steps == 10 and cfg.fusion.gp.inducing == 16
    assert cfg.fusion.settings["maml"] == MAMLConfig(meta_steps=5, inner_lr=0.1)
    assert make_strategy("matched_average", cfg.fusion).settings == PFNMConfig(sigma=0.2, normalizers=True)
    assert make_strategy("matched_gp", cfg.fusion).settings == PFNMConfig()  # its own table, paper defaults
    import tomllib

    assert resolve(tomllib.loads(dumps_toml(to_dict(cfg)))) == cfg  # config.toml reads back the same
    with pytest.raises(ConfigError, match="fusion.maml.meta_steps"):
        resolve({"fusion": {"maml": {"meta_steps": 0}}})
    with pytest.raises(ConfigError, match="fusion.maml.bogus"):
        resolve({"fusion": {"maml": {"bogus": 1}}})
    with pytest.raises(ConfigError, match="fusion.nosuch"):
        resolve({"fusion": {"nosuch": {"a": 1}}})
