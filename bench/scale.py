"""Scaling: the full pipeline (pretrain, align, fit, broadcast, 0/10-shot eval) at N parties.

    python -m bench.scale --parties 100,1000          # a sweep; one JSON line per size, then a summary line

Per size it prints wall time per stage, the peak of the summed RSS of this process and all its
descendants (the driver and every process of the embedded Ray), and parties per second.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import threading
import time
from pathlib import Path

from bench.memwatch import tree_rss
from cluster.config import resolve
from cluster.pipeline import run


class PeakRSS(threading.Thread):
    """Samples the summed RSS of this process tree every 0.25 s."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.peak, self.stop = 0, threading.Event()

    def run(self) -> None:
        import os

        while not self.stop.is_set():
            self.peak = max(self.peak, tree_rss(os.getpid()))
            time.sleep(0.25)


def one(parties: int, args, work: Path) -> dict:
    cfg = resolve(
        {
            "scenario": args.scenario,
            "parties": parties,
            "test_parties": args.test_parties,
            "shots": [0, 10],
            "seed": args.seed,
            "methods": args.methods.split(","),
            "out": str(work / f"p{parties}"),
            **({"pretrain": {"steps": args.pretrain_steps}} if args.pretrain_steps else {}),
        }
    )
    watch = PeakRSS()
    watch.start()
    start = time.perf_counter()
    result = run(cfg, log=lambda line: print(f"  [{parties}] {line}", file=sys.stderr, flush=True))
    wall = time.perf_counter() - start
    watch.stop.set()
    watch.join()
    fusion0 = next(r["mean"] for r in result.summary if r["method"] == "fusion" and r["shots"] == 0)
    return {
        "parties": parties,
        "wall_s": round(wall, 1),
        "stages_s": {k: round(v, 1) for k, v in result.stages.items()},
        "peak_rss_gb": round(watch.peak / 1e9, 2),
        "parties_per_s": round((parties + args.test_parties) / wall, 1),
        "fusion_0shot": round(fusion0, 4),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--parties", default="100,1000")
    ap.add_argument("--test-parties", type=int, default=100)
    ap.add_argument("--scenario", default="sine")
    ap.add_argument("--methods", default="fusion,nearest_task")
    ap.add_argument("--pretrain-steps", type=int, default=0, help="0 = the scenario default")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    import ray

    ray.init(address="local", include_dashboard=False, logging_level="ERROR", log_to_driver=False)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for n in [int(p) for p in args.parties.split(",")]:
            rows.append(one(n, args, Path(tmp)))
            print(json.dumps(rows[-1]), flush=True)
    if len(rows) > 1:
        growth = {k: round(rows[-1]["stages_s"][k] / max(rows[0]["stages_s"][k], 1e-3), 1) for k in rows[0]["stages_s"]}
        print(json.dumps({"sweep": [r["parties"] for r in rows], "stage_growth_first_to_last": growth}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
