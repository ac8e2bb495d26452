"""Plots: a log axis when the methods' means span more than a decade; the PNGs are written."""

from __future__ import annotations

import pyarrow as pa

from cluster import plots


def test_log_scale_only_for_wide_positive_ranges():
    assert plots.log_scale_wanted([0.028, 0.043, 0.71, 2.07])
    assert not plots.log_scale_wanted([0.87, 0.95, 0.30])  # accuracies: one decade at most
    assert not plots.log_scale_wanted([0.0, 0.5, 2.0])  # a zero cannot go on a log axis


def test_metric_vs_shots_and_study_pngs(tmp_path):
    summary = [
        {"method": m, "shots": k, "mean": v * (1 + k / 10), "std": v, "n": 10}
        for m, v in (("fusion", 0.03), ("average", 0.7), ("cold_start", 2.0))
        for k in (0, 10)
    ]
    plots.plot_metric_vs_shots(summary, "nrmse", tmp_path / "shots.png")
    rows = [
        (m, k, v, p, s)
        for m, v in (("fusion", 0.03), ("average", 0.7))
        for k in (0, 5)
        for p in (4, 40)
        for s in (1, 2)
    ]
    table = pa.table(
        {name: [r[i] for r in rows] for i, name in enumerate(("method", "shots", "value", "parties", "seed"))}
    )
    plots.plot_study(table, ["parties", "seed"], "nrmse", tmp_path / "study.png")
    for name in ("shots.png", "study.png"):
        assert (tmp_path / name).read_bytes()[:4] == b"\x89PNG"
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []
