"""The paper's Table 3 layout: cold-start MovieLens-100K users, RMSE per embedding size (20/30/40).

Needs an ml-100k folder (``--data-dir``; the data may not be redistributed, bring your own) or
``--synthetic``, which writes a synthetic folder in the same formats and sizes first. One
``fusion-cluster`` run per embedding size on one Ray instance, plus three references: the oracle (a
factorization that also sees the test users' known ratings), each test user's own ridge fit on all its
known ratings, and on its known ratings of the context items only (the information a 0-shot method has).
Prints one JSON line with every figure and writes a Markdown table to ``bench/out/paper_movielens_<data>.md``.

    python -m bench.paper_movielens --synthetic
    python -m bench.paper_movielens --data-dir ~/data/ml-100k
"""

from __future__ import annotations

import argparse
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

from bench.report import ints, publish
from cluster.config import resolve
from cluster.pipeline import run
from fusion.metamodels.gp_config import KERNELS
from scenarios import build
from scenarios.movielens import DESCRIPTORS
from scenarios.movielens_synthetic import write_synthetic_ml100k

OUT = Path(__file__).resolve().parent / "out"
ORACLE = "oracle_cf"
# reference rows: name -> what it is told
REFERENCES = {
    ORACLE: "factorization refitted with the test users' known ratings",
    "own_fit_known": "the user's ridge fit on all its known ratings",
    "own_fit_context": "the user's ridge fit on its known context-item ratings (the 0-shot information)",
}


def parse(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--data-dir", help="an ml-100k folder (u.data, u.item, u.user)")
    src.add_argument("--synthetic", action="store_true", help="write and use a synthetic ml-100k-format folder")
    p.add_argument("--dims", type=ints, default=[20, 30, 40], help="embedding sizes, comma list")
    p.add_argument("--shots", type=ints, default=[0], help="shots (the user's own ratings), comma list")
    p.add_argument("--parties", type=int, default=800, help="seen users (paper: 800)")
    p.add_argument("--test-parties", type=int, default=143, help="unseen users (paper: 143)")
    p.add_argument("--context-items", type=int, default=300)
    p.add_argument("--descriptor", default="embedding", choices=list(DESCRIPTORS))
    p.add_argument("--missing", default="zero", choices=["zero", "user_mean"])
    p.add_argument("--methods", default="fusion,nearest_task,average,cold_start")
    p.add_argument("--pretrain-steps", type=int, default=1000)
    p.add_argument("--finetune-steps", type=int, default=100)
    p.add_argument("--finetune-lr", type=float, default=0.001)  # the recipe of the docs/results.md table
    p.add_argument("--finetune-folds", type=int, default=0, help="0: no step selection; >= 2: k-fold selection")
    p.add_argument("--fusion", default="gp_refit")
    p.add_argument("--gp-kernel", default="rbf", choices=KERNELS, help="[fusion.gp] kernel")
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


def markdown(rmse: dict, methods: list[str], dims: list[int], shots: list[int], title: str) -> str:
    cols = [(d, s) for d in dims for s in shots]
    head = "| method | " + " | ".join(f"dim {d} {s}-shot" for d, s in cols) + " |"
    rule = "|" + "---|" * (1 + len(cols))
    body = [f"| {m} | " + " | ".join(f"{rmse[m][str(d)][str(s)]:.3f}" for d, s in cols) + " |" for m in methods]
    refs = [f"| {r} (reference) | " + " | ".join(f"{rmse[r][str(d)]:.3f}" for d, _ in cols) + " |" for r in REFERENCES]
    legend = [f"- {r}: {what}" for r, what in REFERENCES.items()]
    return "\n".join([f"### {title}", "", head, rule, *body, *refs, "", *legend, ""])


def main(argv: list[str]) -> int:
    args = parse(argv)
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    if args.synthetic:
        data_dir, label = str(write_synthetic_ml100k(OUT / "synthetic-ml-100k", seed=args.seed)), "synthetic"
    else:
        data_dir, label = args.data_dir, "ml-100k"
    import ray

    ray.init(address="local", include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    rmse: dict = {m: {} for m in [*methods, *REFERENCES]}
    walls = {}
    try:
        for dim in args.dims:
            scenario = {
                "name": "movielens",
                "data_dir": data_dir,
                "dim": dim,
                "context_items": args.context_items,
                "descriptor": args.descriptor,
                "missing": args.missing,
            }
            cfg = resolve(
                {
                    "scenario": scenario,
                    "parties": args.parties,
                    "test_parties": args.test_parties,
                    "shots": args.shots,
                    "seed": args.seed,
                    "methods": methods,
                    "pretrain": {"steps": args.pretrain_steps},
                    "finetune": {"steps": args.finetune_steps, "lr": args.finetune_lr, "folds": args.finetune_folds},
                    "fusion": {"strategy": args.fusion, "gp": {"kernel": args.gp_kernel}},
                    "out": str(OUT / f"runs/movielens-{label}-d{dim}-{stamp}"),
                }
            )
            clock = time.perf_counter()
            res = run(cfg, log=lambda line: print(line, file=sys.stderr))
            for row in res.summary:
                rmse[row["method"]].setdefault(str(dim), {})[str(row["shots"])] = row["mean"]
            sc = build("movielens", cfg.scenario_options)
            sc.prepare(args.seed, args.parties, args.test_parties)
            test = range(args.parties, args.parties + args.test_parties)
            rmse[ORACLE][str(dim)] = float(sc.oracle_rmse(test).mean())
            rmse["own_fit_known"][str(dim)] = float(sc.own_fit_rmse(test, context_only=False).mean())
            rmse["own_fit_context"][str(dim)] = float(sc.own_fit_rmse(test, context_only=True).mean())
            walls[str(dim)] = round(time.perf_counter() - clock, 1)
    finally:
        ray.shutdown()
    title = (
        f"MovieLens ({label}), RMSE on held-out ratings of {args.test_parties} unseen users (mean over users), "
        f"{args.parties} seen users, {args.context_items} context items, descriptor {args.descriptor}, "
        f"fusion {args.fusion} (GP kernel {args.gp_kernel}), seed {args.seed}"
    )
    text = markdown(rmse, methods, args.dims, args.shots, title)
    record = {"bench": "paper_movielens", "args": vars(args), "rmse": rmse, "wall_s": walls}
    publish(text, OUT / f"paper_movielens_{label}_{args.descriptor}.md", record)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
