"""Garbage among the parties: fusion's 0-shot metric with a share of corrupt uploads, against the clean run,
and the precision / recall of the function-space quarantine.

    python -m bench.garbage                                   # sine 200/50, 10% of each kind, seed 11
    python -m bench.garbage --kinds scaled --share 0.2 --seeds 11,12

One run per (seed, kind) plus a clean run per seed, all on one embedded Ray; prints one JSON line per run and a
Markdown table. The corrupt parties are known from the same rule the shards use ((seed, party id) draws).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from cluster.config import resolve  # noqa: E402
from cluster.pipeline import run  # noqa: E402
from fusion.faults import CORRUPT_KINDS, FaultConfig, corrupt_parties  # noqa: E402


def corrupt_ids(seed: int, parties: int, share: float) -> set[int]:
    return set(np.flatnonzero(corrupt_parties(FaultConfig(corrupt_share=share), seed, np.arange(parties))).tolist())


def one(args, seed: int, kind: str | None, work: Path) -> dict:
    tree = {
        "scenario": args.scenario,
        "parties": args.parties,
        "test_parties": args.test_parties,
        "shots": [0],
        "seed": seed,
        "methods": ["fusion", "nearest_task"],
        "out": str(work / f"s{seed}-{kind or 'clean'}"),
    }
    if kind:
        tree["faults"] = {"corrupt_share": args.share, "corrupt_kind": kind}
    start = time.perf_counter()
    result = run(resolve(tree), log=lambda line: print(f"  [{seed} {kind or 'clean'}] {line}", file=sys.stderr))
    row = {
        "seed": seed,
        "kind": kind or "clean",
        "wall_s": round(time.perf_counter() - start, 1),
        **{f"{r['method']}_0shot": round(r["mean"], 4) for r in result.summary if r["shots"] == 0},
    }
    truth = corrupt_ids(seed, args.parties, args.share) if kind else set()
    flagged = set(result.quarantined)
    hit = len(truth & flagged)
    row.update(
        corrupt=len(truth),
        flagged=len(flagged),
        precision=round(hit / len(flagged), 3) if flagged else 1.0,
        recall=round(hit / len(truth), 3) if truth else 1.0,
    )
    print(json.dumps(row), flush=True)
    return row


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--scenario", default="sine")
    p.add_argument("--parties", type=int, default=200)
    p.add_argument("--test-parties", type=int, default=50)
    p.add_argument("--share", type=float, default=0.1)
    p.add_argument("--kinds", default=",".join(CORRUPT_KINDS))
    p.add_argument("--seeds", default="11")
    args = p.parse_args()
    import ray

    ray.init(address="local", include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for seed in [int(s) for s in args.seeds.split(",")]:
            for kind in [None, *args.kinds.split(",")]:
                rows.append(one(args, seed, kind, Path(tmp)))
    print(f"\n{args.scenario} {args.parties}/{args.test_parties}, corrupt share {args.share}\n")
    print("| seed | kind | fusion 0-shot | vs clean | nearest_task 0-shot | corrupt | flagged | precision | recall |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    clean = {r["seed"]: r["fusion_0shot"] for r in rows if r["kind"] == "clean"}
    for r in rows:
        rel = r["fusion_0shot"] / clean[r["seed"]] - 1
        print(
            f"| {r['seed']} | {r['kind']} | {r['fusion_0shot']:.4f} | {rel:+.1%} | {r['nearest_task_0shot']:.4f} | "
            f"{r['corrupt']} | {r['flagged']} | {r['precision']:.2f} | {r['recall']:.2f} |"
        )


if __name__ == "__main__":
    main()
