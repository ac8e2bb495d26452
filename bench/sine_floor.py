"""How close can a fusion of the pretrained sine models get? Combinations of their functions against the truth.

    fusion-cluster run lim.toml --out runs/lim-base       # sine-domains, 900 / 100 parties, shots = [0]
    python -m bench.sine_floor runs/lim-base

Loads a finished sine run's ``config.toml``, pretrained models (``checkpoint/``) and ``results.parquet`` (no Ray).
On each novel party's evaluation grid, against its true function ``a·sin(x + b)``, in nRMSE (RMSE / amplitude):

- ``own``: every training model on its own task (its pretraining error on the query range);
- ``mean of the k nearest``: the mean function of the k training models of the same phase closest in amplitude;
- ``rescaled mean of the k nearest``: the same, each model's function first scaled by a_new / a_i (the tasks'
  known structure, which no method is given: a bound on what a combination of neighbours' functions can do);
- ``best combination of the k nearest``: the least-squares combination of their functions fitted to the truth
  on the grid itself (an oracle);

beside the run's own 0-shot figures per method. Ends with one JSON line.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import torch

from bench.finished import load_run
from bench.report import ints
from fusion.models.params import forward


def parse(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run", type=Path, help="a finished sine run's folder (config.toml, checkpoint/, results.parquet)")
    p.add_argument("--neighbours", type=ints, default=[1, 5, 20, 50], help="k, comma list")
    return p.parse_args(argv)


def main(argv: list[str]) -> int:
    args = parse(argv)
    run = load_run(args.run)
    cfg, sc = run.cfg, run.scenario
    if not cfg.scenario.startswith("sine"):
        raise SystemExit(f"{args.run}: a sine run is needed, this one is {cfg.scenario}")
    parts = run.checkpoint.load_pretrained()
    models = np.concatenate([p["params"] for p in parts])
    train_desc = np.concatenate([p["descriptor"] for p in parts]).astype(np.float64)
    test_desc = run.desc.astype(np.float64)
    x = run.ex[0]  # the evaluation grid (N, 1), the same for every party; run.ey: the novel parties' true values
    truth = torch.as_tensor(np.stack([sc.truth_curve(row)[1] for row in train_desc]))

    def nrmse(funcs: np.ndarray, y: torch.Tensor, desc: np.ndarray) -> np.ndarray:
        """The scenario's metric of functions (P, N) on the grid against ``y`` (P, N, 1)."""
        return sc.metric(torch.as_tensor(funcs, dtype=y.dtype)[..., None], y, torch.as_tensor(desc)).numpy()

    with torch.no_grad():
        funcs = forward(torch.as_tensor(models), sc.spec, x.expand(len(models), *x.shape)).numpy()[..., 0]
    rows = {"own (training models, their own tasks)": nrmse(funcs, truth, train_desc)}
    new_truth = run.ey[..., 0].numpy()
    for k in args.neighbours:
        mean, rescaled, best = [], [], []
        for j, (a, b) in enumerate(test_desc):
            same = np.flatnonzero(np.isclose(train_desc[:, 1], b))
            near = same[np.argsort(np.abs(train_desc[same, 0] - a))[:k]]
            mean.append(funcs[near].mean(0))
            rescaled.append((funcs[near] * (a / train_desc[near, 0])[:, None]).mean(0))
            coef = np.linalg.lstsq(funcs[near].T, new_truth[j], rcond=None)[0]
            best.append(coef @ funcs[near])
        rows[f"mean of the {k} nearest"] = nrmse(np.stack(mean), run.ey, test_desc)
        rows[f"rescaled mean of the {k} nearest"] = nrmse(np.stack(rescaled), run.ey, test_desc)
        rows[f"best combination of the {k} nearest (oracle)"] = nrmse(np.stack(best), run.ey, test_desc)
    table = pq.read_table(args.run / "results.parquet").to_pylist()
    for method in dict.fromkeys(r["method"] for r in table):
        rows[f"run: {method}, 0 shots"] = np.array(
            [r["value"] for r in table if r["method"] == method and r["shots"] == 0]
        )
    width = max(map(len, rows))
    print(f"{'nRMSE on the novel parties (mean, median)':{width}s}  mean    median")
    for name, values in rows.items():
        print(f"{name:{width}s}  {values.mean():.4f}  {np.median(values):.4f}")
    print(
        json.dumps(
            {"bench": "sine_floor", "run": str(args.run), **{k: round(float(v.mean()), 5) for k, v in rows.items()}}
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
