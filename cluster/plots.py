"""PNG plots of a run, written next to results.parquet (matplotlib's Agg canvas; no pyplot, no display)."""

from __future__ import annotations

import textwrap
from pathlib import Path

import numpy as np
import torch
from matplotlib import ticker
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from fusion.models.params import forward
from scenarios import Scenario

SHOTS_PNG = "metric_vs_shots.png"
WARM_STARTS_PNG = "warm_starts.png"
UPLOAD_PNG = "metric_vs_upload.png"
PARTITION_PNG = "partition.png"
ROUND_PNG = "metric_vs_round.png"
TIME_PNG = "metric_vs_time.png"


def _save(fig: Figure, path: Path) -> None:
    FigureCanvasAgg(fig)
    fig.savefig(path, dpi=110, bbox_inches="tight")


# axis labels with units; a metric not listed is shown by its name
METRIC_LABELS = {
    "nrmse": "nRMSE (RMSE / task amplitude, lower is better)",
    "rmse": "RMSE (rating points, lower is better)",
    "accuracy": "accuracy (fraction of test samples, higher is better)",
}
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*", "<", ">")
LINESTYLES = ("-", "--", "-.", ":")


BOUNDED = {"accuracy"}  # metrics in [0, 1] whose high end matters: always a linear axis


def log_scale_wanted(means: list[float], decades: float = 1.0, metric: str = "") -> bool:
    """True when the positive ``means`` span more than ``decades`` decades (a linear axis would flatten some), unless
    ``metric`` is bounded (:data:`BOUNDED`: on a log axis of accuracy 0.05 takes the room and 0.75 against 0.80
    becomes unreadable)."""
    if metric in BOUNDED:
        return False
    pos = [m for m in means if m > 0]
    return len(pos) == len(means) and len(pos) > 1 and np.log10(max(pos) / min(pos)) > decades


def plain_log_ticks(axis) -> None:
    """Label a log axis with plain numbers (0.03, 0.1, 2), the 2s and 5s between powers of ten included."""
    axis.set_major_formatter(ticker.FuncFormatter(lambda v, _: f"{v:g}"))
    axis.set_minor_formatter(ticker.FuncFormatter(lambda v, _: f"{v:g}" if f"{v:.0e}"[0] in "25" else ""))


BANDS = ("sem", "std", "iqr")  # what metric_vs_shots.png draws around each line ([report] band)


