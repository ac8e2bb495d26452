"""Heterogeneous architectures: one-shot fusion against the HtFL algorithms on novel parties (issue 12, item 6).

    python -m bench.htfl                                   # seeds 1,2,3, full budget
    python -m bench.htfl --seeds 1 --budget 0.01 --pool 5000 --finetune-steps 40 --out runs/htfl.md

Protocol: MNIST ``digits-split`` Dirichlet(0.1), 100 training / 25 novel parties, each party's architecture
family drawn from (seed, party id) among ``mlp-100``, ``cnn-s``, ``cnn-m`` (novel parties receive their own
family), shots 0/1/5 per class (digits-split counts k in all: k = 0/10/50). Every method in one
``cluster.pipeline.run`` per seed: ``fusion`` (gp_refit across families), ``nearest_task`` and ``average`` (within
the novel party's family), ``cold_start``, and the HtFL algorithms ``lg_fedavg``, ``fd``, ``fedproto``,
``fedtgp``, ``fedgh`` (``[federated] feature_dim`` 0: the smallest last hidden width, 100).

``--budget b`` scales together the pretraining steps (2,000 -> 2,000·b), the federated rounds (100 -> 100·b, at
least 1; local steps stay 100, so both sides give a training party 2,000·b steps on average) and fusion's
function-space refit steps (2,000 -> 2,000·b). ``--pool N`` splits a random N of MNIST's 70,000 images instead of
all (a party's data is padded to the largest part, which every batched step pays for); ``--finetune-steps`` caps
the k-shot recipe's steps (default 300, CV every 20; lower: every steps/4).

Prints (and with ``--out`` writes after every run) the table of bench/pfl_novel.py: accuracy mean ± std over the
novel parties of all seeds pooled, per shots, and each method's costs.csv (mean over seeds). The batched-vs-loop
CNN training speed table is bench/cnn_batched.py's.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

from bench import pfl_novel
from bench.report import publish
from cluster import pipeline
from cluster.config import ConfigError

METHODS = ("fusion", "nearest_task", "average", "cold_start", "lg_fedavg", "fd", "fedproto", "fedtgp", "fedgh")
ARCHS = ["mlp-100", "cnn-s", "cnn-m"]
REFIT_STEPS = 2000


def protocol(args) -> dict:
    scenario = {
        "name": "digits-split",
        "split": "dirichlet",
        "alpha": 0.1,
        "source": "mnist",
        "data_dir": args.data_dir,
        "archs": ARCHS,
        "pool": args.pool,
    }
    every = 20 if args.finetune_steps >= 100 else max(1, args.finetune_steps // 4)
    return {
        "title": f"MNIST digits-split Dirichlet(0.1), families {' / '.join(ARCHS)}"
        + (f", a pool of {args.pool:,} images" if args.pool else ""),
        "scenario": scenario,
        "parties": 100,
        "test_parties": 25,
        "shots": [0, 1, 5],
        "per_class": 10,
        "extra": {
            "fusion": {"refit_steps": max(1, round(REFIT_STEPS * args.budget))},
            "finetune": {"steps": args.finetune_steps, "every": every},
        },
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", default="1,2,3")
    p.add_argument("--budget", type=float, default=1.0, help="scale on pretraining, refit steps and rounds")
    p.add_argument("--pool", type=int, default=0, help="split a random N of the MNIST images (0: all 70,000)")
    p.add_argument("--finetune-steps", type=int, default=300, help="the k-shot recipe's maximum steps")
    p.add_argument("--parties", type=int, default=0, help="override the 100 training parties")
    p.add_argument("--test-parties", type=int, default=0, help="override the 25 novel parties")
    p.add_argument("--methods", default=",".join(METHODS))
    p.add_argument("--data-dir", default=pfl_novel.MNIST)
    p.add_argument("--out", default="", help="Markdown file for the table (rewritten after every run)")
    args = p.parse_args()
    if args.budget <= 0 or args.finetune_steps < 0 or args.pool < 0:
        p.error("--budget must be > 0, --finetune-steps and --pool >= 0")
    pfl_novel.PROTOCOLS.clear()
    pfl_novel.PROTOCOLS["h"] = protocol(args)
    pipeline.plots.plot_warm_starts = lambda *a, **k: False  # no 1-D curves to draw here
    import ray

    ray.init(address="local", include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    done: dict[int, dict] = {}
    refused: dict[int, str] = {}
    text = ""
    with tempfile.TemporaryDirectory() as tmp:
        for seed in [int(s) for s in args.seeds.split(",")]:
            try:
                done[seed] = pfl_novel.one("h", args, seed, Path(tmp))
            except ConfigError as exc:  # e.g. a Dirichlet split that cannot give every party min_samples
                refused[seed] = str(exc)
                print(json.dumps({"seed": seed, "refused": str(exc)}), flush=True)
            text = pfl_novel.table_md("h", done, args, refused)
            if args.out:
                publish(text, Path(args.out), {"seed": seed, "written": args.out})
    if not args.out:
        print(text, file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
