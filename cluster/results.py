"""Results files: long-form Parquet, a summary CSV, the resolved config; written to a temp folder, then renamed."""

from __future__ import annotations

import csv
import io
import os
import shutil
import tempfile
from collections.abc import Iterable
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

if TYPE_CHECKING:
    from fusion.evaluate import Scores
    from fusion.screening.screen import Quarantined


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


def results_table(scores: Scores, run_id: str, scenario: str, seed: int, metric: str) -> pa.Table:
    """The long-form results: one row per (method, shots, party) of ``scores``."""
    n = len(scores.value)
    return pa.table(
        {
            "run_id": pa.array([run_id] * n, pa.string()),
            "scenario": pa.array([scenario] * n, pa.string()),
            "seed": pa.array([seed] * n, pa.int64()),
            "method": pa.array(scores.method, pa.string()),
            "shots": pa.array(scores.shots, pa.int64()),
            "party_id": pa.array(scores.party_id, pa.int64()),
            "metric": pa.array([metric] * n, pa.string()),
            "value": pa.array(scores.value, pa.float64()),
        }
    )


TAIL_COLUMNS = ("median", "p10", "p90", "worst10")


def tail(values: np.ndarray, lower_is_better: bool = True) -> dict[str, float]:
    """The spread of per-party ``values`` (P,): median, 10th, 25th, 75th and 90th percentiles (linear interpolation)
    and ``worst10``, the mean of the worst ceil(10%) of the parties (the highest values when lower is better).
    summary.csv writes :data:`TAIL_COLUMNS`; the quartiles ``p25``/``p75`` are for ``metric_vs_shots.png``'s IQR."""
    v = np.sort(np.asarray(values, np.float64))
    n_worst = max(1, int(np.ceil(0.1 * len(v))))
    worst = v[-n_worst:] if lower_is_better else v[:n_worst]
    p10, p25, median, p75, p90 = np.percentile(v, [10, 25, 50, 75, 90])
    return {
        "median": float(median),
        "p10": float(p10),
        "p90": float(p90),
        "worst10": float(worst.mean()),
        "p25": float(p25),
        "p75": float(p75),
    }


def summarize(
    table: pa.Table, methods: list[str], weights: dict[int, float] | None = None, lower_is_better: bool = True
) -> list[dict]:
    """Mean, std and the tail (:func:`tail`) of ``value`` per (method, shots), in the order of ``methods`` then shots.

    ``weights`` (party id -> weight, e.g. its test samples): rows also get ``weighted_mean`` (PFLlib's report).
    Values that are NaN (a method with no model at that k, e.g. an untrained head) are left out; a (method, shots)
    with none left is not reported.
    """
    method = np.asarray(table["method"].to_pylist())
    shots = np.asarray(table["shots"].to_pylist())
    party = np.asarray(table["party_id"].to_pylist())
    value = np.asarray(table["value"].to_pylist(), dtype=np.float64)
    rows = []
    for m in methods:
        for k in sorted(set(shots[method == m].tolist())):
            sel = (method == m) & (shots == k) & np.isfinite(value)
            v = value[sel]
            if not len(v):
                continue
            row = {"method": m, "shots": int(k), "mean": float(v.mean()), "std": float(v.std()), "n": int(len(v))}
            if weights is not None:
                row["weighted_mean"], _ = weighted_mean_std(v, np.array([weights[int(p)] for p in party[sel]]))
            rows.append({**row, **tail(v, lower_is_better)})
    return rows


ROUND_COSTS = ("upload_bytes", "download_bytes", "party_steps", "aggregated")