def _band(rows: list[dict], band: str, log: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The line (R,) and its lower / upper error lengths (R,), (R,) of one method's ``rows`` for ``band``: the mean
    ± its standard error ("sem") or ± the std over parties ("std"), or the median with the 25th-75th percentile
    ("iqr"). On a log axis a lower error that would reach 0 stops at a fifth of the line."""
    if band == "iqr":
        line = np.array([r["median"] for r in rows])
        lower = line - np.array([r["p25"] for r in rows])
        upper = np.array([r["p75"] for r in rows]) - line
    else:
        line = np.array([r["mean"] for r in rows])
        n = np.array([np.sqrt(max(r["n"], 1)) if band == "sem" else 1.0 for r in rows])
        lower = upper = np.array([r["std"] for r in rows]) / n
    return line, (np.minimum(lower, 0.8 * line) if log else lower), upper


def plot_metric_vs_shots(summary: list[dict], metric: str, path: Path, band: str = "sem") -> None:
    """Write :func:`metric_vs_shots_figure` of ``summary`` to ``path``."""
    _save(metric_vs_shots_figure(summary, metric, band), path)


def metric_vs_shots_figure(summary: list[dict], metric: str, band: str = "sem") -> Figure:
    """One line per method (own marker and dash) against the shots. ``band`` (:data:`BANDS`): "sem", the mean with
    error bars of its standard error over the test parties; "std", the mean ± the std over the parties; "iqr", the
    median with bars from the 25th to the 75th percentile (rows need ``median``, ``p25``, ``p75``:
    :func:`cluster.results.tail`). A log y axis when the lines span more than a decade; the legend sits outside the
    axes."""
    if band not in BANDS:
        raise ValueError(f"band must be one of {', '.join(BANDS)}, got {band!r}")
    center = "median" if band == "iqr" else "mean"
    methods = list(dict.fromkeys(r["method"] for r in summary))
    shots = sorted({r["shots"] for r in summary})
    log = log_scale_wanted([r[center] for r in summary], metric=metric)
    fig = Figure(figsize=(7, 4))
    ax = fig.add_subplot()
    step = (max(shots) - min(shots) or 1) * 0.012  # dodge: methods at one shots value do not cover each other
    for i, method in enumerate(methods):
        rows = sorted((r for r in summary if r["method"] == method), key=lambda r: r["shots"])
        line, lower, upper = _band(rows, band, log)
        ax.errorbar(
            [r["shots"] + (i - (len(methods) - 1) / 2) * step for r in rows],
            line,
            yerr=[lower, upper],
            label=method,
            marker=MARKERS[i % len(MARKERS)],
            linestyle=LINESTYLES[(i // len(MARKERS)) % len(LINESTYLES)],
            markersize=6,
            capsize=3,
        )
    if log:
        ax.set_yscale("log")
        plain_log_ticks(ax.yaxis)
    n = max((r["n"] for r in summary), default=0)
    plain = " (parties alike, not sample-weighted)" if any("weighted_mean" in r for r in summary) else ""
    what = {
        "sem": f"mean{plain} ± standard error",
        "std": f"mean{plain} ± standard deviation",
        "iqr": "median, bars from the 25th to the 75th percentile,",
    }[band]
    ax.set_xticks(shots)
    ax.set_xlabel("fine-tuning shots per test party")
    ax.set_ylabel(METRIC_LABELS.get(metric, metric))
    ax.set_title(f"{what} over {n} test parties" + (" (log scale)" if log else ""), fontsize=9)
    ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0, title="method", fontsize=9)
    ax.grid(alpha=0.3, which="both" if log else "major")
    return fig


def plot_metric_vs_upload(
    summary: list[dict],
    costs: dict[str, dict],
    metric: str,
    path: Path,
    curves: dict[str, tuple[np.ndarray, np.ndarray]] | None = None,
) -> None:
    """Write :func:`metric_vs_upload_figure` to ``path``."""
    _save(metric_vs_upload_figure(summary, costs, metric, curves), path)


def metric_vs_upload_figure(
    summary: list[dict],
    costs: dict[str, dict],
    metric: str,
    curves: dict[str, tuple[np.ndarray, np.ndarray]] | None = None,
) -> Figure:
    """Each method's mean metric at 0 shots (circle) and at the largest k (square) against its total upload bytes
    (log x, in kB / MB), joined, one colour per method and a legend; methods with the same upload are drawn side by
    side (x 1.12 apart) so their lines do not cover each other; a log y axis when the means span more than a decade.
    Methods that upload nothing (cold_start) sit in a strip of their own at the left ("no upload"), not at a made-up
    byte count.

    ``curves``: method -> (cumulative upload bytes (R,), metric (R,)) of a rounds method's learning curve (the
    participating parties scored on their own held-out rows, :func:`cluster.results.upload_curves`), drawn as a thin
    line of points.
    """
    curves = curves or {}
    k_max = max(r["shots"] for r in summary)
    methods = list(dict.fromkeys(r["method"] for r in summary))
    means = [r["mean"] for r in summary] + [float(v) for _, m in curves.values() for v in m if np.isfinite(v)]
    log_y = log_scale_wanted(means, metric=metric)
    silent = [m for m in methods if costs[m]["upload_bytes"] <= 0]
    fig = Figure(figsize=(7.5, 4.5))
    if silent:
        grid = fig.add_gridspec(1, 2, width_ratios=(1.6, 7), wspace=0.04)
        strip, ax = fig.add_subplot(grid[0]), None
        ax = fig.add_subplot(grid[1], sharey=strip)
    else:
        strip, ax = None, fig.add_subplot()
    handles = []  # one legend entry per method, in its colour (labels beside the points overlap when they crowd)
    same = {}  # upload -> the methods with it: dodged side by side (x 1.12 apart on the log axis, 0.3 in the strip)
    for method in methods:
        same.setdefault(costs[method]["upload_bytes"], []).append(method)
    for i, method in enumerate(methods):
        mean = {r["shots"]: r["mean"] for r in summary if r["method"] == method}
        up = costs[method]["upload_bytes"]
        peers = same[up]
        j = peers.index(method) - (len(peers) - 1) / 2
        target, x = (ax, up * 1.12**j) if up > 0 else (strip, 0.3 * j)
        ks = sorted({0, k_max} & set(mean))
        color = f"C{i % 10}"
        if method in curves:
            cx, cy = curves[method]
            target.plot(
                np.asarray(cx)[np.asarray(cx) > 0],
                np.asarray(cy)[np.asarray(cx) > 0],
                color=color,
                lw=0.8,
                marker=".",
                markersize=3,
                alpha=0.7,
            )
        target.plot([x] * len(ks), [mean[k] for k in ks], color=color, lw=1, alpha=0.6)
        for k in ks:
            target.plot(x, mean[k], marker="o" if k == 0 else "s", color=color, ls="none")
        handles.append(Line2D([], [], color=color, lw=1.5, label=method))
    ax.set_xscale("log")
    lo, hi = ax.get_xlim()
    if hi / lo < 30:  # uploads within a decade or so: widen to show labelled ticks (1, 2, 5 x a power of ten)
        mid = np.sqrt(lo * hi)
        ax.set_xlim(mid / 6, mid * 6)
    ax.xaxis.set_major_formatter(ticker.FuncFormatter(lambda v, _: _bytes(v)))
    ax.xaxis.set_minor_formatter(ticker.FuncFormatter(lambda v, _: _bytes(v) if f"{v:.0e}"[0] in "25" else ""))
    ax.tick_params(axis="x", which="minor", labelsize=7)
    ax.set_xlabel("total upload (log scale)")
    if log_y:
        ax.set_yscale("log")
        plain_log_ticks(ax.yaxis)
    ylabel = f"{metric} (mean over test parties)" + (", log scale" if log_y else "")
    if strip is not None:
        strip.set_xticks([0.0], ["no\nupload"])
        strip.set_xlim(-1 - 0.15 * len(silent), 1 + 0.15 * len(silent))
        strip.set_ylabel(ylabel)
        strip.grid(alpha=0.3, axis="y", which="both")
        ax.tick_params(axis="y", which="both", labelleft=False)
    else:
        ax.set_ylabel(ylabel)
    title = f"circles: 0 shots, squares: {k_max} shots" + (
        "; equal uploads side by side" if len(same) < len(methods) else ""
    )
    ax.set_title(
        title + ("\nlines: rounds learning curves, training parties on their own rows" if curves else ""), fontsize=9
    )
    ax.grid(alpha=0.3, which="both")
    ax.legend(
        handles=handles, loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0, title="method", fontsize=8
    )
    return fig


def _bytes(v: float) -> str:
    """A byte count as 200 kB, 1.5 MB, 3 GB."""
    for unit, size in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if v >= size:
            return f"{v / size:g} {unit}"
    return f"{v:g} B"


def plot_partition(counts: np.ndarray | None, descriptors: np.ndarray, n_train: int, path: Path) -> None:
    """``partition.png``: what every party holds (its training parties first, then its test parties).

    ``counts`` (parties, classes), the label counts of a classification run: a heatmap per group (training, test),
    parties sorted by their dominant class, then by size. Without counts: descriptors of one or two coordinates
    (sine's amplitude and phase) as a scatter, training and test parties in two colours; wider descriptors as a
    heatmap of their coordinates.
    """
    d = np.asarray(descriptors, np.float64)
    if counts is None and d.shape[1] <= 2:
        fig = Figure(figsize=(5.5, 4))
        ax = fig.add_subplot()
        xs, ys = (d[:, 0], d[:, 1]) if d.shape[1] == 2 else (np.arange(len(d)), d[:, 0])
        ax.scatter(xs[:n_train], ys[:n_train], s=10, alpha=0.7, label=f"training parties ({n_train})")
        ax.scatter(xs[n_train:], ys[n_train:], s=18, marker="x", label=f"test parties ({len(d) - n_train})")
        ax.set_xlabel("descriptor[0]" if d.shape[1] == 2 else "party")
        ax.set_ylabel("descriptor[1]" if d.shape[1] == 2 else "descriptor[0]")
        ax.set_title("task descriptors of the parties", fontsize=9)
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
        _save(fig, path)
        return
    values = np.asarray(counts if counts is not None else d, np.float64)
    groups = [(name, v) for name, v in (("training", values[:n_train]), ("test", values[n_train:])) if len(v)]
    fig = Figure(figsize=(min(16.0, 3 + 0.04 * len(values) + 1.5 * len(groups)), 3.8))
    grid = fig.add_gridspec(1, len(groups), width_ratios=[max(len(v), 5) for _, v in groups], wspace=0.08)
    if counts is not None:
        from matplotlib.colors import SymLogNorm

        norm, label, what = SymLogNorm(linthresh=1.0, vmin=0.0, vmax=max(float(values.max()), 1.0)), "examples", "class"
    else:
        norm, label, what = None, "descriptor value", "descriptor coordinate"
    image = None
    for g, (name, v) in enumerate(groups):
        order = np.lexsort((-v.sum(axis=1), v.argmax(axis=1)))
        ax = fig.add_subplot(grid[g])
        image = ax.imshow(v[order].T, aspect="auto", interpolation="nearest", cmap="viridis", norm=norm)
        ax.set_title(f"{name} parties ({len(v)})", fontsize=9)
        ax.set_xlabel("party (sorted)")
        if v.shape[1] <= 20:
            ax.set_yticks(range(v.shape[1]), [str(k) for k in range(v.shape[1])] if g == 0 else [""] * v.shape[1])
        if g == 0:
            ax.set_ylabel(what)
        else:
            ax.tick_params(labelleft=False)
    bar = fig.colorbar(image, ax=fig.axes, label=label + (" (log scale)" if counts is not None else ""), fraction=0.03)
    if counts is not None:  # 0, 1, 10, 100 rather than 10^0, 10^1
        bar.ax.yaxis.set_major_formatter(ticker.FuncFormatter(lambda v, _: f"{v:g}"))
    held = "label counts" if counts is not None else "descriptors"
    fig.suptitle(f"{held} of every party; parties sorted by their largest {what}", fontsize=10)
    _save(fig, path)


def plot_metric_vs_round(means: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]], metric: str, path: Path) -> None:
    """``metric_vs_round.png``: each rounds method's learning curve on the participating parties (left: the mean
    metric on their held-out rows; right: their mean training loss), log y axes when a curve spans a decade. A
    method of one point (a one-shot method, ``local``) is a horizontal dotted line at its value, labelled with its
    round."""
    fig = Figure(figsize=(11, 4))
    left, right = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
    for i, (method, (rounds_, mean, loss)) in enumerate(means.items()):
        if len(rounds_) == 1:
            color = f"C{i % 10}"
            left.axhline(mean[0], color=color, linestyle=":", label=f"{method} (round {int(rounds_[0])})")
            if np.isfinite(loss[0]):
                right.axhline(loss[0], color=color, linestyle=":", label=f"{method} (round {int(rounds_[0])})")
            continue
        style = dict(marker=MARKERS[i % len(MARKERS)], linestyle=LINESTYLES[(i // len(MARKERS)) % len(LINESTYLES)])
        left.plot(rounds_, mean, label=method, markersize=4, color=f"C{i % 10}", **style)
        right.plot(rounds_, loss, label=method, markersize=4, color=f"C{i % 10}", **style)
    for ax, values, label in (
        (left, [v for _, m, _ in means.values() for v in m], METRIC_LABELS.get(metric, metric)),
        (right, [v for _, _, l_ in means.values() for v in l_], "training loss (mean over parties)"),
    ):
        finite = [v for v in values if np.isfinite(v)]
        if log_scale_wanted(finite, metric=metric if ax is left else ""):
            ax.set_yscale("log")
            plain_log_ticks(ax.yaxis)
        ax.set_xlabel("round")
        ax.set_ylabel(label, fontsize=8)
        ax.grid(alpha=0.3, which="both")
    left.set_title("participating parties, their own held-out rows", fontsize=9)
    right.set_title("participating parties, their own training rows", fontsize=9)
    handles, labels = left.get_legend_handles_labels()  # every method; one-shot ones have no training loss
    right.legend(
        handles, labels, loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0, title="method", fontsize=8
    )
    _save(fig, path)


def plot_warm_starts(
    scenario: Scenario, shown: dict[str, dict[int, tuple]], seed: int, party_ids: list[int], path: Path
) -> bool:
    """The zero-shot warm start of each method against the true curve, one panel per test party.

    ``shown``: method -> party id -> (spec, params (n_params,)), the 0-shot models the shards evaluated.
    Returns False (and writes nothing) when the scenario has no 1-D truth curve.
    """
    descs = [scenario.party_descriptor(seed, i) for i in party_ids]
    curves = [scenario.truth_curve(d) for d in descs]
    if not party_ids or any(c is None for c in curves):
        return False
    fig = Figure(figsize=(4 * len(party_ids), 3.5))
    for col, (pid, desc, (x, y)) in enumerate(zip(party_ids, descs, curves)):
        ax = fig.add_subplot(1, len(party_ids), col + 1)
        ax.plot(x[:, 0], y[:, 0], color="black", lw=2.5, label="truth")
        for method, by_party in shown.items():
            if pid not in by_party:
                continue
            spec, params = by_party[pid]
            pred = forward(torch.tensor(params)[None], spec, torch.as_tensor(x)).detach().numpy()[0, :, 0]
            ax.plot(x[:, 0], pred, lw=1.2, label=method)
        ax.set_title(f"party {pid}: descriptor {np.round(desc, 2).tolist()}")
        ax.set_xlabel("x")
    fig.axes[0].legend(fontsize=7)
    _save(fig, path)
    return True


def _numeric(values: list) -> bool:
    return all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)


def plot_study(table, keys: list[str], metric: str, path: Path) -> None:
    """``study.png``: the mean metric against each swept key (columns) for each shots value (rows), one line per
    method. Each point's mean is over its test parties and, for the other swept keys, over their values; with
    ``seed`` among the keys the error bars are the std over seeds. A key of numbers spanning >= 1 decade gets a
    log x axis; the y axis is log when the means span more than a decade. Written to a temp file, then renamed.
    """
    from fusion.io import write_atomic

    cols = {k: table[k].to_pylist() for k in ("method", "shots", "value", *keys)}
    value = np.asarray(cols["value"], np.float64)
    methods = list(dict.fromkeys(cols["method"]))
    shots = sorted(set(cols["shots"]))
    swept = [k for k in keys if k != "seed"] or keys
    by_seed = "seed" in keys and swept != ["seed"]
    fig = Figure(figsize=(4.2 * len(swept) + 1.8, 3.2 * len(shots)))
    first, every_mean = None, []
    for r, k_shots in enumerate(shots):
        for c, key in enumerate(swept):
            # one y axis for every panel (one metric): the shots rows compare at a glance
            ax = fig.add_subplot(len(shots), len(swept), r * len(swept) + c + 1, sharey=first)
            first = first or ax
            xs = list(dict.fromkeys(cols[key]))
            numeric = _numeric(xs)
            xs = sorted(xs) if numeric else xs
            pos = xs if numeric else list(range(len(xs)))
            for i, method in enumerate(methods):
                mean, err = [], []
                for x in xs:
                    sel = [
                        j
                        for j in range(len(value))
                        if cols["method"][j] == method and cols["shots"][j] == k_shots and cols[key][j] == x
                    ]
                    if by_seed:
                        seeds = sorted({cols["seed"][j] for j in sel})
                        per = [value[[j for j in sel if cols["seed"][j] == s]].mean() for s in seeds]
                        mean.append(float(np.mean(per)))
                        err.append(float(np.std(per)))
                    else:
                        mean.append(float(value[sel].mean()) if sel else np.nan)
                        err.append(0.0)
                every_mean += mean
                ax.errorbar(
                    pos,
                    mean,
                    yerr=err if by_seed else None,
                    label=method,
                    marker=MARKERS[i % len(MARKERS)],
                    linestyle=LINESTYLES[(i // len(MARKERS)) % len(LINESTYLES)],
                    capsize=3,
                )
            log_x = numeric and min(xs) > 0 and max(xs) / min(xs) >= 10
            if log_x:
                ax.set_xscale("log")
                plain_log_ticks(ax.xaxis)
            elif numeric and len(xs) <= 12:
                ax.set_xticks(xs)  # the swept values themselves, not 4.25, 4.5, ...
            if not numeric:
                ax.set_xticks(pos, [str(x) for x in xs])
            ax.set_xlabel(key + (" (log scale)" if log_x else ""))
            ax.set_ylabel(textwrap.fill(METRIC_LABELS.get(metric, metric), 34), fontsize=8)
            what = "mean ± std over seeds" if by_seed else "mean over test parties"
            ax.set_title(f"{k_shots}-shot ({what})", fontsize=9)
            ax.grid(alpha=0.3)
    if log_scale_wanted([m for m in every_mean if np.isfinite(m)], metric=metric):
        first.set_yscale("log")  # shared: every panel
        plain_log_ticks(first.yaxis)
    fig.axes[len(swept) - 1].legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0, fontsize=8)
    FigureCanvasAgg(fig)
    fig.tight_layout()
    write_atomic(Path(path), lambda tmp: fig.savefig(tmp, format="png", dpi=100, bbox_inches="tight"))


def plot_metric_vs_time(
    curves: dict[str, tuple[np.ndarray, np.ndarray]],
    points: dict[str, tuple[float, float]],
    metric: str,
    path: Path,
    target: float | None = None,
) -> None:
    """``metric_vs_time.png``: the metric against simulated time (:class:`fusion.system.RoundClock`). ``curves``:
    rounds method -> (sim_time (R,), mean metric (R,)) of the participating parties; ``points``: method -> (sim_time,
    mean 0-shot metric of the novel parties) — a one-shot method's after its pretraining and one upload, a rounds
    method's after its last round; ``target``: the ``[report] target`` line."""
    fig = Figure(figsize=(7, 4.5))
    ax = fig.add_subplot(1, 1, 1)
    names = list(dict.fromkeys([*curves, *points]))
    values = [v for _, m in curves.values() for v in m] + [v for _, v in points.values()]
    for i, method in enumerate(names):
        style = dict(marker=MARKERS[i % len(MARKERS)], color=f"C{i % 10}")
        if method in curves:
            t, mean = curves[method]
            ax.plot(t, mean, label=f"{method} (participating)", markersize=4, linestyle="-", **style)
        if method in points:
            t, v = points[method]
            ax.plot([t], [v], label=f"{method} (novel, 0-shot)", markersize=9, linestyle="none", **style)
    if target is not None:
        ax.axhline(target, color="0.4", linestyle=":", label=f"target {target:g}")
    finite = [v for v in values if np.isfinite(v)]
    if log_scale_wanted(finite):
        ax.set_yscale("log")
        plain_log_ticks(ax.yaxis)
    ax.set_xlabel("simulated time (nominal local steps)")
    ax.set_ylabel(METRIC_LABELS.get(metric, metric), fontsize=8)
    ax.grid(alpha=0.3, which="both")
    ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0, fontsize=8)
    _save(fig, path)
