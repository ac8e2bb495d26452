"""Fusing models trained elsewhere: ``fusion-cluster fuse`` on sine nets from a plain PyTorch loop.

    python -m bench.foreign                         # 300 foreign [1-100-1] nets, 100 held-out tasks, seed 21
    python -m bench.foreign --models 900 --seed 22 --fusion gp_refit,gp

The nets are what a user brings: ``torch.nn.Sequential(Linear(1, 100), ReLU(), Linear(100, 1))`` with PyTorch's
default init, each trained alone by ``torch.optim.Adam`` on its own 100 points of y = a·sin(x + b) (x ~ U[-10, 10],
the sine-domains task family) for its own number of steps (1,000–3,000) and learning rate (3e-3–1e-2), from its
own seed — not this project's pretraining. They are written as ``<party_id>.pt`` state dicts with a descriptors
CSV, and fused by the CLI (``fusion-cluster fuse``, run as a subprocess like a user would) for 100 new tasks,
once per strategy (``default`` = the command's own defaults). Each warm start and the nearest foreign model (by
descriptor) are scored by nRMSE on 200 points in [-5, 5]. Prints one JSON line per strategy and a table.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from scenarios import build, make_options

SCENARIO = build("sine-domains", make_options("sine-domains", {}))
PROBED = {"default", "gp_refit", "mfpl_refit"}  # strategies given the probe (the others refuse one)


def task(rng: np.random.Generator) -> np.ndarray:
    return SCENARIO.descriptor(rng).astype(np.float64)  # (amplitude, phase) of the sine-domains family


def train_foreign(desc: np.ndarray, seed: int) -> dict[str, torch.Tensor]:
    """One net trained the plain way: its own seed, steps, learning rate, data."""
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    net = torch.nn.Sequential(torch.nn.Linear(1, 100), torch.nn.ReLU(), torch.nn.Linear(100, 1))
    x = torch.as_tensor(rng.uniform(-10, 10, (100, 1)), dtype=torch.float32)
    y = desc[0] * torch.sin(x + desc[1])
    opt = torch.optim.Adam(net.parameters(), lr=float(rng.uniform(3e-3, 1e-2)))
    for _ in range(int(rng.integers(1000, 3001))):
        opt.zero_grad()
        ((net(x) - y) ** 2).mean().backward()
        opt.step()
    return net.state_dict()


def nrmse(state: dict, desc: np.ndarray) -> float:
    net = torch.nn.Sequential(torch.nn.Linear(1, 100), torch.nn.ReLU(), torch.nn.Linear(100, 1))
    net.load_state_dict(state)
    x = torch.linspace(-5, 5, 200)[:, None]
    with torch.no_grad():
        err = net(x)[:, 0] - desc[0] * torch.sin(x[:, 0] + desc[1])
    return float(err.pow(2).mean().sqrt() / desc[0])


def write_table(path: Path, ids: np.ndarray, desc: np.ndarray) -> None:
    rows = ["party_id,amplitude,phase"] + [f"{i},{float(d[0])!r},{float(d[1])!r}" for i, d in zip(ids, desc)]
    path.write_text("\n".join(rows) + "\n")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", type=int, default=300)
    p.add_argument("--targets", type=int, default=100)
    p.add_argument("--seed", type=int, default=21)
    p.add_argument("--fusion", default="default", help="comma list of strategies; default = fuse's own default")
    args = p.parse_args()
    rng = np.random.default_rng(args.seed)
    train_desc = np.stack([task(rng) for _ in range(args.models)])
    target_desc = np.stack([task(rng) for _ in range(args.targets)])
    cli = str(Path(sys.executable).with_name("fusion-cluster"))
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        (work / "models").mkdir()
        start = time.perf_counter()
        states = {}
        for i, d in enumerate(train_desc):
            states[i] = train_foreign(d, seed=args.seed * 100_000 + i)
            torch.save(states[i], work / "models" / f"{i}.pt")
        print(f"trained {args.models} foreign nets in {time.perf_counter() - start:.0f}s", file=sys.stderr)
        write_table(work / "descriptors.csv", np.arange(args.models), train_desc)
        target_ids = np.arange(args.models, args.models + args.targets)
        write_table(work / "targets.csv", target_ids, target_desc)
        np.save(work / "probe.npy", SCENARIO.probe_inputs())
        scale = train_desc.std(0)
        nearest = [int(np.argmin((((train_desc - t) / scale) ** 2).sum(1))) for t in target_desc]
        near = [nrmse(states[j], t) for j, t in zip(nearest, target_desc)]
        rows = [{"strategy": "nearest_task (copy)", "mean": float(np.mean(near)), "median": float(np.median(near))}]
        for strategy in args.fusion.split(","):
            out = work / f"out-{strategy}"
            cmd = [cli, "fuse", "--models", str(work / "models"), "--descriptors", str(work / "descriptors.csv")]
            cmd += ["--targets", str(work / "targets.csv"), "--out", str(out)]
            cmd += ["--probe", str(work / "probe.npy")] if strategy in PROBED else []
            cmd += ["--seed", str(args.seed)] + ([] if strategy == "default" else ["--fusion", strategy])
            start = time.perf_counter()
            done = subprocess.run(cmd, capture_output=True, text=True)
            wall = time.perf_counter() - start
            if done.returncode != 0:
                print(json.dumps({"strategy": strategy, "exit": done.returncode, "stderr": done.stderr[-500:]}))
                continue
            vals = [
                nrmse(torch.load(out / "warm_starts" / f"{i}.pt", weights_only=True), t)
                for i, t in zip(target_ids, target_desc)
            ]
            row = {"strategy": strategy, "mean": float(np.mean(vals)), "median": float(np.median(vals))}
            row["vs_nearest"] = row["mean"] / rows[0]["mean"] - 1
            row["wall_s"] = round(wall, 1)
            rows.append(row)
            print(json.dumps(row), flush=True)
    print(f"\n{args.models} foreign sine nets, {args.targets} new tasks, seed {args.seed}: 0-shot nRMSE\n")
    print("| warm start | mean | median | vs nearest | fuse wall (s) |\n| --- | --- | --- | --- | --- |")
    for r in rows:
        rel = f"{r['vs_nearest']:+.1%}" if "vs_nearest" in r else ""
        print(f"| {r['strategy']} | {r['mean']:.4f} | {r['median']:.4f} | {rel} | {r.get('wall_s', '')} |")


if __name__ == "__main__":
    main()
