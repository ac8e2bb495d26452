"""Issue 12's CNN check, in one process: ``digits-split`` on MNIST with cnn-s parties, 0-shot fusion vs baselines.

The protocol of ``fusion-cluster run`` with ``[scenario] archs = ["cnn-s"]``, ``split = "pathological"``,
``classes_per_party = 2``, 40 training and 10 test parties — the same scenario, party shard and strategy code —
but without Ray: one in-process :class:`actors.party_shard.PartyShard` pretrains every training party as one
batch, the run's screening (:func:`fusion.screen.screen`) leaves out non-finite models and function-space
outliers, the strategies are fitted in process, and the same shard fine-tunes and scores the test parties. (On a
shared 2-core machine Ray's niced workers get a small share of the cores; this runs at the caller's priority.)
Prints the summary table (sample-weighted mean accuracy ± std over the test parties) and stage timings.

    python -m bench.cnn_digits_split --data-dir ../shared/data/mnist
    python -m bench.cnn_digits_split --data-dir ... --pretrain-steps 30 --refit-steps 100 --shots 0,5
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from actors.party_shard import PartyShard  # noqa: E402
from cluster import results  # noqa: E402
from fusion.adapt import FinetuneConfig, TrainConfig
from fusion.metamodels.gp_config import GPConfig
from fusion.methods import strategy_for  # noqa: E402
from fusion.screening.screen import screen
from fusion.strategies import FitContext, FusionConfig
from scenarios import build, make_options  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-dir", default="../shared/data/mnist")
    ap.add_argument("--source", default="mnist", choices=["mnist", "sklearn"])
    ap.add_argument("--arch", default="cnn-s")
    ap.add_argument("--parties", type=int, default=40)
    ap.add_argument("--test-parties", type=int, default=10)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--pretrain-steps", type=int, default=20)
    ap.add_argument("--pretrain-lr", type=float, default=0.01)
    ap.add_argument("--refit-steps", type=int, default=50)
    ap.add_argument("--refit-lr", type=float, default=0.01)
    ap.add_argument("--shots", default="0")
    ap.add_argument("--methods", default="fusion,nearest_task,average,matched_average,cold_start")
    args = ap.parse_args()
    shots = [int(s) for s in args.shots.split(",")]
    methods = args.methods.split(",")
    options = {"split": "pathological", "classes_per_party": 2, "archs": [args.arch], "source": args.source}
    if args.source == "mnist":
        options["data_dir"] = args.data_dir
    sc = build("digits-split", make_options("digits-split", options))
    n, m = args.parties, args.test_parties
    sc.prepare(args.seed, n, m)
    print(f"{sc.spec} ({sc.spec.n_params:,} params); {n} training parties of up to {sc.n_train_max} images")
    pretrain = TrainConfig(args.pretrain_steps, args.pretrain_lr)
    finetune = FinetuneConfig(steps=40, every=10)
    shard = PartyShard(0, sc, args.seed, range(n), range(n, n + m), pretrain, finetune, run="cnn-bench")
    clock = time.perf_counter()
    out = shard.pretrain()
    print(f"pretrain: {time.perf_counter() - clock:.0f}s", flush=True)
    cfg = FusionConfig(gp=GPConfig(), refit_steps=args.refit_steps, refit_lr=args.refit_lr, align_iters=5)
    # the screening of a run: non-finite models and function-space outliers are left out of every fit
    screened = screen(
        out["party_id"],
        out["params"],
        out["descriptor"],
        shard.layout,
        args.seed,
        sc.probe_inputs(),
        sc.outputs,
        cfg.outliers,
    )
    if screened.quarantined:
        print(f"quarantined: {', '.join(f'{q.party_id} ({q})' for q in screened.quarantined)}")
    models, desc = out["params"][screened.kept], out["descriptor"][screened.kept]
    ctx = FitContext(sc.spec, args.seed, config=cfg, probe=sc.probe_inputs(), outputs=sc.outputs, layout=shard.layout)
    fitted = {}
    for method in methods:
        strategy = strategy_for(method, cfg)
        if strategy is not None:
            clock = time.perf_counter()
            fitted[method] = strategy.fit_layout(models, desc, ctx)
            print(f"fit {method}: {time.perf_counter() - clock:.0f}s", flush=True)
    clock = time.perf_counter()
    scores = shard.evaluate({"fitted": fitted}, methods, shots)
    print(f"warm starts + fine-tune + evaluate: {time.perf_counter() - clock:.0f}s")
    table = results.results_table(scores, "cnn-bench", "digits-split", args.seed, sc.metric_name)
    ids = np.arange(n, n + m)
    weights = dict(zip(ids.tolist(), sc.party_weights(args.seed, ids).tolist()))
    print(results.format_summary(results.summarize(table, methods, weights), sc.metric_name))


if __name__ == "__main__":
    main()
