"""What a run's evaluation costs, in one process: the novel parties' (``fusion.evaluate.evaluate``: warm starts, k-shot
fine-tuning, scores) and the participating protocol of the one-shot methods (``fusion.evaluate.participating``: each
training party's warm start at its own descriptor, scored on its own held-out rows), on a finished run's fitted warm
starters, with the run's own parties, shots and recipe.

    fusion-cluster run configs/mnist80.toml --data-dir ../shared/data --out runs/mnist80
    python -m bench.evaluation runs/mnist80 --novel 6 --training 16 --save /tmp/scores.npz

Prints the CPU seconds of each part (one thread, as a party shard runs) and the mean metric per (method, shots) as
JSON lines. ``--save``: every score (method, shots, party id, value) to an ``.npz``; ``--compare`` another such
file (the same command on other code): which scores differ.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from bench.finished import load_run
from fusion import evaluate
from fusion.federated import ALGORITHMS
from fusion.methods import is_federated
from scenarios import model_layout

COLUMNS = ("method", "shots", "party_id", "value")


def fitted_starters(run) -> dict:
    """Every method's warm starter: the one-shot methods' from the checkpoint, the rounds methods' from their saved
    server states (as the run's evaluation got them)."""
    cfg, sc = run.cfg, run.scenario
    fitted = run.checkpoint.load_fitted([m for m in cfg.methods if not is_federated(m)]) or {}
    for m in cfg.methods:
        if is_federated(m):
            algo = ALGORITHMS[m](cfg.federated, cfg.federated.settings_of(m))
            saved = run.checkpoint.load_federated(algo.training_key(), cfg.federated.rounds)
            if saved is not None:
                fitted[m] = algo.novel(saved["server"], sc.target_spec)
    return fitted


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run", help="a finished run folder (config.toml, checkpoint/)")
    p.add_argument("--novel", type=int, default=6, help="the first N novel parties (0: none)")
    p.add_argument("--training", type=int, default=16, help="the first N training parties, participating (0: none)")
    p.add_argument("--save", default="", help="write every score to this .npz")
    p.add_argument("--compare", default="", help="an .npz of --save: print which scores differ")
    args = p.parse_args()
    torch.set_num_threads(1)
    run = load_run(Path(args.run))
    cfg, sc = run.cfg, run.scenario
    fitted, layout = fitted_starters(run), model_layout(sc)
    methods = [m for m in cfg.methods if m in fitted or m == "cold_start"]
    parts = {}
    if args.novel:
        cpu = time.process_time()
        ids = run.ids[: args.novel]
        parts["novel"] = evaluate.evaluate(sc, layout, cfg.seed, fitted, methods, list(cfg.shots), ids, cfg.finetune)
        print(json.dumps({"part": "novel", "parties": len(ids), "cpu_s": round(time.process_time() - cpu, 1)}))
    if args.training:
        cpu = time.process_time()
        one_shot = [m for m in methods if not is_federated(m)]
        ids = np.arange(args.training)
        parts["participating"] = evaluate.participating(sc, layout, cfg.seed, fitted, one_shot, ids)
        print(json.dumps({"part": "participating", "parties": len(ids), "cpu_s": round(time.process_time() - cpu, 1)}))
    cols = {f"{part}_{c}": np.asarray(getattr(s, c)) for part, s in parts.items() for c in COLUMNS}
    for part in parts:
        method, shots, value = (cols[f"{part}_{c}"] for c in ("method", "shots", "value"))
        for m, k in sorted({(m, int(k)) for m, k in zip(method, shots)}):
            rows = (method == m) & (shots == k)
            print(json.dumps({"part": part, "method": m, "shots": k, "mean": round(float(np.nanmean(value[rows])), 4)}))
    if args.save:
        np.savez(args.save, **cols)
    if args.compare:
        other = np.load(args.compare)
        for key in [k for k in cols if k.endswith("_value")]:
            part, mine, theirs = key[: -len("_value")], cols[key], other[key]
            same = (mine == theirs) | (np.isnan(mine) & np.isnan(theirs))
            print(json.dumps({"part": part, "scores": len(mine), "equal": int(same.sum())}))
            for i in np.flatnonzero(~same):
                m, k, party = (cols[f"{part}_{c}"][i] for c in ("method", "shots", "party_id"))
                print(
                    json.dumps(
                        {
                            "part": part,
                            "method": str(m),
                            "shots": int(k),
                            "party_id": int(party),
                            "value": float(mine[i]),
                            "compared": float(theirs[i]),
                        }
                    )
                )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
