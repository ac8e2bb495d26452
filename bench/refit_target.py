"""Where a classifier's fused warm start loses to the nearest model: the output GP's target or the refit toward it?

    fusion-cluster run cnn3.toml --out runs/cnn3          # digits-split, pathological, gp_refit
    python -m bench.refit_target runs/cnn3 --steps 10,25,50 --lr 0.001

Loads the run's ``config.toml``, pretrained models and ``checkpoint/fitted-<method>.pt`` (no Ray). For each novel
party, its *task ensemble* is the mean class probabilities of the training models whose descriptor has the same
support (the classes above ``--support``; on a pathological split: the parties with the same classes). Prints, per
party, the accuracy of the nearest model, of the run's refit start and of the task ensemble on the party's test
images, and how far the output GP's predicted function (the refit's target) is from the task ensemble on the probe
(KL, and the target's probability mass on the party's classes); then the sample-weighted accuracy of refits from
the nearest model toward the run's target and toward the task ensemble (the same loss and optimizer as the run's
refit) at ``--steps``. Ends with one JSON line.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from bench.finished import load_run
from bench.report import ints
from cluster.results import weighted_mean_std
from fusion.adapt.train_config import TrainConfig
from fusion.adapt.training import train
from fusion.models.params import forward
from fusion.strategies.gp_refit import kl_to_probabilities


def parse(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run", type=Path, help="a finished run's folder (config.toml, checkpoint/)")
    p.add_argument("--method", default="fusion", help="the gp_refit method whose target is examined")
    p.add_argument("--steps", type=ints, default=[10, 25, 50], help="refit steps to report, comma list")
    p.add_argument("--lr", type=float, default=0.001)
    p.add_argument("--support", type=float, default=0.05, help="a class is in a descriptor's support above this")
    p.add_argument("--threads", type=int, default=1)
    return p.parse_args(argv)


def main(argv: list[str]) -> int:
    args = parse(argv)
    torch.set_num_threads(args.threads)
    run = load_run(args.run)
    cfg, sc, ck, ids, desc, d, ex, ey = run.cfg, run.scenario, run.checkpoint, run.ids, run.desc, run.d, run.ex, run.ey
    weights = sc.party_weights(cfg.seed, ids)
    parts = ck.load_pretrained()
    pid = np.concatenate([p["party_id"] for p in parts])
    keep = ~np.isin(pid, list(ck.load_quarantine()))
    models = np.concatenate([p["params"] for p in parts])[keep]
    train_desc = np.concatenate([p["descriptor"] for p in parts])[keep]
    fitted = ck.load_fitted([args.method, "nearest_task"])
    starter = fitted[args.method]
    spec = starter.spec
    probe = torch.tensor(starter.probe)

    def accuracy(w: torch.Tensor | np.ndarray) -> torch.Tensor:
        with torch.no_grad():
            return sc.metric(forward(torch.as_tensor(w), spec, ex), ey, d)

    def weighted(a: torch.Tensor) -> float:
        return round(weighted_mean_std(a.numpy(), weights)[0], 4)

    def ensemble(rows: np.ndarray, x: torch.Tensor) -> torch.Tensor:
        """The mean class probabilities (N, C) of ``models[rows]`` on inputs ``x`` (N, in)."""
        with torch.no_grad():
            logits = forward(torch.as_tensor(models[rows]), spec, x.expand(len(rows), *x.shape))
        return torch.softmax(logits, -1).mean(0)

    support = train_desc > args.support
    same = [np.flatnonzero((support == (row > args.support)).all(1)) for row in desc]
    if any(len(s) == 0 for s in same):
        raise SystemExit("some novel party has no training party with its descriptor's support (--support?)")
    ens_acc = sc.metric(torch.log(torch.stack([ensemble(s, x) for s, x in zip(same, ex)])), ey, d)
    ens_probe = torch.stack([ensemble(s, probe) for s in same])
    near = fitted["nearest_task"].predict(desc)
    near_acc = accuracy(near)
    start, target = starter._start(desc)  # the run's refit start per party (refit_from) and its target
    start_acc = accuracy(start)
    kl = (torch.xlogy(ens_probe, ens_probe) - ens_probe * torch.log(target)).sum(-1).mean(1)
    mass = torch.stack([target[j][:, desc[j] > args.support].sum(-1).mean() for j in range(len(desc))])
    print("party  same  nearest  refit start  task ensemble  KL(ensemble || target)  target mass on its classes")
    for j, i in enumerate(ids):
        print(
            f"{i:5d}  {len(same[j]):4d}  {float(near_acc[j]):.4f}   {float(start_acc[j]):.4f}       "
            f"{float(ens_acc[j]):.4f}         "
            f"{float(kl[j]):.4f}                  {float(mass[j]):.4f}"
        )
    record = {
        "bench": "refit_target",
        "run": str(args.run),
        "nearest": weighted(near_acc),
        "refit_start": weighted(start_acc),
        "task_ensemble": weighted(ens_acc),
        "kl": [round(float(v), 4) for v in kl],
    }
    print(
        f"sample-weighted: nearest {record['nearest']}, the run's refit start {record['refit_start']}, "
        f"task ensemble {record['task_ensemble']}"
    )
    x = probe.expand(len(desc), *probe.shape)
    for name, tgt in (("run_target", target), ("task_ensemble_target", ens_probe)):
        seen: dict[int, float] = {}

        def at(step: int, w: torch.Tensor, seen: dict = seen) -> None:
            if step in args.steps:
                seen[step] = weighted(accuracy(w))

        clock = time.perf_counter()
        train(torch.as_tensor(near), spec, x, tgt, kl_to_probabilities, TrainConfig(max(args.steps), args.lr), at)
        record[name] = seen
        print(
            f"refit from the nearest model toward the {name.replace('_', ' ')} (lr {args.lr}, one cosine schedule "
            f"over {max(args.steps)} steps), accuracy at step: {seen} ({time.perf_counter() - clock:.0f} s)",
            flush=True,
        )
    print(json.dumps(record))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
