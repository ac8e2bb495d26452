"""Results files: long-form Parquet, a summary CSV, the resolved config; written to a temp folder, then renamed."""

from __future__ import annotations

import csv
import io
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq


def weighted_mean_std(values: np.ndarray, weights: np.ndarray) -> tuple[float, float]:
    """PFLlib's report of per-party metrics ``values`` (P,) with sample counts ``weights`` (P,).

    The mean is sample-weighted (e.g. total correct / total samples); the std is the plain std over parties.
    """
    values, weights = np.asarray(values, dtype=np.float64), np.asarray(weights, dtype=np.float64)
    if values.shape != weights.shape or values.ndim != 1 or len(values) == 0:
        raise ValueError(f"values and weights must be non-empty (P,) arrays, got {values.shape} and {weights.shape}")
    if (weights < 0).any() or weights.sum() <= 0:
        raise ValueError("weights must be non-negative with a positive sum")
    return float((values * weights).sum() / weights.sum()), float(values.std())


@contextmanager
def staged_dir(out: Path):
    """Yield a temp folder beside ``out``; on success it becomes ``out``, on failure it disappears."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.", suffix=".partial"))
    try:
        yield tmp
        os.replace(tmp, out) if not out.exists() else _replace_dir(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _replace_dir(tmp: Path, out: Path) -> None:
    """``out`` exists (a run's checkpoint folder): move the new files in one by one, results.parquet last.

    A run folder with results.parquet is a finished run; the marker arrives after everything else.
    """
    for item in sorted(tmp.iterdir(), key=lambda p: p.name == "results.parquet"):
        os.replace(item, out / item.name)
    tmp.rmdir()


def results_table(cols: dict[str, list], run_id: str, scenario: str, seed: int, metric: str) -> pa.Table:
    n = len(cols["value"])
    return pa.table(
        {
            "run_id": pa.array([run_id] * n, pa.string()),
            "scenario": pa.array([scenario] * n, pa.string()),
            "seed": pa.array([seed] * n, pa.int64()),
            "method": pa.array(cols["method"], pa.string()),
            "shots": pa.array(cols["shots"], pa.int64()),
            "party_id": pa.array(cols["party_id"], pa.int64()),
            "metric": pa.array([metric] * n, pa.string()),
            "value": pa.array(cols["value"], pa.float64()),
        }
    )


def summarize(table: pa.Table, methods: list[str], weights: dict[int, float] | None = None) -> list[dict]:
    """Mean and std of ``value`` per (method, shots), in the order of ``methods`` then shots.

    ``weights`` (party id -> weight, e.g. its test samples): rows also get ``weighted_mean`` (PFLlib's report).
    """
    method = np.asarray(table["method"].to_pylist())
    shots = np.asarray(table["shots"].to_pylist())
    party = np.asarray(table["party_id"].to_pylist())
    value = np.asarray(table["value"].to_pylist(), dtype=np.float64)
    rows = []
    for m in methods:
        for k in sorted(set(shots[method == m].tolist())):
            sel = (method == m) & (shots == k)
            v = value[sel]
            row = {"method": m, "shots": int(k), "mean": float(v.mean()), "std": float(v.std()), "n": int(len(v))}
            if weights is not None:
                row["weighted_mean"], _ = weighted_mean_std(v, np.array([weights[int(p)] for p in party[sel]]))
            rows.append(row)
    return rows


def write_summary_csv(rows: list[dict], path: Path) -> None:
    weighted = bool(rows) and "weighted_mean" in rows[0]
    head = "method,shots,mean,std,n" + (",weighted_mean" if weighted else "")
    lines = [head] + [
        f"{r['method']},{r['shots']},{r['mean']:.6g},{r['std']:.6g},{r['n']}"
        + (f",{r['weighted_mean']:.6g}" if weighted else "")
        for r in rows
    ]
    path.write_text("\n".join(lines) + "\n")


COSTS_HEAD = ("method", "rounds", "upload_bytes", "download_bytes", "party_steps", "wall_s")


def write_costs_csv(costs: dict[str, dict], methods: list[str], path: Path) -> None:
    """One row per method (in ``methods`` order): communication in bytes, party-side gradient steps, wall seconds."""
    lines = [",".join(COSTS_HEAD)]
    for m in methods:
        c = costs[m]
        lines.append(
            f"{m},{c['rounds']},{c['upload_bytes']},{c['download_bytes']},{c['party_steps']},{c['wall_s']:.3f}"
        )
    path.write_text("\n".join(lines) + "\n")


def write_parquet(table: pa.Table, path: Path) -> None:
    pq.write_table(table, path)


def format_summary(rows: list[dict], metric: str) -> str:
    """A table: methods as rows, shots as columns, ``mean ± std`` (the sample-weighted mean when rows have one)."""
    shots = sorted({r["shots"] for r in rows})
    methods = list(dict.fromkeys(r["method"] for r in rows))
    key = "weighted_mean" if rows and "weighted_mean" in rows[0] else "mean"
    # NaN: the method has no model at that k (FedRep's 0-shot without a trained head, fusion.federated.no_zero_shot)
    cell = {(r["method"], r["shots"]): "n/a" if np.isnan(r[key]) else f"{r[key]:.4f} ± {r['std']:.4f}" for r in rows}
    what = "sample-weighted mean ± std over parties" if key == "weighted_mean" else "mean ± std"
    head = [f"{metric} ({what})"] + [f"{k}-shot" for k in shots]
    body = [[m] + [cell.get((m, k), "-") for k in shots] for m in methods]
    widths = [max(len(row[i]) for row in [head, *body]) for i in range(len(head))]
    fmt = lambda row: "  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip()  # noqa: E731
    return "\n".join([fmt(head), fmt(["-" * w for w in widths]), *map(fmt, body)])


def quarantine_csv(reasons: dict[int, str]) -> str:
    """``quarantined.csv``: one row per training party left out of fusion, with the reason."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["party_id", "reason"])
    writer.writerows([p, reasons[p]] for p in sorted(reasons))
    return buf.getvalue()
