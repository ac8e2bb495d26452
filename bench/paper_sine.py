"""Reproduce the paper's Table 1 layout on sine-domains: methods x shots, mean ± std over test
parties (pooled over seeds), for a dense regime (900 training parties) and a sparse one (25).

    python -m bench.paper_sine                       # 900/100 parties, seeds 1,2,3, sparse 25
    python -m bench.paper_sine --parties 300 --seeds 1 --sparse-parties 25

Writes bench/out/paper_sine.md (tables) and bench/out/paper_sine_warm_starts.png (the paper's
Fig. 2: 0-shot warm starts against the true functions), and ends with one JSON line of figures.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from bench.report import publish
from cluster.config import resolve
from cluster.pipeline import run

METHODS = ["fusion", "fusion_noalign", "nearest_task", "average", "cold_start", "maml", "maml_40_40"]
SHOTS = [0, 10, 20, 30, 40]


def run_regime(
    parties: int, test_parties: int, seeds: list[int], methods: list[str], work: Path
) -> tuple[pa.Table, list]:
    tables, outs = [], []
    for seed in seeds:
        out = work / f"p{parties}-s{seed}"
        cfg = resolve(
            {
                "scenario": "sine-domains",
                "parties": parties,
                "test_parties": test_parties,
                "shots": SHOTS,
                "seed": seed,
                "methods": methods,
                "out": str(out),
            }
        )
        start = time.perf_counter()
        result = run(cfg, log=lambda line, s=seed: print(f"  [{parties} parties, seed {s}] {line}", flush=True))
        print(f"  run took {time.perf_counter() - start:.0f}s, stages {result.stages}", flush=True)
        tables.append(pq.read_table(out / "results.parquet"))
        outs.append(out)
    return pa.concat_tables(tables), outs


def table_rows(table: pa.Table, methods: list[str]) -> dict:
    method = np.asarray(table["method"].to_pylist())
    shots = np.asarray(table["shots"].to_pylist())
    value = np.asarray(table["value"].to_pylist())
    return {
        m: {
            k: (float(value[(method == m) & (shots == k)].mean()), float(value[(method == m) & (shots == k)].std()))
            for k in SHOTS
        }
        for m in methods
    }


def markdown(title: str, rows: dict) -> str:
    best = {k: min(rows[m][k][0] for m in rows) for k in SHOTS}
    lines = [
        f"### {title}",
        "",
        "| method | " + " | ".join(f"{k}-shot" for k in SHOTS) + " |",
        "| --- |" + " --- |" * len(SHOTS),
    ]
    for m, cells in rows.items():
        fmt = [
            (f"**{mu:.3f}** ± {sd:.3f}" if mu == best[k] else f"{mu:.3f} ± {sd:.3f}") for k, (mu, sd) in cells.items()
        ]
        lines.append(f"| {m} | " + " | ".join(fmt) + " |")
    return "\n".join(lines) + "\n"


def plot_warm_starts(run_dir: Path, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import torch

    from fusion.io import load_warm_starter
    from fusion.models.params import forward
    from scenarios import Stream, build, make_options, party_rng

    model, spec = load_warm_starter(run_dir / "fusion_model.pt")
    sc = build("sine-domains", make_options("sine-domains", {}))
    table = pq.read_table(run_dir / "results.parquet")
    seed = int(table["seed"][0].as_py())
    test_ids = sorted(set(table["party_id"].to_pylist()))[:6]
    desc = np.stack([sc.descriptor(party_rng(seed, i, Stream.DESCRIPTOR)) for i in test_ids])
    x = np.linspace(-5, 5, 200, dtype=np.float32)[:, None]
    pred = forward(torch.as_tensor(model.predict(desc)), spec, torch.as_tensor(x)).detach().numpy()[..., 0]
    fig, axes = plt.subplots(2, 3, figsize=(11, 6), sharex=True)
    for ax, (a, b), p in zip(axes.ravel(), desc, pred):
        ax.plot(x[:, 0], a * np.sin(x[:, 0] + b), "k-", lw=2, label="true task")
        ax.plot(x[:, 0], p, "C1--", lw=2, label="fusion warm start (0-shot)")
        ax.set_title(f"a={a:.2f}, b={b:.2f}")
    axes[0, 0].legend(loc="lower left", fontsize=8)
    fig.suptitle("sine-domains: 0-shot fusion warm starts of unseen parties")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--parties", type=int, default=900)
    ap.add_argument("--test-parties", type=int, default=100)
    ap.add_argument("--sparse-parties", type=int, default=25)
    ap.add_argument("--seeds", default="1,2,3")
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--out", default=str(Path(__file__).parent / "out"))
    args = ap.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    methods = args.methods.split(",")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    import ray

    ray.init(address="local", include_dashboard=False, logging_level="ERROR", log_to_driver=False)
    figures: dict = {"seeds": seeds}
    text = "## sine-domains, nRMSE (RMSE / amplitude), mean ± std over test parties and seeds\n\n"
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        dense, dense_runs = run_regime(args.parties, args.test_parties, seeds, methods, Path(tmp))
        figures["dense_seconds"] = round(time.perf_counter() - start)
        rows = table_rows(dense, methods)
        text += markdown(f"{args.parties} training parties, {args.test_parties} test parties", rows) + "\n"
        figures["dense"] = {m: {k: round(v[0], 4) for k, v in cells.items()} for m, cells in rows.items()}
        plot_warm_starts(dense_runs[0], out / "paper_sine_warm_starts.png")
        if args.sparse_parties:
            start = time.perf_counter()
            sparse, _ = run_regime(args.sparse_parties, args.test_parties, seeds, methods, Path(tmp))
            figures["sparse_seconds"] = round(time.perf_counter() - start)
            rows = table_rows(sparse, methods)
            text += markdown(f"sparse regime: {args.sparse_parties} training parties", rows)
            figures["sparse"] = {m: {k: round(v[0], 4) for k, v in cells.items()} for m, cells in rows.items()}
    publish(text, out / "paper_sine.md", figures, screen=sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
