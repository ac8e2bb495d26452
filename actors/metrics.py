"""The run's custom Ray metrics (``ray.util.metrics``), in one place for the actors, tasks and driver.

Every metric carries a ``run`` tag (the run id, i.e. the output folder's name). Prometheus sees
them on each node's metrics endpoint prefixed ``ray_`` (counters also get ``_total``), e.g.
``ray_fusion_cluster_parties_pretrained_total{run="..."}``; the Ray dashboard's Metrics view
shows the same series once Prometheus/Grafana are attached.

Metric objects are created lazily, once per process, on first use. Ray (2.60, measured) drops a
gauge from the endpoint ~20 s after its last ``set``; :func:`keep_gauges_fresh` re-sends this
process's gauges while a run lives (counters and histograms are cumulative and stay).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from functools import cache

from ray.util.metrics import Counter, Gauge, Histogram

PREFIX = "fusion_cluster_"
PARTIES_PRETRAINED = PREFIX + "parties_pretrained"
STAGE_SECONDS = PREFIX + "stage_seconds"
ASSIGNMENT_SECONDS = PREFIX + "assignment_seconds"
META_OBJECTIVE = PREFIX + "meta_objective"
WARM_START_METRIC = PREFIX + "warm_start_metric"
QUARANTINED = PREFIX + "parties_quarantined"
FEDERATED_ROUND = PREFIX + "federated_round"
FEDERATED_PARTIES = PREFIX + "federated_parties_sampled"
FEDERATED_UPLOAD = PREFIX + "federated_upload_bytes"
PARTICIPATING_METRIC = PREFIX + "participating_metric"
PARTICIPATING_LOSS = PREFIX + "participating_train_loss"

COUNTERS = (PARTIES_PRETRAINED, FEDERATED_PARTIES, FEDERATED_UPLOAD)
GAUGES = (
    STAGE_SECONDS,
    META_OBJECTIVE,
    WARM_START_METRIC,
    QUARANTINED,
    FEDERATED_ROUND,
    PARTICIPATING_METRIC,
    PARTICIPATING_LOSS,
)
HISTOGRAMS = (ASSIGNMENT_SECONDS,)


def prometheus_series() -> dict[str, str]:
    """Every series name these metrics take on a node's Prometheus endpoint, mapped to its metric's name
    (``ray_`` + name; counters ``_total``; histograms ``_bucket``, ``_count``, ``_sum``)."""
    out = {f"ray_{name}_total": name for name in COUNTERS}
    out.update({f"ray_{name}": name for name in GAUGES})
    out.update({f"ray_{name}_{part}": name for name in HISTOGRAMS for part in ("bucket", "count", "sum")})
    return out


# Seconds for one chunk of assignment problems (tens of models of ~100 units: milliseconds to seconds).
_ASSIGNMENT_BOUNDARIES = [0.001, 0.003, 0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0]


@cache
def _counter(name: str, description: str, tags: tuple[str, ...]) -> Counter:
    return Counter(name, description=description, tag_keys=tags)


@cache
def _gauge(name: str, description: str, tags: tuple[str, ...]) -> Gauge:
    return Gauge(name, description=description, tag_keys=tags)


@cache
def _histogram(name: str, description: str, tags: tuple[str, ...]) -> Histogram:
    return Histogram(name, description=description, boundaries=_ASSIGNMENT_BOUNDARIES, tag_keys=tags)


_LAST: dict[tuple[str, tuple], tuple[Gauge, float, dict[str, str]]] = {}
_LOCK = threading.Lock()


def _set(gauge: Gauge, name: str, value: float, tags: dict[str, str]) -> None:
    with _LOCK:
        _LAST[(name, tuple(sorted(tags.items())))] = (gauge, value, tags)
    gauge.set(value, tags=tags)


def refresh() -> None:
    """Set every gauge of this process again to its last value."""
    with _LOCK:
        last = list(_LAST.values())
    for gauge, value, tags in last:
        gauge.set(value, tags=tags)


@contextmanager
def keep_gauges_fresh(period: float = 5.0) -> Iterator[None]:
    """While the block runs, a daemon thread re-sends this process's gauges every ``period`` seconds."""
    stop = threading.Event()

    def loop() -> None:
        while not stop.wait(period):
            refresh()

    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=period)