def rounds_table(curves: dict[str, list[dict]], run_id: str, scenario: str, seed: int, metric: str) -> pa.Table:
    """``rounds.parquet``: one row per (method, round, protocol, party) of the rounds methods' learning curves.

    ``curves``: method -> points ``{"round", "party_id" (n,), "value" (n,), "loss" (n,), upload_bytes,
    download_bytes, party_steps, aggregated, sim_time}`` (the costs so far; ``sim_time`` the simulated time at the
    start of that round) of the participating protocol; points with ``"protocol"`` set (the novel protocol's) carry
    ``loss`` NaN.
    """
    cols: dict[str, list] = {
        k: [] for k in ("method", "round", "protocol", "party_id", "value", "train_loss", "sim_time")
    }
    costs: dict[str, list] = {k: [] for k in ROUND_COSTS}
    for method, points in curves.items():
        for pt in points:
            n = len(pt["party_id"])
            cols["method"] += [method] * n
            cols["round"] += [int(pt["round"])] * n
            cols["protocol"] += [pt.get("protocol", "participating")] * n
            cols["party_id"] += [int(i) for i in pt["party_id"]]
            cols["value"] += [float(v) for v in pt["value"]]
            cols["train_loss"] += [float(v) for v in pt.get("loss", np.full(n, np.nan))]
            cols["sim_time"] += [float(pt.get("sim_time", 0.0))] * n
            for k in ROUND_COSTS:
                costs[k] += [int(pt.get(k, 0))] * n
    n = len(cols["value"])
    return pa.table(
        {
            "run_id": pa.array([run_id] * n, pa.string()),
            "scenario": pa.array([scenario] * n, pa.string()),
            "seed": pa.array([seed] * n, pa.int64()),
            "method": pa.array(cols["method"], pa.string()),
            "round": pa.array(cols["round"], pa.int64()),
            "protocol": pa.array(cols["protocol"], pa.string()),
            "party_id": pa.array(cols["party_id"], pa.int64()),
            "metric": pa.array([metric] * n, pa.string()),
            "value": pa.array(cols["value"], pa.float64()),
            "train_loss": pa.array(cols["train_loss"], pa.float64()),
            "sim_time": pa.array(cols["sim_time"], pa.float64()),
            **{k: pa.array(v, pa.int64()) for k, v in costs.items()},
        }
    )


def curve_means(
    curves: dict[str, list[dict]], weights: dict[int, float] | None = None
) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Per method, its participating learning curve: rounds (R,), the mean metric (R,) over the parties (sample-weighted
    with ``weights``) and the mean training loss (R,)."""
    out = {}
    for method, points in curves.items():
        points = [p for p in points if p.get("protocol", "participating") == "participating"]
        if not points:
            continue
        means = []
        for p in points:
            w = None if weights is None else np.array([weights.get(int(i), 0.0) for i in p["party_id"]])
            v = np.asarray(p["value"], np.float64)
            means.append(float(v.mean()) if w is None or w.sum() <= 0 else float((v * w).sum() / w.sum()))
        loss = [float(np.nanmean(p["loss"])) if np.isfinite(p["loss"]).any() else float("nan") for p in points]
        out[method] = (np.array([p["round"] for p in points]), np.array(means), np.array(loss))
    return out


def upload_curves(curves: dict[str, list[dict]]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Per rounds method, its participating learning curve against its cumulative upload: bytes uploaded so far
    (R,) and the mean metric over the scored parties (R,), parties alike (as ``metric_vs_upload.png``'s points)."""
    out = {}
    for method, (_, mean, _) in curve_means(curves).items():
        points = [p for p in curves[method] if p.get("protocol", "participating") == "participating"]
        out[method] = (np.array([p.get("upload_bytes", 0) for p in points], np.float64), mean)
    return out


