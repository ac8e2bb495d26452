"""FedAvg rounds per second on PFLlib's protocol: this project's local training against PFLlib's own code.

The work is PFLlib's MNIST setting (``bench/pfllib_protocol.py``): the 20 clients of a partition file, its 4-layer
CNN (``cnn-m``), every client every round, one local epoch of minibatches of 10, SGD at lr 0.005. Both sides
train on the same machine with the same thread count (``--threads``, set before torch starts), one after another:

- ``ours``: :func:`fusion.federated.rounds.run_rounds` in this process, one shard holding all 20 clients: every
  client's local epoch (batched over the clients, :mod:`fusion.federated.local`) and the server's average. The
  data, the init and the minibatches are a ``fusion-cluster run``'s (:func:`actors.party_shard.training_parties`);
  no scoring, no Ray.
- ``pfllib``: ``system/main.py`` of a PFLlib checkout (``--pfllib DIR``) run as a subprocess in its own Python
  (``--pfllib-python``, which needs PFLlib's imports: torch, h5py, ...), with ``-eg`` past the last round so that
  only round 0 evaluates. A round's time is PFLlib's own printed "time cost" of rounds 1..R (round 0, which
  evaluates, is left out). The dataset folder it reads (``dataset/<--pfllib-dataset>/``) is written from the same
  partition file as PFLlib's generator writes one (ToTensor + Normalize(0.5, 0.5)), unless it exists.

Both print seconds per round and CPU seconds per round (this process's CPU time for ``ours``; the child's for
``pfllib``), and the last stdout line is JSON with their ratio. Machines vary hour to hour: the ratio of one run
is the figure, not either side alone.

    python -m bench.vs_pfllib --data-dir ../shared/data --partition ../shared/data/pfllib-mnist-dir0.1-20.npz \\
        --rounds 2 --threads 2 --pfllib /path/to/PFLlib --pfllib-python /path/to/venv/bin/python
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np


def ours(args: argparse.Namespace) -> dict:
    import torch

    from actors.party_shard import training_parties
    from bench.pfllib_protocol import config
    from cluster.config import resolve
    from cluster.rounds import common_init
    from fusion.federated import ALGORITHMS
    from fusion.federated.rounds import run_rounds
    from scenarios import build

    torch.set_num_threads(args.threads)
    cfg = resolve(config(args, "fedavg", Path("/nonexistent")))
    sc = build(cfg.scenario, cfg.scenario_options)
    sc.prepare(args.seed, args.clients, 0)
    parties = training_parties(sc, args.seed, np.arange(args.clients))
    algo = ALGORITHMS["fedavg"](cfg.federated)
    init = common_init(sc, args.seed)
    run_rounds(algo, sc.spec, parties, init, args.seed, rounds=1)  # warm-up: one round
    wall, cpu = time.perf_counter(), time.process_time()
    run_rounds(algo, sc.spec, parties, init, args.seed, rounds=args.rounds)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    return {"s_per_round": wall / args.rounds, "cpu_s_per_round": cpu / args.rounds}


def pfllib_dataset(args: argparse.Namespace, folder: Path) -> None:
    """PFLlib's dataset folder for the partition: ``train/<k>.npz`` and ``test/<k>.npz`` holding
    ``data = {"x": float32 (n, 1, 28, 28), "y": int64 (n,)}``, pixels as ``(x / 255 - 0.5) / 0.5``."""
    from scenarios import digit_sources

    x, y = digit_sources.pooled("mnist", args.data_dir, "centered")
    x = x.reshape(-1, 1, 28, 28)
    split = np.load(args.partition)
    tmp = folder.with_name(folder.name + ".tmp")
    for part in ("train", "test"):
        (tmp / part).mkdir(parents=True, exist_ok=True)
        for k in range(args.clients):
            rows = split[f"client{k}_{part}"]
            with open(tmp / part / f"{k}.npz", "wb") as f:
                np.savez_compressed(f, data={"x": x[rows], "y": y[rows].astype(np.int64)})
    (tmp / "config.json").write_text(json.dumps({"num_clients": args.clients, "num_classes": 10}))
    tmp.rename(folder)


def pfllib(args: argparse.Namespace) -> dict:
    root = Path(args.pfllib).resolve()
    if not (root / "system" / "main.py").is_file():
        sys.exit(f"--pfllib {root}: no system/main.py (a TsingZ0/PFLlib checkout)")
    folder = root / "dataset" / args.pfllib_dataset
    if not folder.exists():
        pfllib_dataset(args, folder)
    cmd = [args.pfllib_python, "-u", "main.py", "-data", args.pfllib_dataset, "-m", "CNN", "-algo", "FedAvg"]
    cmd += ["-gr", str(args.rounds), "-nc", str(args.clients), "-jr", "1", "-ls", "1", "-lbs", "10", "-lr", "0.005"]
    cmd += ["-dev", "cpu", "-eg", str(args.rounds + 100), "-ncl", "10", "-t", "1", "-go", "vs_pfllib"]
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads)}
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    proc = subprocess.run(cmd, cwd=root / "system", env=env, capture_output=True, text=True)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        sys.exit(f"PFLlib exited {proc.returncode}:\n{proc.stderr[-2000:]}")
    costs = [float(v) for v in re.findall(r"-+ time cost -+ ([0-9.]+)", proc.stdout)]
    rounds = costs[1 : args.rounds + 1]  # round 0 evaluates; PFLlib's main loop runs rounds 0..R
    if not rounds:
        sys.exit(f"PFLlib printed no round times past round 0:\n{proc.stdout[-2000:]}")
    cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    return {"s_per_round": sum(rounds) / len(rounds), "cpu_s_per_round": cpu / len(costs), "rounds_timed": len(rounds)}


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(prog="python -m bench.vs_pfllib", description=__doc__.split("\n\n")[0])
    p.add_argument("--data-dir", required=True, help="folder with the mnist/ idx files")
    p.add_argument("--partition", required=True, help=".npz of client<K>_train / client<K>_test row indices")
    p.add_argument("--rounds", type=int, default=2, help="timed rounds (each side also runs one untimed round)")
    p.add_argument("--clients", type=int, default=20)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="torch threads of both sides")
    p.add_argument("--pfllib", default="", help="a PFLlib checkout (its root); without it only ours runs")
    p.add_argument("--pfllib-python", default=sys.executable, help="the Python that runs PFLlib")
    p.add_argument("--pfllib-dataset", default="MNIST_vs_fc", help="its dataset folder name under dataset/")
    args = p.parse_args(argv)
    args.dataset, args.party_actors = "mnist", 1
    report = {"threads": args.threads, "ours": ours(args)}
    print(f"ours:   {report['ours']['s_per_round']:.1f} s/round, {report['ours']['cpu_s_per_round']:.1f} CPU s/round")
    if args.pfllib:
        report["pfllib"] = pfllib(args)
        r = report["pfllib"]
        print(f"PFLlib: {r['s_per_round']:.1f} s/round, {r['cpu_s_per_round']:.1f} CPU s/round")
        report["speedup"] = r["s_per_round"] / report["ours"]["s_per_round"]
        print(f"ours / PFLlib rounds per second: {report['speedup']:.2f}x")
    print(json.dumps(report))
    return report


if __name__ == "__main__":
    main()
