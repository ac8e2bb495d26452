"""Runs whose parties mix architecture families (``[scenario] archs`` with several entries)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from actors.party_shard import PartyShard
from cluster.config import ConfigError, resolve
from cluster.pipeline import run
from fusion.adapt.train_config import FinetuneConfig, TrainConfig
from fusion.metamodels.gp_config import GPConfig
from fusion.methods import strategy_for
from fusion.models.params import init_params
from fusion.models.spec import spec_for_family
from fusion.strategies import FitContext, FusionConfig
from fusion.strategies.by_family import ByFamily
from fusion.strategies.gp import GPFusion
from scenarios import build, make_options, model_layout, party_families

ARCHS = ["mlp-8", "mlp-16"]


def _scenario(archs=ARCHS, n_train=12, n_test=4, seed=2, **opts):
    sc = build("digits-split", make_options("digits-split", {"archs": archs, "split": "pathological", **opts}))
    sc.prepare(seed, n_train, n_test)
    return sc


def _ctx(sc, ids, seed=2, **over):
    layout = model_layout(sc)
    cfg = FusionConfig(gp=GPConfig(max_steps=10, inducing=4), align_iters=2, refit_steps=3)
    return FitContext(
        sc.spec, seed, config=cfg, probe=sc.probe_inputs()[:32], outputs="logits", layout=layout,
        groups=layout.groups(seed, ids), **over,
    )  # fmt: skip


def test_each_party_draws_its_family_from_seed_and_id():
    ids = np.arange(40)
    fam = party_families(5, ids, 2)
    assert set(fam) == {0, 1} and (party_families(5, ids[::-1], 2) == fam[::-1]).all()  # order does not matter
    layout = model_layout(_scenario())
    assert layout.families and layout.spec == spec_for_family("mlp-16", 64, 10)  # packed rows: the largest family
    groups = layout.groups(2, ids)
    assert sorted(np.concatenate([r for r, _ in groups]).tolist()) == ids.tolist()
    assert [s.family for _, s in groups] == ARCHS
    assert layout.target_families == tuple(s for _, s in groups)  # novel parties receive their own family
    targets = model_layout(_scenario(target_arch="mlp-8")).target_groups(2, ids)
    assert targets[0][1] == spec_for_family("mlp-8", 64, 10) and len(targets) == 1


def test_mixed_strategies_fit_each_target_family():
    """nearest_task copies the nearest model of the party's family, average averages that family's models,
    gp_refit gives warm starts of every family; gp (no mixed support) is refused."""
    sc = _scenario()
    ids = np.arange(12)
    rng = np.random.default_rng(0)
    ctx = _ctx(sc, ids)
    models = ctx.layout.stack(2, ids, lambda rows, spec: rng.normal(size=(len(rows), spec.n_params)))
    desc = rng.dirichlet(np.ones(10), size=12).astype(np.float32)
    cfg = ctx.config
    near = strategy_for("nearest_task", cfg).fit_layout(models, desc, ctx)
    avg = strategy_for("average", cfg).fit_layout(models, desc, ctx)
    for rows, spec in ctx.groups:
        own = ctx.layout.unpack(models[rows], spec)
        got = near.for_family(spec).predict(desc[rows[:1]])
        assert got.shape == (1, spec.n_params) and np.allclose(got[0], own[0])
        assert np.allclose(avg.for_family(spec).predict(desc[:1])[0], own.mean(0), atol=1e-6)
    fused = strategy_for("fusion", cfg).fit_layout(models, desc, ctx)
    restored = ByFamily.restore(fused.export())
    for spec in ctx.layout.target_families:
        out = restored.for_family(spec).predict(desc[:2])
        assert out.shape == (2, spec.n_params) and np.isfinite(out).all()
    with pytest.raises(ValueError, match="strategy gp cannot fuse parties of mixed architecture families"):
        strategy_for("gp", cfg).fit_layout(models, desc, ctx)


def test_gp_refit_init_is_the_target_familys_parameter_gp_or_its_plain_init():
    """With no refit steps the warm start is the init: the GP over that family's own models, or (a target family
    no training party has) the family's plain init from the run seed."""
    sc = _scenario(target_arch="mlp-8")
    ids = np.arange(12)
    rng = np.random.default_rng(1)
    ctx = _ctx(sc, ids)
    models = ctx.layout.stack(2, ids, lambda rows, spec: rng.normal(size=(len(rows), spec.n_params)))
    desc = rng.dirichlet(np.ones(10), size=12).astype(np.float32)
    ctx.config = FusionConfig(gp=GPConfig(max_steps=10, inducing=4), align_iters=2, refit_steps=0)
    spec8 = spec_for_family("mlp-8", 64, 10)
    fused = strategy_for("fusion", ctx.config).fit_layout(models, desc, ctx).for_family(spec8)
    rows = [r for r, s in ctx.groups if s == spec8][0]
    alone = GPFusion().fit(ctx.layout.unpack(models[rows], spec8), desc[rows], ctx.family_context(spec8))
    assert np.allclose(fused.predict(desc[:3]), alone.predict(desc[:3]), atol=1e-5)
    ctx.groups = tuple((r, s) for r, s in ctx.groups if s != spec8)  # no mlp-8 party at all
    fused = strategy_for("fusion", ctx.config).fit_layout(models, desc, ctx).for_family(spec8)
    plain = init_params(spec8, torch.Generator().manual_seed(2)).numpy()
    assert np.allclose(fused.predict(desc[:1])[0], plain)


