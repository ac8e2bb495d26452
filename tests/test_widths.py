"""Parties of different hidden widths: embedding, the mixed-width strategies, and a run that mixes widths."""

from __future__ import annotations

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from cluster.config import ConfigError, resolve
from cluster.pipeline import run
from fusion.adapt.train_config import TrainConfig
from fusion.adapt.training import train
from fusion.layout import ModelLayout
from fusion.metamodels.gp_config import GPConfig
from fusion.models.params import forward, init_params
from fusion.models.spec import MLPSpec
from fusion.models.widths import embed, own_width
from fusion.strategies import STRATEGIES, FitContext, FusionConfig
from scenarios import build, make_options, party_widths


def _mse(pred, y):
    return ((pred - y) ** 2).mean(dim=(1, 2))


def test_an_embedded_net_computes_and_trains_like_the_narrow_one():
    narrow_spec, wide_spec = MLPSpec((1, 5, 1)), MLPSpec((1, 12, 1))
    narrow = torch.stack([init_params(narrow_spec, torch.Generator().manual_seed(s)) for s in range(3)])
    wide = torch.as_tensor(embed(narrow.numpy(), narrow_spec, 12))
    x = torch.linspace(-3, 3, 40)[None, :, None].expand(3, 40, 1)
    y = torch.sin(x) * torch.tensor([1.0, 2.0, 3.0])[:, None, None]
    torch.testing.assert_close(forward(wide, wide_spec, x), forward(narrow, narrow_spec, x))
    cfg = TrainConfig(steps=50, lr=0.01)
    trained_wide = train(wide, wide_spec, x, y, _mse, cfg).numpy()
    trained_narrow = train(narrow, narrow_spec, x, y, _mse, cfg).numpy()
    np.testing.assert_allclose(own_width(trained_wide, wide_spec, 5), trained_narrow, atol=1e-5)
    assert (own_width(trained_wide, wide_spec, 12)[:, 5:12] == 0).all()  # the padding units stayed exactly zero


def test_party_widths_cover_the_list_and_depend_on_the_party_only():
    w = party_widths(2, np.arange(300), (50, 100, 150))
    assert set(w.tolist()) == {50, 100, 150}
    np.testing.assert_array_equal(party_widths(2, np.arange(300)[::-1], (50, 100, 150)), w[::-1])


@pytest.fixture(scope="module")
def mixed_models():
    """12 sine parties of widths 4/8/12 trained briefly, embedded at width 12; descriptors (12, 2)."""
    sc = build("sine", make_options("sine", {"hidden": [12], "train_points": 30}))
    widths = np.array([4, 8, 12] * 4)
    rng = np.random.default_rng(0)
    desc = np.stack([rng.uniform(0.5, 2.0, 12), rng.uniform(0, 1, 12)], axis=1).astype(np.float32)
    x = torch.linspace(-5, 5, 30)[None, :, None].expand(12, 30, 1)
    y = torch.as_tensor(desc[:, :1, None]) * torch.sin(x + torch.as_tensor(desc[:, 1:, None]))
    models = np.zeros((12, sc.spec.n_params), np.float32)
    for w in (4, 8, 12):
        rows = np.flatnonzero(widths == w)
        spec = MLPSpec((1, w, 1))
        init = torch.stack([init_params(spec, torch.Generator().manual_seed(int(r))) for r in rows])
        models[rows] = embed(train(init, spec, x[rows], y[rows], _mse, TrainConfig(200, 0.02)).numpy(), spec, 12)
    return sc, models, desc, widths


@pytest.mark.parametrize("method", ["gp_refit", "average", "nearest_task"])
def test_mixed_width_warm_starts_have_the_asked_width(mixed_models, method):
    sc, models, desc, widths = mixed_models
    cfg = FusionConfig(refit_steps=50, gp=GPConfig(max_steps=20, inducing=8))
    layout = ModelLayout(sc.spec, widths=(4, 8, 12))
    ctx = FitContext(sc.spec, 0, config=cfg, probe=sc.probe_inputs(), layout=layout, groups=layout.width_groups(widths))
    starter = STRATEGIES[method]().fit_layout(models, desc, ctx)
    asked = np.array([4, 12, 8])
    warm = starter.predict_widths(desc[:3], asked)
    assert warm.shape == (3, sc.spec.n_params) and np.isfinite(warm).all()
    if method == "nearest_task":  # a copy of the nearest model, whatever its width
        np.testing.assert_array_equal(warm, models[:3])
        return
    for row, w in zip(warm, asked):  # [1-12-1]: w_in [0:12], bias [12:24], w_out [24:36]; units >= w are zero
        assert (row[w:12] == 0).all() and (row[12 + w : 24] == 0).all() and (row[24 + w : 36] == 0).all()
        assert (row[24 : 24 + w] != 0).any()


def test_a_run_mixing_widths_does_not_depend_on_the_sharding(ray_session, tmp_path):
    base = {
        "scenario": {"name": "sine", "train_points": 30},
        "widths": [6, 12],
        "parties": 12,
        "test_parties": 4,
        "shots": [0, 3],
        "seed": 2,
        "pretrain": {"steps": 100},
        "finetune": {"steps": 10},
        "fusion": {"gp": {"max_steps": 20, "inducing": 8}, "refit_steps": 50},
    }
    one = run(resolve({**base, "party_actors": 1, "out": str(tmp_path / "one")}), log=lambda _: None)
    two = run(resolve({**base, "party_actors": 2, "out": str(tmp_path / "two")}), log=lambda _: None)
    tables = [pq.read_table(r.out / "results.parquet") for r in (one, two)]
    values = [t["value"].to_numpy() for t in tables]
    # equal up to float32 rounding: fine-tuning batches of other sizes may sum in another order (seen: 1 value
    # of 40 differing by 6e-8); the warm starts themselves (0 shots) are identical
    np.testing.assert_allclose(*values, rtol=1e-5, atol=0)
    zero_shot = [t["value"].to_numpy()[t["shots"].to_numpy() == 0] for t in tables]
    np.testing.assert_array_equal(*zero_shot)
    assert np.isfinite(values[0]).all() and len(values[0]) == 5 * 2 * 4


@pytest.mark.parametrize(
    "tree, message",
    [
        ({"widths": [50, 50]}, "distinct hidden widths"),
        ({"widths": [0, 10]}, "distinct hidden widths"),
        ({"widths": "50,100"}, "widths must be a list"),
        ({"widths": [50, 100], "methods": ["fusion", "maml"]}, r"\['maml'\] do not support mixed widths"),
        ({"widths": [50, 100], "scenario": {"name": "sine", "hidden": [40, 40]}}, "single-hidden-layer"),
    ],
)
def test_bad_widths_are_config_errors(tree, message):
    with pytest.raises(ConfigError, match=message):
        resolve({"scenario": "sine", **tree})
