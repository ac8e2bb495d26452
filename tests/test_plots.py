"""Plots: a log axis when the methods' means span more than a decade; the PNGs are written."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from cluster import plots


def test_log_scale_only_for_wide_positive_ranges():
    assert plots.log_scale_wanted([0.028, 0.043, 0.71, 2.07])
    assert not plots.log_scale_wanted([0.87, 0.95, 0.30])  # accuracies: one decade at most
    assert not plots.log_scale_wanted([0.0, 0.5, 2.0])  # a zero cannot go on a log axis
    assert plots.log_scale_wanted([0.06, 0.77], metric="nrmse")
    assert not plots.log_scale_wanted([0.06, 0.77], metric="accuracy")  # bounded: 0.75 vs 0.80 must stay readable


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


def _drawn(fig) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """method -> (the line's y (R,), its bars' lower ends (R,), upper ends (R,)) of a metric_vs_shots figure."""
    ax = fig.axes[0]
    out = {}
    for container, label in zip(ax.containers, [t.get_text() for t in ax.get_legend().get_texts()]):
        line, _, (bars,) = container.lines
        ends = np.array([seg[:, 1] for seg in bars.get_segments()])
        out[label] = (np.asarray(line.get_ydata()), ends.min(axis=1), ends.max(axis=1))
    return out


def test_metric_vs_shots_draws_the_median_and_quartiles_with_band_iqr_and_the_mean_by_default():
    from cluster.results import summarize

    # Prepare: skewed per-party accuracies (a few bad parties pull the mean below the median)
    rng = np.random.default_rng(0)
    values = {("fusion", 0): rng.beta(8, 1, 40), ("fusion", 5): rng.beta(9, 1, 40), ("average", 0): rng.beta(2, 5, 40)}
    values[("average", 5)] = rng.beta(3, 3, 40)
    table = pa.table(
        {
            "method": [m for (m, _), v in values.items() for _ in v],
            "shots": [k for (_, k), v in values.items() for _ in v],
            "party_id": [i for v in values.values() for i in range(len(v))],
            "value": np.concatenate(list(values.values())),
        }
    )
    summary = summarize(table, ["fusion", "average"], lower_is_better=False)

    # Execute
    iqr = _drawn(plots.metric_vs_shots_figure(summary, "accuracy", "iqr"))
    sem = _drawn(plots.metric_vs_shots_figure(summary, "accuracy"))

    # Assert: iqr draws the median with bars over the 25th-75th percentile; the default the mean ± its std error
    for method in ("fusion", "average"):
        v = [values[(method, k)] for k in (0, 5)]
        line, lo, hi = iqr[method]
        np.testing.assert_allclose(line, [np.median(x) for x in v])
        np.testing.assert_allclose(lo, [np.percentile(x, 25) for x in v])
        np.testing.assert_allclose(hi, [np.percentile(x, 75) for x in v])
        line, lo, hi = sem[method]
        np.testing.assert_allclose(line, [x.mean() for x in v])
        np.testing.assert_allclose(hi - line, [x.std() / np.sqrt(len(x)) for x in v])
    with pytest.raises(ValueError, match="band must be one of sem, std, iqr"):
        plots.metric_vs_shots_figure(summary, "accuracy", "ci")


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


def test_metric_vs_upload_draws_methods_of_equal_upload_side_by_side_and_names_each_in_the_legend():
    methods = ("fusion", "nearest_task", "average", "cold_start")
    summary = [
        {"method": m, "shots": k, "mean": 0.5 + 0.1 * i, "std": 0.1, "n": 10}
        for i, m in enumerate(methods)
        for k in (0, 5)
    ]
    costs = {m: {"upload_bytes": 0 if m == "cold_start" else 2e5} for m in methods}

    fig = plots.metric_vs_upload_figure(summary, costs, "accuracy")

    strip, ax = fig.axes
    xs = {tuple(line.get_xdata()) for line in ax.lines}  # each method's segment and its two points
    assert len({x[0] for x in xs}) == 3  # three methods uploading 200 kB: three columns, not one
    assert all(1e5 < x[0] < 4e5 for x in xs)
    assert {t.get_text() for t in ax.get_legend().get_texts()} == set(methods)
    assert ax.get_yscale() == "linear"  # accuracy


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


def test_upload_curves_pair_each_scored_rounds_point_with_the_bytes_uploaded_so_far():
    from cluster.results import upload_curves

    point = lambda r, v, up: {
        "round": r,
        "party_id": np.array([0, 1]),
        "value": np.array(v),
        "loss": np.ones(2),
        "upload_bytes": up,
    }  # noqa: E731
    novel = {"round": 5, "protocol": "novel", "party_id": np.array([7]), "value": np.array([0.9])}
    curves = {"fedavg": [point(0, [0.1, 0.3], 0), point(5, [0.5, 0.7], 4000), novel]}

    up, mean = upload_curves(curves)["fedavg"]

    np.testing.assert_allclose(up, [0, 4000])
    np.testing.assert_allclose(mean, [0.2, 0.6])  # the novel protocol's point is not on the curve