def test_pretraining_does_not_depend_on_the_sharding():
    sc = _scenario(n_train=8, n_test=2)
    cfg = TrainConfig(steps=3)
    whole = PartyShard(0, sc, 2, range(8), [], cfg, FinetuneConfig()).pretrain()
    a = PartyShard(0, sc, 2, [0, 3, 5], [], cfg, FinetuneConfig()).pretrain()
    b = PartyShard(1, sc, 2, [1, 2, 4, 6, 7], [], cfg, FinetuneConfig()).pretrain()
    split = np.zeros_like(whole["params"])
    for part in (a, b):
        split[part["party_id"]] = part["params"]
    assert np.array_equal(whole["params"], split)
    fam = party_families(2, np.arange(8), 2)
    small = spec_for_family("mlp-8", 64, 10).n_params
    assert not whole["params"][fam == 0, small:].any() and whole["params"][fam == 1, small:].any()


def test_methods_that_cannot_mix_families_are_refused_by_name():
    base = {"scenario": {"name": "digits-split", "archs": ["mlp-100", "cnn-s"]}}
    assert resolve({**base, "methods": ["fusion", "nearest_task", "average", "cold_start"]})
    for method in ("matched_average", "fedavg"):
        with pytest.raises(ConfigError, match=f"^method {method} cannot handle parties of mixed architecture"):
            resolve({**base, "methods": ["fusion", method]})
    with pytest.raises(ConfigError, match="cannot make warm starts of scenario.target_arch = 'mlp-8'"):
        resolve({"scenario": {**base["scenario"], "target_arch": "mlp-8"}, "methods": ["nearest_task"]})


def test_a_run_of_mixed_families_fuses_and_evaluates_every_family(ray_session, tmp_path):
    cfg = resolve(
        {
            "scenario": {"name": "digits-split", "archs": ["mlp-16", "cnn-s"], "split": "pathological"},
            "parties": 10,
            "test_parties": 4,
            "shots": [0, 3],
            "seed": 3,
            "methods": ["fusion", "nearest_task", "average", "cold_start"],
            "pretrain": {"steps": 20},
            "finetune": {"steps": 4, "every": 2},
            "fusion": {"gp": {"max_steps": 10, "inducing": 4}, "align_iters": 2, "refit_steps": 5},
            "out": str(tmp_path / "run"),
        }
    )
    res = run(cfg, log=lambda _: None)
    means = {(r["method"], r["shots"]): r["mean"] for r in res.summary}
    assert len(means) == 8 and all(0.0 <= v <= 1.0 for v in means.values())
    sc = build("digits-split", cfg.scenario_options)
    bytes_of = {s.family: 4 * s.n_params for s in sc.families}
    train_fams = party_families(3, np.arange(10), 2)
    test_fams = party_families(3, np.arange(10, 14), 2)
    up = sum(bytes_of[sc.families[f].family] for f in train_fams)
    down = sum(bytes_of[sc.families[f].family] for f in test_fams)
    assert res.costs["fusion"]["upload_bytes"] == up and res.costs["nearest_task"]["download_bytes"] == down
