"""Novel parties: one-shot fusion against iterative personalized FL (issue 11, scope item 6).

    python -m bench.pfl_novel                                       # (a), (b), (c); seeds 1,2,3; full budget
    python -m bench.pfl_novel --protocols a --seeds 1,2,3 --out runs/pfl_novel_a.md
    python -m bench.pfl_novel --protocols b,c --budget 0.1 --seeds 1 --parties 20 --test-parties 10

Protocols (test parties never take part in training; every method in one ``cluster.pipeline.run`` per seed):
  a  sine-domains, 200 training / 50 novel parties, shots 0/10/20;
  b  MNIST digits-split Dirichlet(0.1), 160 / 40, shots 0/1/5 per class (digits-split counts k in all, so the
     runs use k = 0/10/50: shots per class x 10 digits);
  c  MNIST digits-split pathological, 2 classes per party, 160 / 40, same shots.

``--budget b`` scales the pretraining steps (2,000 -> 2,000·b) and the ``[federated]`` rounds (100 -> 100·b)
together, so one-shot and iterative methods keep equal local steps per training party (rounds · 0.2 · 100).

Per protocol it prints a Markdown table: the metric mean ± std over the test parties of every seed pooled,
per shots, and from each run's costs.csv (mean over seeds) upload MB, download MB, rounds, party steps, wall s.
One JSON line per finished run on stdout; ``--out`` gets the tables so far after every run (atomic write).
``--keep DIR`` stores each finished run's per-party values and costs as ``DIR/<protocol>-s<seed>.json``; a later
invocation with the same ``--keep`` loads the runs found there instead of running them again, so a table can pool
seeds measured in different invocations (the file records the budget and sizes; a mismatch is run again).
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from bench.report import publish
from cluster import pipeline
from cluster.config import ConfigError, resolve

METHODS = (
    "fusion",
    "nearest_task",
    "average",
    "cold_start",
    "fedavg",
    "fedavg_ft",
    "per_fedavg",
    "ditto",
    "fedrep",
    "fedala",
    "pfedhn",
)
MNIST = "../shared/data/mnist"  # relative to the repository root, where the benches run
PRETRAIN_STEPS, ROUNDS = 2000, 100  # the defaults the budget scales (docs/federated.md: equal party steps)

PROTOCOLS = {
    "a": {
        "title": "sine-domains",
        "scenario": {"name": "sine-domains"},
        "parties": 200,
        "test_parties": 50,
        "shots": [0, 10, 20],
        "per_class": 1,
    },
    "b": {
        "title": "MNIST digits-split Dirichlet(0.1)",
        "scenario": {
            "name": "digits-split",
            "split": "dirichlet",
            "alpha": 0.1,
            "min_samples": 8,  # the default 10: no Dirichlet(0.1) draw of seed 2 gives all 200 parties 10 in 100 tries
            "source": "mnist",
            "data_dir": MNIST,
        },
        "parties": 160,
        "test_parties": 40,
        "shots": [0, 1, 5],  # a party with fewer train examples than k uses all of them (digits-split pads)
        "per_class": 10,
    },
    "c": {
        "title": "MNIST digits-split pathological (2 classes per party)",
        "scenario": {
            "name": "digits-split",
            "split": "pathological",
            "classes_per_party": 2,
            "source": "mnist",
            "data_dir": MNIST,
        },
        "parties": 160,
        "test_parties": 40,
        "shots": [0, 1, 5],
        "per_class": 10,
    },
}


def budgets(budget: float) -> tuple[int, int]:
    return max(1, round(PRETRAIN_STEPS * budget)), max(1, round(ROUNDS * budget))


def tree_of(proto: dict, args, seed: int, out: Path) -> dict:
    steps, rounds = budgets(args.budget)
    return {
        "scenario": dict(proto["scenario"]),
        "parties": args.parties or proto["parties"],
        "test_parties": args.test_parties or proto["test_parties"],
        "shots": [k * proto["per_class"] for k in proto["shots"]],
        "seed": seed,
        "methods": list(args.methods.split(",")),
        "out": str(out),
        "pretrain": {"steps": steps},
        "federated": {"rounds": rounds},
        **proto.get("extra", {}),  # other tables a bench sets (bench/htfl.py)
    }


def one(key: str, args, seed: int, work: Path) -> dict:
    """One run (every method) of protocol ``key`` and ``seed``: pooled values and costs."""
    proto = PROTOCOLS[key]
    out = work / f"{key}-s{seed}"
    tree = tree_of(proto, args, seed, out)
    start = time.perf_counter()
    result = pipeline.run(
        resolve(tree), log=lambda line: print(f"  [{key} s{seed}] {line}", file=sys.stderr, flush=True)
    )
    wall = time.perf_counter() - start
    table = pq.read_table(result.out / "results.parquet").to_pydict()
    values: dict[tuple[str, int], list[float]] = {}
    for m, k, v in zip(table["method"], table["shots"], table["value"]):
        values.setdefault((m, int(k) // proto["per_class"]), []).append(float(v))
    with open(result.out / "costs.csv") as f:
        costs = {r["method"]: r for r in csv.DictReader(f)}
    row = {
        "protocol": key,
        "seed": seed,
        "wall_s": round(wall, 1),
        "stages_s": {k: round(v, 1) for k, v in result.stages.items()},
        "mean": {f"{m}@{k}": round(float(np.mean(v)), 4) for (m, k), v in values.items()},
        "costs": costs,
    }
    print(json.dumps(row), flush=True)
    return {"values": values, "costs": costs, "wall": wall, "metric": table["metric"][0] if table["metric"] else ""}


def kept_path(keep: str, key: str, seed: int) -> Path:
    return Path(keep) / f"{key}-s{seed}.json"


def save_kept(path: Path, run: dict, tree: dict) -> None:
    record = {
        "tree": {k: tree[k] for k in ("parties", "test_parties", "shots", "methods", "pretrain", "federated")},
        "values": [[m, k, v] for (m, k), v in run["values"].items()],
        **{k: run[k] for k in ("costs", "wall", "metric")},
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(record))
    tmp.replace(path)


def load_kept(path: Path, tree: dict) -> dict | None:
    """The kept run at ``path`` if it was made with the sizes, shots, methods and budget of ``tree``."""
    if not path.exists():
        return None
    record = json.loads(path.read_text())
    if any(record["tree"].get(k) != tree[k] for k in record["tree"]):
        return None
    values = {(m, int(k)): v for m, k, v in record["values"]}
    return {"values": values, **{k: record[k] for k in ("costs", "wall", "metric")}}


def fmt_bytes(b: float) -> str:
    return f"{b / 1e6:.3g}"


def table_md(key: str, runs: dict[int, dict], args, refused: dict[int, str] | None = None) -> str:
    proto = PROTOCOLS[key]
    notes = "".join(f"Seed {s} refused (exit 2 in the CLI): {msg}\n" for s, msg in (refused or {}).items())
    if not runs:
        return f"### ({key}) {PROTOCOLS[key]['title']}: no run finished\n\n{notes}"
    steps, rounds = budgets(args.budget)
    seeds = sorted(runs)
    parties = args.parties or proto["parties"]
    tests = args.test_parties or proto["test_parties"]
    metric = next(iter(runs.values()))["metric"]
    unit = " per class" if proto["per_class"] > 1 else ""
    lines = [
        f"### ({key}) {proto['title']}: {parties} training / {tests} novel parties, seeds {','.join(map(str, seeds))}, "
        f"budget {args.budget:g} (pretraining {steps} steps; {rounds} rounds · 0.2 · 100 local steps)",
        "",
        f"{metric}, mean ± std over the {tests} × {len(seeds)} pooled novel parties; shots{unit}; costs are the mean "
        "over seeds of each run's costs.csv (upload / download in MB).",
        "",
        "| method | "
        + " | ".join(f"{k}-shot" for k in proto["shots"])
        + " | upload MB | download MB | rounds | party steps | wall s |",
        "| --- | " + " | ".join("---" for _ in proto["shots"]) + " | --- | --- | --- | --- | --- |",
    ]
    for m in args.methods.split(","):
        cells = []
        for k in proto["shots"]:
            v = [x for s in seeds for x in runs[s]["values"].get((m, k), [])]
            cells.append(f"{np.mean(v):.4f} ± {np.std(v):.4f}" if v else "—")
        cs = [runs[s]["costs"][m] for s in seeds if m in runs[s]["costs"]]
        if cs:
            mean = lambda col, cs=cs: float(np.mean([float(c[col]) for c in cs]))  # noqa: E731
            cost = [
                fmt_bytes(mean("upload_bytes")),
                fmt_bytes(mean("download_bytes")),
                f"{mean('rounds'):g}",
                f"{mean('party_steps'):,.0f}",
                f"{mean('wall_s'):.1f}",
            ]
        else:
            cost = ["—"] * 5
        lines.append(f"| {m} | " + " | ".join(cells + cost) + " |")
    walls = ", ".join(f"s{s}: {runs[s]['wall']:.0f} s" for s in seeds)
    lines += ["", f"Whole run wall time per seed (driver clock): {walls}.", ""] + ([notes] if notes else [])
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--protocols", default="a,b,c")
    p.add_argument("--seeds", default="1,2,3")
    p.add_argument("--parties", type=int, default=0, help="override the protocol's training parties")
    p.add_argument("--test-parties", type=int, default=0, help="override the protocol's novel parties")
    p.add_argument("--budget", type=float, default=1.0, help="scale on pretraining steps and federated rounds")
    p.add_argument("--shots", default="", help="override the protocol's shots (per class for MNIST), e.g. 0,1")
    p.add_argument("--methods", default=",".join(METHODS))
    p.add_argument("--out", default="", help="Markdown file for the tables (rewritten after every run)")
    p.add_argument("--keep", default="", help="folder of finished runs: store each, reuse those found (see above)")
    p.add_argument(
        "--warm-starts-plot",
        action="store_true",
        help="keep warm_starts.png (off: its driver-side refit costs minutes per sine run and no metric)",
    )
    args = p.parse_args()
    if args.budget <= 0:
        p.error("--budget must be > 0")
    if args.shots:
        for proto in PROTOCOLS.values():
            proto["shots"] = [int(k) for k in args.shots.split(",")]
    keys = args.protocols.split(",")
    if unknown := [k for k in keys if k not in PROTOCOLS]:
        p.error(f"unknown protocol(s) {unknown}; choose from {sorted(PROTOCOLS)}")
    if not args.warm_starts_plot:
        pipeline.plots.plot_warm_starts = lambda *a, **k: False
    import ray

    ray.init(address="local", include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    done: dict[str, dict[int, dict]] = {}
    refused: dict[str, dict[int, str]] = {}
    text = ""
    with tempfile.TemporaryDirectory() as tmp:
        for key in keys:
            for seed in [int(s) for s in args.seeds.split(",")]:
                tree = tree_of(PROTOCOLS[key], args, seed, Path(tmp))
                kept = load_kept(kept_path(args.keep, key, seed), tree) if args.keep else None
                try:
                    done.setdefault(key, {})[seed] = kept or one(key, args, seed, Path(tmp))
                    if args.keep and not kept:
                        save_kept(kept_path(args.keep, key, seed), done[key][seed], tree)
                except ConfigError as exc:  # e.g. a Dirichlet split that cannot give every party min_samples
                    refused.setdefault(key, {})[seed] = str(exc)
                    print(json.dumps({"protocol": key, "seed": seed, "refused": str(exc)}), flush=True)
                text = "\n".join(
                    table_md(k, done.get(k, {}), args, refused.get(k, {})) for k in keys if k in done or k in refused
                )
                if args.out:
                    publish(text, Path(args.out), {"protocol": key, "seed": seed, "written": args.out})
    if not args.out:
        print(text, file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