def participating_rows(
    curves: dict[str, list[dict]], weights: dict[int, float] | None = None, lower_is_better: bool = True
) -> list[dict]:
    """The participating protocol's summary rows per method: its last round (``protocol = "participating"``) and,
    optimistic because chosen on the test rows themselves, its best round (``"participating_best_optimistic"``). A
    method of one point (a one-shot method, ``local``) has both rows at that point."""
    rows = []
    means = curve_means(curves, weights)
    for method, (rounds_, mean, _) in means.items():
        points = {int(p["round"]): p for p in curves[method] if p.get("protocol", "participating") == "participating"}
        score = np.where(np.isfinite(mean), mean if lower_is_better else -mean, np.inf)  # NaN (diverged): never best
        best = int(rounds_[np.argmin(score)]) if np.isfinite(score).any() else int(rounds_[-1])
        for protocol, r in (("participating", int(rounds_[-1])), ("participating_best_optimistic", best)):
            v = np.asarray(points[r]["value"], np.float64)
            row = {"method": method, "shots": 0, "mean": float(v.mean()), "std": float(v.std()), "n": len(v)}
            if weights is not None:
                w = np.array([weights.get(int(i), 0.0) for i in points[r]["party_id"]])
                row["weighted_mean"] = float((v * w).sum() / w.sum()) if w.sum() > 0 else float("nan")
            rows.append({**row, **tail(v, lower_is_better), "protocol": protocol, "round": r})
    return rows


def reaches(value: float, target: float, lower_is_better: bool) -> bool:
    """Whether a metric ``value`` reaches ``target``: at or below it for an error, at or above it for accuracy."""
    return bool(value <= target) if lower_is_better else bool(value >= target)


def curve_times(curves: dict[str, list[dict]]) -> dict[str, np.ndarray]:
    """Per method, the simulated time (R,) at each participating point of its learning curve (:func:`curve_means`)."""
    return {
        m: np.array(
            [float(p.get("sim_time", 0.0)) for p in pts if p.get("protocol", "participating") == "participating"]
        )
        for m, pts in curves.items()
    }


def with_time_to_target(
    rows: list[dict],
    costs: dict[str, dict],
    curves: dict[str, list[dict]],
    target: float,
    lower_is_better: bool,
    weights: dict[int, float] | None = None,
) -> list[dict]:
    """``rows`` (summary rows) with ``time_to_target``: the first simulated time the method's metric reaches
    ``target`` (:func:`reaches`; the row's weighted mean when it has one), inf when it never does.

    A novel row (the test parties at k shots) has one time: the method's (its rounds', or its pretraining and one
    upload for a one-shot method, ``costs[method]["sim_time"]``) if the row reaches the target. A participating row
    has the time of the first point of its learning curve that reaches it."""
    means, times = curve_means(curves, weights), curve_times(curves)
    first = {}
    for m, (_, mean, _) in means.items():
        hit = [t for t, v in zip(times[m], mean) if reaches(v, target, lower_is_better)]
        first[m] = hit[0] if hit else float("inf")
    out = []
    for r in rows:
        key = "weighted_mean" if "weighted_mean" in r else "mean"
        if r.get("protocol", "novel") == "novel":
            t = float(costs[r["method"]]["sim_time"]) if reaches(r[key], target, lower_is_better) else float("inf")
        else:
            t = first.get(r["method"], float("inf"))
        out.append({**r, "time_to_target": t})
    return out


def time_text(t: float) -> str:
    return "never" if not np.isfinite(t) else f"{t:.6g}"


def write_summary_csv(rows: list[dict], path: Path) -> None:
    """``summary.csv``: method, shots, mean, std, n, [weighted_mean], median, p10, p90, worst10 (see :func:`tail`),
    then, in a run with rounds methods, protocol and round (``novel`` rows: the test parties after the last round;
    ``participating`` rows: the training parties' own held-out rows at the last round, and at the best round, named
    ``participating_best_optimistic``); with a ``[report] target``, ``time_to_target`` (:func:`with_time_to_target`,
    "never" when the metric does not reach it)."""
    weighted = bool(rows) and "weighted_mean" in rows[0]
    protocols = any("protocol" in r for r in rows)
    timed = any("time_to_target" in r for r in rows)
    head = "method,shots,mean,std,n" + (",weighted_mean" if weighted else "") + "," + ",".join(TAIL_COLUMNS)
    head += ",protocol,round" if protocols else ""
    head += ",time_to_target" if timed else ""
    lines = [head] + [
        f"{r['method']},{r['shots']},{r['mean']:.6g},{r['std']:.6g},{r['n']}"
        + (f",{r['weighted_mean']:.6g}" if weighted else "")
        + "".join(f",{r[c]:.6g}" for c in TAIL_COLUMNS)
        + (f",{r.get('protocol', 'novel')},{r.get('round', '')}" if protocols else "")
        + (f",{time_text(r['time_to_target'])}" if timed else "")
        for r in rows
    ]
    path.write_text("\n".join(lines) + "\n")


