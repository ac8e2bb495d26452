"""PFLlib's own protocol on the Ray engine: its split, its CNN, its local training, its accuracy, every round.

PFLlib (TsingZ0/PFLlib) trains 20 MNIST clients of a Dirichlet(0.1) split, every client every round, each for one
local epoch of minibatches of 10 with SGD at lr 0.005, and reports after every round the accuracy of each client's
own model on its own held-out 25% (correct predictions summed over all clients / their test samples). This bench
runs the same setting (``configs/pfllib_mnist.toml``, one algorithm at a time) through ``fusion-cluster``'s pipeline:

- the split: a partition file of row indices (``--partition``; ``../shared/data/pfllib-mnist-dir0.1-20.npz`` is the
  split PFLlib's own generator draws), read by ``[scenario] partition`` (:func:`scenarios.splits.read_partition`);
- the model: ``cnn-m`` (PFLlib's FedAvgCNN: conv5x5-32, pool, conv5x5-64, pool, fc 1024-512, fc 512-10) on inputs
  scaled as PFLlib's transform does (``[scenario] inputs = "centered"``: (x/255 - 0.5)/0.5);
- the rounds: ``[federated]`` rounds R, clients_per_round 1, local_epochs 1, batch_size 10, SGD lr 0.005, and
  PFLlib's per-algorithm defaults (Ditto's mu = 0: ``lam = 0``; FedALA's eta 1, rand_percent 80, the last layer;
  Per-FedAvg's two calls of a client's ``train()`` a round: ``passes = 2``);
- the score: the participating protocol (rounds.parquet), every round (``eval_every = 1``); round 0 is the initial
  model (Per-FedAvg's: after its one step).

The last line of stdout is JSON: ``{"<algorithm>": {"accuracy": [after round 0, 1, ..., R], "s_per_round": x}}``.

    python -m bench.pfllib_protocol --data-dir ../shared/data --partition ../shared/data/pfllib-mnist-dir0.1-20.npz \\
        --algorithms fedavg,fedrep,ditto,per_fedavg,fedala --rounds 3 --seed 0
"""

from __future__ import annotations

import argparse
import json
import tempfile
import tomllib
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from cluster.config import resolve
from cluster.pipeline import run
from scenarios import build

ALGORITHMS = ("fedavg", "fedrep", "ditto", "per_fedavg", "fedala")
SETTING = Path(__file__).resolve().parent.parent / "configs" / "pfllib_mnist.toml"  # PFLlib's setting, one file


def config(args: argparse.Namespace, algorithm: str, out: Path) -> dict:
    """The run config of one algorithm in PFLlib's setting (:data:`SETTING`, the run the README names), for the
    dataset, split, clients, rounds and seed of ``args``."""
    cfg = tomllib.loads(SETTING.read_text())
    cfg.update(parties=args.clients, seed=args.seed, methods=[algorithm], out=str(out))
    cfg["scenario"].update(source=args.dataset, data_dir=args.data_dir, partition=args.partition)
    cfg["federated"]["rounds"] = args.rounds
    cfg["party_actors"] = args.party_actors
    return cfg


def accuracy_per_round(out: Path, algorithm: str) -> list[float]:
    """PFLlib's accuracy after each round: correct predictions over all clients' test samples (a client's accuracy
    weighted by its test samples, ``test_counts.json``), from rounds.parquet's participating rows."""
    cols = pq.read_table(out / "rounds.parquet").to_pydict()
    weights = json.loads((out / "test_counts.json").read_text())
    by_round: dict[int, list[float]] = {}
    for m, proto, r, pid, v in zip(cols["method"], cols["protocol"], cols["round"], cols["party_id"], cols["value"]):
        if m == algorithm and proto == "participating":
            hits = by_round.setdefault(r, [0.0, 0.0])
            hits[0] += v * weights[str(pid)]
            hits[1] += weights[str(pid)]
    return [by_round[r][0] / by_round[r][1] for r in sorted(by_round)]


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(prog="python -m bench.pfllib_protocol", description=__doc__.split("\n\n")[0])
    p.add_argument("--data-dir", required=True, help="folder with the mnist/ (or fashion-mnist/) idx files")
    p.add_argument("--dataset", default="mnist", choices=("mnist", "fashion-mnist"))
    p.add_argument("--partition", required=True, help=".npz of client<K>_train / client<K>_test row indices")
    p.add_argument("--algorithms", default=",".join(ALGORITHMS), help="comma list (default: all five)")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--clients", type=int, default=20)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--party-actors", type=int, default=0, help="party shards (default: one per CPU)")
    p.add_argument("--out", default="", help="keep each run's folder under this one (default: a temp folder)")
    args = p.parse_args(argv)
    algorithms = [a.strip() for a in args.algorithms.split(",") if a.strip()]
    unknown = sorted(set(algorithms) - set(ALGORITHMS))
    if unknown:
        p.error(f"unknown algorithm(s) {unknown}; this bench runs {', '.join(ALGORITHMS)}")
    base = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="pfllib-protocol-"))
    report = {}
    for algorithm in algorithms:
        out = base / algorithm
        cfg = resolve(config(args, algorithm, out))
        res = run(cfg)
        sc = build(cfg.scenario, cfg.scenario_options)
        sc.prepare(args.seed, args.clients, 0)
        counts = {str(i): float(w) for i, w in enumerate(sc.party_weights(args.seed, np.arange(args.clients)))}
        (out / "test_counts.json").write_text(json.dumps(counts))  # each client's test samples: PFLlib's weights
        acc = accuracy_per_round(out, algorithm)
        report[algorithm] = {"accuracy": acc, "s_per_round": res.stages.get("federated", 0.0) / args.rounds}
        secs = report[algorithm]["s_per_round"]
        print(f"{algorithm}: accuracy by round {[round(a, 4) for a in acc]}, {secs:.1f} s per round (with its scoring)")
    print(json.dumps(report))
    return report


if __name__ == "__main__":
    main()