def parties_pretrained(run: str, n: int, shard: int) -> None:
    """A shard finished pretraining ``n`` more parties."""
    _counter(PARTIES_PRETRAINED, "parties whose model finished pretraining", ("run", "shard")).inc(
        n, tags={"run": run, "shard": str(shard)}
    )


def stage_seconds(run: str, stage: str, seconds: float) -> None:
    """Wall time of a pipeline stage (connect, actors, pretrain, fusion, evaluate) on the driver."""
    gauge = _gauge(STAGE_SECONDS, "wall time of a pipeline stage, seconds", ("run", "stage"))
    _set(gauge, STAGE_SECONDS, seconds, {"run": run, "stage": stage})


def assignment_seconds(run: str, seconds: float) -> None:
    """Time to solve one chunk of per-model linear sum assignments (one Ray task)."""
    _histogram(ASSIGNMENT_SECONDS, "seconds to solve one chunk of unit assignments", ("run",)).observe(
        seconds, tags={"run": run}
    )


def meta_objective(run: str, method: str, value: float) -> None:
    """The meta-model's final training objective (GP marginal-likelihood bound per output)."""
    gauge = _gauge(META_OBJECTIVE, "final objective of the fitted meta-model", ("run", "method"))
    _set(gauge, META_OBJECTIVE, value, {"run": run, "method": method})


def warm_start_metric(run: str, method: str, shots: int, value: float) -> None:
    """Mean evaluation metric of a method after ``shots`` fine-tuning shots (over the parties evaluated so far)."""
    gauge = _gauge(WARM_START_METRIC, "mean test metric per method and shots", ("run", "method", "shots"))
    _set(gauge, WARM_START_METRIC, value, {"run": run, "method": method, "shots": str(shots)})


def quarantined(run: str, n: int) -> None:
    """Training parties excluded from fusion (non-finite parameters or function-space outliers)."""
    gauge = _gauge(QUARANTINED, "training parties excluded from fusion (non-finite or outlier models)", ("run",))
    _set(gauge, QUARANTINED, n, {"run": run})


def federated_round(run: str, methods: list[str], round_: int, sampled: int, upload_bytes: int) -> None:
    """A federated round finished: its number (1-based), the parties it sampled and the bytes they uploaded,
    once per method trained by these rounds (e.g. ``fedavg`` and ``fedavg_ft`` share them). A round in which nobody
    uploaded (everyone dropped out or missed the deadline) adds nothing (Ray's counters take only positive steps)."""
    gauge = _gauge(FEDERATED_ROUND, "last finished federated round", ("run", "method"))
    parties = _counter(FEDERATED_PARTIES, "parties sampled in federated rounds", ("run", "method"))
    upload = _counter(FEDERATED_UPLOAD, "bytes uploaded by parties in federated rounds", ("run", "method"))
    for method in methods:
        tags = {"run": run, "method": method}
        _set(gauge, FEDERATED_ROUND, round_, tags)
        if sampled > 0:
            parties.inc(sampled, tags=tags)
        if upload_bytes > 0:
            upload.inc(upload_bytes, tags=tags)


def participating(run: str, method: str, round_: int, metric: float, loss: float) -> None:
    """A scored round of the participating protocol (the learning curve): the mean metric of the training parties'
    own models on their held-out rows and their mean local training loss, before round ``round_`` (NaN means are
    not sent)."""
    tags = {"run": run, "method": method}
    gauges = (
        (PARTICIPATING_METRIC, "mean metric of the training parties' own models on their held-out rows", metric),
        (PARTICIPATING_LOSS, "mean training loss of the training parties' own models on their training rows", loss),
    )
    for name, description, value in gauges:
        if value == value:
            _set(_gauge(name, description, ("run", "method")), name, value, tags)
