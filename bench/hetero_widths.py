"""Warm starts for parties of different widths (50/100/150): PFNM matching + GP versus the baselines, in process.

The algorithmic half of issue 5's "a run mixing widths 50/100/150 fuses and its warm starts beat ``average`` and
``nearest_task`` at 0 shots", without Ray (the pipeline integration is separate). Training parties cycle through
``--widths``; every party's data and init come from (seed, party id) like in a run; parties of one width are
pretrained as one batched program (``fusion.adapt.training.train``). Test parties also cycle through the widths and
ask for a warm start at their own width. Methods, all at 0 shots, metric = sine nRMSE on 200 points:

- ``gp_refit``: what ``fusion-cluster run`` with ``widths = [...]`` does (the ``gp_refit`` strategy with
  ``FitContext.widths``, models embedded at the widest width): the PFNM + GP init cut to the party's width, refit
  to the output-space GP's prediction on the probe inputs (``fusion/strategies/mixed_widths.py``);
- ``pfnm_gp``: ``fusion.matching.pfnm.match_models`` -> ``expand`` (one canonical order at the global width) -> the GP
  meta-model (``fusion.metamodels.gp.GPMetaModel``) -> ``to_width(target width, importance=popularity)``;
- ``pfnm_gp_global``: diagnostic: the same GP mean at the global width, not cut to the party's width;
- ``matched_average``: the PFNM matched average cut to the target width;
- ``average``: plain parameter average of the training models that have the target width (the only plain
  average defined across widths);
- ``nearest_task``: the pretrained model with the closest descriptor, at whatever width it has;
- ``gp_same_width`` (reference, not a heterogeneous method): the foundation's ``gp`` strategy (template
  alignment + GP) fitted on the training models of the test party's width only.

    python -m bench.hetero_widths            # 200 + 50 parties, 2000 steps (the run defaults)
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np
import torch

from fusion.adapt import TrainConfig, train
from fusion.layout import ModelLayout
from fusion.matching import align
from fusion.matching.pfnm import PFNMConfig, expand, match_models, matched_average, to_width
from fusion.metamodels.gp import GPMetaModel
from fusion.metamodels.gp_config import GPConfig
from fusion.models.params import forward, init_params
from fusion.models.spec import MLPSpec
from fusion.models.widths import embed
from fusion.strategies import STRATEGIES, FitContext, FusionConfig
from scenarios import Stream, build, make_options, party_rng, party_torch_generator


def scenario_for(name: str, width: int):
    return build(name, make_options(name, {"hidden": (width,)}))


def pretrain(name: str, ids: np.ndarray, widths: np.ndarray, seed: int, steps: int):
    """Models (list of flat arrays), specs and descriptors (n, 2) of the parties ``ids``."""
    models: list[np.ndarray] = [None] * len(ids)  # type: ignore[list-item]
    specs: list[MLPSpec] = [None] * len(ids)  # type: ignore[list-item]
    desc = np.zeros((len(ids), 2), np.float32)
    for width in np.unique(widths):
        sc = scenario_for(name, int(width))
        rows = np.flatnonzero(widths == width)
        d = np.stack([sc.descriptor(party_rng(seed, ids[r], Stream.DESCRIPTOR)) for r in rows]).astype(np.float32)
        data = [sc.train_data(dd, party_rng(seed, ids[r], Stream.DATA)) for r, dd in zip(rows, d)]
        x = torch.as_tensor(np.stack([a for a, _ in data]))
        y = torch.as_tensor(np.stack([b for _, b in data]))
        init = torch.stack([init_params(sc.spec, party_torch_generator(seed, ids[r], Stream.INIT)) for r in rows])
        d_t = torch.as_tensor(d)
        params = train(
            init, sc.spec, x, y, lambda p, t, sc=sc, d_t=d_t: sc.loss(p, t, d_t), TrainConfig(steps=steps)
        ).numpy()
        for k, r in enumerate(rows):
            models[r], specs[r], desc[r] = params[k], sc.spec, d[k]
    return models, specs, desc


def evaluate(name: str, model: np.ndarray, spec: MLPSpec, desc: np.ndarray, seed: int, pid: int) -> float:
    sc = scenario_for(name, spec.widths[1])
    x, y = sc.eval_data(desc, party_rng(seed, pid, Stream.EVAL))
    with torch.no_grad():
        pred = forward(torch.as_tensor(model[None]), spec, torch.as_tensor(x))
        return float(sc.metric(pred, torch.as_tensor(y[None]), torch.as_tensor(desc[None]))[0])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--scenario", default="sine-domains")
    p.add_argument("--parties", type=int, default=200)
    p.add_argument("--test-parties", type=int, default=50)
    p.add_argument("--widths", default="50,100,150")
    p.add_argument("--steps", type=int, default=2000)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--sigma", type=float, default=1.0)
    p.add_argument("--sigma0", type=float, default=1.0)
    p.add_argument("--gamma", type=float, default=1.0)
    p.add_argument("--sweeps", type=int, default=5)
    p.add_argument("--empirical-bayes", action="store_true")
    p.add_argument("--normalizers", action="store_true")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--refit-points", type=int, default=400, help="function-space refit when cutting (0: off)")
    p.add_argument("--refit-steps", type=int, default=1000, help="Adam steps of gp_refit's function-space refit")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    widths = [int(w) for w in args.widths.split(",")]
    n, m = args.parties, args.test_parties
    train_ids, test_ids = np.arange(n), np.arange(n, n + m)
    train_w = np.array([widths[i % len(widths)] for i in range(n)])
    test_w = np.array([widths[i % len(widths)] for i in range(m)])
    stages = {}

    clock = time.perf_counter()
    models, specs, desc = pretrain(args.scenario, train_ids, train_w, args.seed, args.steps)
    stages["pretrain_s"] = time.perf_counter() - clock
    sc0 = scenario_for(args.scenario, widths[0])
    test_desc = np.stack([sc0.descriptor(party_rng(args.seed, i, Stream.DESCRIPTOR)) for i in test_ids])
    test_desc = test_desc.astype(np.float32)

    clock = time.perf_counter()
    cfg = PFNMConfig(
        sigma=args.sigma,
        sigma0=args.sigma0,
        gamma=args.gamma,
        sweeps=args.sweeps,
        empirical_bayes=args.empirical_bayes,
        normalizers=args.normalizers,
        seed=args.seed,
    )
    matching = match_models(models, specs, cfg)
    stack = expand(models, specs, matching)
    stages["match_s"] = time.perf_counter() - clock
    clock = time.perf_counter()
    meta = GPMetaModel.fit(stack, desc, GPConfig(), seed=args.seed)
    predicted = meta.predict(test_desc)
    stages["gp_s"] = time.perf_counter() - clock
    fused = matched_average(models, specs, matching)[None]
    g = matching.global_spec

    clock = time.perf_counter()
    same_width = {}
    for w in widths:
        rows = [j for j in range(n) if train_w[j] == w]
        spec_w = MLPSpec((1, w, 1))
        aligned = align(np.stack([models[j] for j in rows]), spec_w).aligned
        same_width[w] = GPMetaModel.fit(aligned, desc[rows], GPConfig(), seed=args.seed)
    stages["gp_same_width_s"] = time.perf_counter() - clock
    clock = time.perf_counter()
    wide = MLPSpec((1, max(widths), 1))
    embedded = np.stack([embed(mod[None], s, max(widths))[0] for mod, s in zip(models, specs)])
    fcfg = FusionConfig(pfnm=cfg, refit_steps=args.refit_steps)
    layout = ModelLayout(wide, widths=tuple(widths))
    groups = layout.width_groups(np.asarray(train_w))
    ctx = FitContext(wide, args.seed, config=fcfg, probe=sc0.probe_inputs(), layout=layout, groups=groups)
    ctx.cache["pfnm"] = (models, specs, matching)  # the same matching (the strategy would compute it again)
    refit_warm = STRATEGIES["gp_refit"]().fit_layout(embedded, desc, ctx).predict_widths(test_desc, test_w)
    stages["gp_refit_s"] = time.perf_counter() - clock
    scores: dict[str, list[float]] = {
        "gp_refit": [],
        "pfnm_gp": [],
        "pfnm_gp_global": [],
        "matched_average": [],
        "average": [],
        "nearest_task": [],
        "gp_same_width": [],
    }
    scale = desc.std(0)
    refit_x = None
    if args.refit_points:
        r = scenario_for(args.scenario, widths[0]).options.train_range
        refit_x = np.linspace(-r, r, args.refit_points)[:, None]
    for k, (pid, d, w) in enumerate(zip(test_ids, test_desc, test_w)):
        spec_w = MLPSpec((1, int(w), 1))
        warm = to_width(predicted[k : k + 1], g, int(w), importance=matching.popularity, refit_x=refit_x)[0]
        scores["gp_refit"].append(evaluate(args.scenario, refit_warm[k], wide, d, args.seed, pid))
        scores["pfnm_gp"].append(evaluate(args.scenario, warm, spec_w, d, args.seed, pid))
        scores["pfnm_gp_global"].append(evaluate(args.scenario, predicted[k], g, d, args.seed, pid))
        avg = to_width(fused, g, int(w), importance=matching.popularity, refit_x=refit_x)[0]
        scores["matched_average"].append(evaluate(args.scenario, avg, spec_w, d, args.seed, pid))
        same = [j for j in range(n) if train_w[j] == w]
        plain = np.mean([models[j] for j in same], axis=0)
        scores["average"].append(evaluate(args.scenario, plain, spec_w, d, args.seed, pid))
        near = int(np.argmin((((desc - d) / scale) ** 2).sum(1)))
        scores["nearest_task"].append(evaluate(args.scenario, models[near], specs[near], d, args.seed, pid))
        ref = same_width[int(w)].predict(d[None])[0]
        scores["gp_same_width"].append(evaluate(args.scenario, ref, spec_w, d, args.seed, pid))

    print(
        f"{n} training parties of widths {widths} ({args.steps} steps), {m} test parties; PFNM: {matching.n_atoms} "
        f"global atoms; popularity max {matching.popularity.max()}, median {int(np.median(matching.popularity))}"
    )
    print(f"{'method':<16} {'0-shot nRMSE mean':>18} {'std':>8}")
    for method, vals in scores.items():
        print(f"{method:<16} {np.mean(vals):>18.4f} {np.std(vals):>8.4f}")
    line = {
        "parties": n,
        "test_parties": m,
        "widths": widths,
        "atoms": matching.n_atoms,
        "pfnm": {k: getattr(cfg, k) for k in ("sigma", "sigma0", "gamma", "sweeps", "empirical_bayes", "normalizers")},
        **{k: round(v, 2) for k, v in stages.items()},
        **{f"{k}_nrmse": round(float(np.mean(v)), 4) for k, v in scores.items()},
    }
    print(json.dumps(line))
    return 0


if __name__ == "__main__":
    sys.exit(main())