COSTS_HEAD = ("method", "rounds", "upload_bytes", "download_bytes", "party_steps", "aggregated", "sim_time", "wall_s")


def write_costs_csv(costs: dict[str, dict], methods: list[str], path: Path) -> None:
    """One row per method (in ``methods`` order): communication in bytes, party-side gradient steps, the uploads the
    server aggregated (a one-shot method: the models fused), the simulated time (:class:`fusion.system.RoundClock`)
    and wall seconds."""
    lines = [",".join(COSTS_HEAD)]
    for m in methods:
        c = costs[m]
        lines.append(
            f"{m},{c['rounds']},{c['upload_bytes']},{c['download_bytes']},{c['party_steps']},{c['aggregated']},"
            f"{c['sim_time']:.6g},{c['wall_s']:.3f}"
        )
    path.write_text("\n".join(lines) + "\n")


def write_parquet(table: pa.Table, path: Path) -> None:
    pq.write_table(table, path)


def format_summary(rows: list[dict], metric: str, stat: str = "mean") -> str:
    """A table: methods as rows, shots as columns. ``stat`` "mean": ``mean ± std`` (the sample-weighted mean when rows
    have one); "median": ``median [p10, p90]``; "worst10": the mean of the worst 10% of parties. A method with no
    value at a k shows "n/a"."""
    shots = sorted({r["shots"] for r in rows})
    methods = list(dict.fromkeys(r["method"] for r in rows))
    if stat == "median":
        cell = {(r["method"], r["shots"]): f"{r['median']:.4f} [{r['p10']:.4f}, {r['p90']:.4f}]" for r in rows}
        what = "median [10th, 90th percentile] over parties"
    elif stat == "worst10":
        cell = {(r["method"], r["shots"]): f"{r['worst10']:.4f}" for r in rows}
        what = "mean of the worst 10% of parties"
    else:
        key = "weighted_mean" if rows and "weighted_mean" in rows[0] else "mean"
        cell = {(r["method"], r["shots"]): f"{r[key]:.4f} ± {r['std']:.4f}" for r in rows}
        what = "sample-weighted mean ± std over parties" if key == "weighted_mean" else "mean ± std"
    head = [f"{metric} ({what})"] + [f"{k}-shot" for k in shots]
    body = [[m] + [cell.get((m, k), "n/a") for k in shots] for m in methods]
    widths = [max(len(row[i]) for row in [head, *body]) for i in range(len(head))]
    fmt = lambda row: "  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip()  # noqa: E731
    return "\n".join([fmt(head), fmt(["-" * w for w in widths]), *map(fmt, body)])


def format_times(rows: list[dict], metric: str, target: float) -> str:
    """Each method's time to ``target`` on the simulated clock, one line per (method, protocol[, shots])."""
    lines = [f"simulated time to {metric} target {target:g} (never: not reached)"]
    for r in rows:
        protocol = r.get("protocol", "novel")
        if protocol == "participating_best_optimistic":
            continue
        where = f"novel, {r['shots']}-shot" if protocol == "novel" else protocol
        lines.append(f"  {r['method']} ({where}): {time_text(r['time_to_target'])}")
    return "\n".join(lines)


def quarantine_csv(records: Iterable[Quarantined]) -> str:
    """``quarantined.csv``: one row per training party left out of fusion, with the reason."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["party_id", "reason"])
    writer.writerows([q.party_id, str(q)] for q in sorted(records, key=lambda q: q.party_id))
    return buf.getvalue()
