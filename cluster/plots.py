"""PNG plots of a run, written next to results.parquet (matplotlib's Agg canvas; no pyplot, no display)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import NullFormatter

from fusion.params import forward
from fusion.strategies import WarmStarter
from scenarios import Scenario

SHOTS_PNG = "metric_vs_shots.png"
WARM_STARTS_PNG = "warm_starts.png"
UPLOAD_PNG = "metric_vs_upload.png"


def _save(fig: Figure, path: Path) -> None:
    FigureCanvasAgg(fig)
    fig.savefig(path, dpi=110, bbox_inches="tight")


def plot_metric_vs_shots(summary: list[dict], metric: str, path: Path) -> None:
    """One line per method: the mean metric against the shots, error bars = std over the test parties."""
    fig = Figure(figsize=(6, 4))
    ax = fig.add_subplot()
    for method in dict.fromkeys(r["method"] for r in summary):
        rows = sorted((r for r in summary if r["method"] == method), key=lambda r: r["shots"])
        ax.errorbar(
            [r["shots"] for r in rows],
            [r["mean"] for r in rows],
            yerr=[r["std"] for r in rows],
            label=method,
            marker="o",
            capsize=3,
        )
    ax.set_xlabel("fine-tuning shots")
    ax.set_ylabel(f"{metric} (mean ± std over test parties)")
    ax.legend()
    ax.grid(alpha=0.3)
    _save(fig, path)


def plot_metric_vs_upload(summary: list[dict], costs: dict[str, dict], metric: str, path: Path) -> None:
    """Each method's mean metric at 0 shots (circle) and at the largest k (square) against its total upload bytes
    (log x), joined and labelled. Methods that upload nothing (cold_start) sit at the left edge, marked "0 B"."""
    fig = Figure(figsize=(6.5, 4.5))
    ax = fig.add_subplot()
    k_max = max(r["shots"] for r in summary)
    sent = [c["upload_bytes"] for c in costs.values() if c["upload_bytes"] > 0]
    floor = min(sent) / 10 if sent else 1.0
    stacked: dict[float, int] = {}  # labels of methods with the same upload are stacked, not overprinted
    for i, method in enumerate(dict.fromkeys(r["method"] for r in summary)):
        mean = {r["shots"]: r["mean"] for r in summary if r["method"] == method}
        up = costs[method]["upload_bytes"]
        x = up if up > 0 else floor
        j = stacked[x] = stacked.get(x, -1) + 1
        ks = sorted({0, k_max} & set(mean))
        color = f"C{i % 10}"
        ax.plot([x] * len(ks), [mean[k] for k in ks], color=color, lw=1, alpha=0.6)
        for k in ks:
            ax.plot(x, mean[k], marker="o" if k == 0 else "s", color=color, ls="none")
        label = method + ("" if up > 0 else " (0 B)")
        ax.annotate(
            label, (x, mean[ks[-1]]), textcoords="offset points", xytext=(5, 3 + 9 * j), fontsize=7, color=color
        )
    ax.set_xscale("log")
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel("total upload (bytes, log scale)")
    ax.set_ylabel(f"{metric} (mean over test parties)")
    ax.set_title(f"circles: 0 shots, squares: {k_max} shots", fontsize=9)
    ax.grid(alpha=0.3, which="both")
    _save(fig, path)


def plot_warm_starts(
    scenario: Scenario, fitted: dict[str, WarmStarter], seed: int, party_ids: list[int], path: Path
) -> bool:
    """The zero-shot warm start of each method against the true curve, one panel per test party.

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
        for method, starter in fitted.items():
            params = torch.as_tensor(starter.predict(np.asarray([desc])))
            pred = forward(params, scenario.spec, torch.as_tensor(x)).detach().numpy()[0, :, 0]
            ax.plot(x[:, 0], pred, lw=1.2, label=method)
        ax.set_title(f"party {pid}: descriptor {np.round(desc, 2).tolist()}")
        ax.set_xlabel("x")
    fig.axes[0].legend(fontsize=7)
    _save(fig, path)
    return True
