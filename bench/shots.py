"""Do shots help a warm start? The fine-tuning recipe's variants on a finished run's fitted warm starters.

    fusion-cluster run sine --seed 11 --methods fusion,nearest_task --shots 0 --out runs/shots-s11
    python -m bench.shots runs/shots-s11 --shots 5,10,20,40

Loads the run's ``config.toml`` and ``checkpoint/fitted-<method>.pt`` (no Ray; a rounds method whose novel parties
fine-tune freely, FedAvg+FT, from its saved server state), gives its test parties their warm starts, and
fine-tunes them on k shots with each variant of ``[finetune]`` (the residual-GP recipe,
:mod:`fusion.adapt.residual`; the step recipe and its step-selection margin, a proximal pull toward the warm start, the
learning rate; for classifiers the read-out recipe with fewer whole-model steps or folds): the same shots, test
points and code as the run's evaluation (``fusion.adapt.finetuning.finetune``). Prints one JSON line per (method,
variant) and a Markdown table of the mean metric per k, with the CPU seconds of the variant's fine-tuning over all
k. ``--variants`` picks among the built-in ones (default all).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from bench.finished import load_run
from fusion.adapt.constraint import FREE, Constraint
from fusion.adapt.finetuning import finetune
from fusion.federated import ALGORITHMS
from fusion.methods import is_federated
from fusion.models.params import forward

# name: (changes to the run's [finetune], proximal pull toward the warm start: prox/2 · ||w - w0||^2)
VARIANTS = {
    "steps": ({"recipe": "steps"}, 0.0),
    "residual_gp": ({"recipe": "residual_gp"}, 0.0),
    "readout": ({"recipe": "readout"}, 0.0),
    "readout only": ({"recipe": "readout", "steps": 0}, 0.0),  # the read-out's choice, no whole-model steps
    "readout 100 steps": ({"recipe": "readout", "steps": 100}, 0.0),
    "readout 3 folds": ({"recipe": "readout", "folds": 3}, 0.0),
    "auto": ({"recipe": "auto"}, 0.0),
    "margin 0": ({"recipe": "steps", "margin": 0.0}, 0.0),
    "margin 1": ({"recipe": "steps", "margin": 1.0}, 0.0),
    "prox 0.1": ({"recipe": "steps"}, 0.1),
    "prox 0.1 margin 0": ({"recipe": "steps", "margin": 0.0}, 0.1),
    "prox 1": ({"recipe": "steps"}, 1.0),
    "prox 10": ({"recipe": "steps"}, 10.0),
    "prox 100": ({"recipe": "steps"}, 100.0),
    "prox 10 margin 1": ({"recipe": "steps", "margin": 1.0}, 10.0),
    "prox 10 margin 0": ({"recipe": "steps", "margin": 0.0}, 10.0),
    "lr 0.003": ({"recipe": "steps", "lr": 0.003}, 0.0),
}


def _free(constraint: Constraint) -> bool:
    return constraint.mask is None and constraint.prox == 0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run", help="a finished run folder (config.toml, checkpoint/fitted-<method>.pt)")
    p.add_argument("--shots", default="5,10,20,40")
    p.add_argument("--methods", default="", help="comma list (default: every fitted method of the run)")
    p.add_argument("--variants", default="", help="comma list of names in VARIANTS (default all)")
    args = p.parse_args()
    folder = Path(args.run)
    run = load_run(folder)
    cfg, sc = run.cfg, run.scenario
    methods = args.methods.split(",") if args.methods else list(cfg.methods)
    fitted = run.checkpoint.load_fitted([m for m in methods if not is_federated(m)]) or {}
    for m in methods:
        if is_federated(m):  # a rounds method whose novel parties fine-tune freely (FedAvg+FT): its saved server
            algo = ALGORITHMS[m](cfg.federated, cfg.federated.settings_of(m))
            saved = run.checkpoint.load_federated(algo.training_key(), cfg.federated.rounds)
            starter = None if saved is None else algo.novel(saved["server"], sc.target_spec)
            if starter is None or not starter.finetune or not _free(starter.constraint_for(starter.predict(run.desc))):
                p.error(f"{m}: no saved server state, or its novel parties do not fine-tune freely")
            fitted[m] = starter
    if any(m not in fitted for m in methods):
        print(f"{folder}: no checkpoint/fitted-<method>.pt for every one of {methods}", file=sys.stderr)
        return 2
    variants = [v.strip() for v in args.variants.split(",")] if args.variants else list(VARIANTS)
    if unknown := [v for v in variants if v not in VARIANTS]:
        p.error(f"unknown variant(s) {unknown}; choose from {list(VARIANTS)}")
    shots = [int(k) for k in args.shots.split(",")]

    ids, desc, d, ex, ey = run.ids, run.desc, run.d, run.ex, run.ey
    shot_sets = [sc.party_shot_data(cfg.seed, int(i), di, max(shots)) for i, di in zip(ids, desc)]

    def score(w: torch.Tensor) -> float:
        with torch.no_grad():
            return float(sc.metric(forward(w, sc.target_spec, ex), ey, d).mean())

    rows = []
    for method in methods:
        start = torch.as_tensor(fitted[method].predict(desc))
        zero = score(start)
        for name in variants:
            changes, prox = VARIANTS[name]
            ft = dataclasses.replace(cfg.finetune, **changes)
            means, cpu = {}, time.process_time()
            for k in shots:
                n = sc.shot_examples(k)
                sx, sy = (torch.as_tensor(np.stack([s[j][:n] for s in shot_sets])) for j in (0, 1))
                pull = Constraint(prox=prox, anchor=start.clone()) if prox else FREE
                ft_k, probe = sc.shot_recipe(ft)
                means[k] = score(finetune(start, sc.target_spec, sx, sy, sc.loss, d, ft_k, pull, probe))
            row = {
                "method": method,
                "variant": name,
                "0": round(zero, 4),
                **{str(k): round(v, 4) for k, v in means.items()},
                "cpu_s": round(time.process_time() - cpu, 2),
            }
            print(json.dumps(row), flush=True)
            rows.append(row)
    print(f"\n{sc.metric_name}, mean over {len(ids)} test parties of {folder} (seed {cfg.seed})\n")
    print("| method | variant | 0 | " + " | ".join(str(k) for k in shots) + " | CPU s |")
    print("| --- | --- | --- | " + " | ".join("---" for _ in shots) + " | --- |")
    for r in rows:
        cells = " | ".join(f"{r[str(k)]:.4f}" for k in shots)
        print(f"| {r['method']} | {r['variant']} | {r['0']:.4f} | {cells} | {r['cpu_s']} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
