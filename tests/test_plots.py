"""Plots: a log axis when the methods' means span more than a decade; the PNGs are written."""

from __future__ import annotations

import numpy as np
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


def test_metric_vs_upload_puts_silent_methods_in_their_own_strip_and_draws_curves(tmp_path):
    summary = [
        {"method": m, "shots": k, "mean": v / (1 + k), "std": v / 4, "n": 10}
        for m, v in (("fusion", 0.03), ("fedavg_ft", 0.7), ("cold_start", 2.0))
        for k in (0, 10)
    ]
    costs = {"fusion": {"upload_bytes": 2e5}, "fedavg_ft": {"upload_bytes": 9e6}, "cold_start": {"upload_bytes": 0}}
    curve = (np.linspace(1e5, 9e6, 20), np.linspace(3.0, 0.7, 20))
    plots.plot_metric_vs_upload(summary, costs, "nrmse", tmp_path / "up.png", {"fedavg_ft": curve})
    assert (tmp_path / "up.png").read_bytes()[:4] == b"\x89PNG"


def test_partition_png_for_label_counts_and_for_descriptors(tmp_path):
    rng = np.random.default_rng(0)
    counts = rng.poisson(rng.dirichlet(np.full(10, 0.1), size=30) * 300)
    plots.plot_partition(counts, counts / counts.sum(1, keepdims=True).clip(1), 24, tmp_path / "labels.png")
    plots.plot_partition(None, rng.uniform(size=(30, 2)), 24, tmp_path / "sine.png")
    plots.plot_partition(None, rng.uniform(size=(30, 12)), 24, tmp_path / "wide.png")
    for name in ("labels.png", "sine.png", "wide.png"):
        assert (tmp_path / name).read_bytes()[:4] == b"\x89PNG"


def test_summary_carries_the_tail_of_the_parties():
    from cluster.results import summarize, tail

    values = np.arange(1.0, 21.0)  # 20 parties: the worst 10% are 2 of them
    assert tail(values, lower_is_better=True)["worst10"] == 19.5
    assert tail(values, lower_is_better=False)["worst10"] == 1.5
    assert tail(values)["median"] == 10.5
    table = pa.table(
        {
            "method": ["a"] * 20 + ["b"] * 2,
            "shots": [0] * 22,
            "party_id": list(range(22)),
            "value": [*values, np.nan, np.nan],
        }
    )
    rows = summarize(table, ["a", "b"])
    assert [r["method"] for r in rows] == ["a"]  # b has no finite value: not reported
    assert rows[0]["p10"] == np.percentile(values, 10) and rows[0]["p90"] == np.percentile(values, 90)
