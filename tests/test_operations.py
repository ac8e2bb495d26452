"""Operating a run on the session's Ray: metrics on the Prometheus endpoint, faults, quarantine, resume.

Every faulted or resumed run is compared with one unfaulted reference run of the same config.
"""

from __future__ import annotations

import os
import shutil
import signal
import threading
import time
import urllib.request

import numpy as np
import pyarrow.parquet as pq
import pytest

from actors import metrics
from cluster.cli import main
from cluster.config import resolve
from cluster.pipeline import run
from cluster.runtime import metrics_url
from fusion.io import load_warm_starter

SMALL = {
    "scenario": {"name": "sine", "hidden": [16], "train_points": 40},
    "parties": 12,
    "test_parties": 4,
    "shots": [0, 5],
    "seed": 5,
    "party_actors": 2,
    "cpus_per_actor": 0.5,
    "chunk_parties": 2,  # 3 pretraining calls per shard: faults land between and inside them
    "pretrain": {"steps": 150},
    "finetune": {"steps": 20},
    "fusion": {"gp": {"max_steps": 30, "inducing": 16}, "align_iters": 5, "refit_steps": 100},
}
EXPECTED_METRICS = [
    f"ray_{metrics.PARTIES_PRETRAINED}_total",
    f"ray_{metrics.STAGE_SECONDS}",
    f"ray_{metrics.ASSIGNMENT_SECONDS}_count",
    f"ray_{metrics.META_OBJECTIVE}",
    f"ray_{metrics.WARM_START_METRIC}",
    f"ray_{metrics.QUARANTINED}",
]


def small(out, **over):
    return resolve({**SMALL, "out": str(out), **over})


def values(out) -> np.ndarray:
    table = pq.read_table(out / "results.parquet").sort_by(
        [("method", "ascending"), ("shots", "ascending"), ("party_id", "ascending")]
    )
    return np.asarray(table["value"].to_pylist())


def scrape(run_id: str, names: list[str], timeout: float = 15.0) -> dict[str, float]:
    """One value per metric name for this run from the node's Prometheus endpoint (polls until all appear)."""
    url, found, deadline = metrics_url(), {}, time.monotonic() + timeout
    while time.monotonic() < deadline and len(found) < len(names):
        text = urllib.request.urlopen(url, timeout=5).read().decode()
        for line in text.splitlines():
            name = line.split("{", 1)[0]
            if name in names and f'run="{run_id}"' in line:
                found.setdefault(name, float(line.rsplit(" ", 1)[1]))
        time.sleep(0.5)
    return found


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The unfaulted run; its custom metrics are scraped while it evaluates (the shards still live)."""
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    import ray

    from tests.conftest import SESSION_RAY

    if not ray.is_initialized():
        ray.init(**SESSION_RAY)
    out = tmp_path_factory.mktemp("ops") / "reference"
    scraped, lines = {}, []

    def log(line: str) -> None:
        lines.append(line)
        if line.startswith("fine-tune + evaluate:") and not scraped:
            scraped.update(scrape(out.name, EXPECTED_METRICS))

    result = run(small(out), log=log)
    return {"out": out, "values": values(out), "scraped": scraped, "lines": lines, "result": result}


def test_custom_metrics_reach_the_prometheus_endpoint(reference):
    assert any(line.startswith("Prometheus metrics (this node): http://") for line in reference["lines"])
    scraped = reference["scraped"]
    assert sorted(scraped) == sorted(EXPECTED_METRICS)
    assert scraped[f"ray_{metrics.PARTIES_PRETRAINED}_total"] >= 2  # one shard's calls at least (tagged by shard)
    assert scraped[f"ray_{metrics.ASSIGNMENT_SECONDS}_count"] >= 1
    assert scraped[f"ray_{metrics.QUARANTINED}"] == 0
    assert np.isfinite(scraped[f"ray_{metrics.META_OBJECTIVE}"])


def test_progress_is_reported_per_party(reference):
    progress = [line for line in reference["lines"] if line.startswith("pretrain:")]
    assert progress and progress[-1].startswith("pretrain: 12/12 parties")
    assert any(line.startswith("fine-tune + evaluate: 4/4 parties") for line in reference["lines"])


def test_killing_a_shard_process_mid_pretraining_gives_identical_results(reference, tmp_path):
    import ray

    out = tmp_path / "killed"
    namespace = f"fusion-cluster-{out.name}"
    killed, later = {}, {}

    def kill_soon() -> None:
        time.sleep(0.3)  # the shards are pretraining their first call now
        shard = ray.get_actor("party-shard-1", namespace=namespace)
        killed.update(ray.get(shard.info.remote()))
        os.kill(killed["pid"], signal.SIGKILL)

    def log(line: str) -> None:
        if " party shards on " in line:
            threading.Thread(target=kill_soon, daemon=True).start()
        if line.startswith("fusion: fitted"):
            later.update(ray.get(ray.get_actor("party-shard-1", namespace=namespace).info.remote()))

    lines = []
    run(small(out), log=lambda line: (lines.append(line), log(line)))
    assert killed and later["pid"] != killed["pid"] and later["restarted"]
    assert "party shards restarted during the run (their calls were retried): [1]" in lines
    np.testing.assert_array_equal(values(out), reference["values"])
    assert (out / "summary.csv").read_text() == (reference["out"] / "summary.csv").read_text()


@pytest.mark.slow  # the same restart path as the kill test above; kept out of the default suite for time
def test_crash_fault_hook_restarts_the_shard_with_identical_results(ray_session, reference, tmp_path, capsys):
    out = tmp_path / "crashed"
    toml = tmp_path / "crash.toml"
    cfg = small(out, faults={"crash_shard": 0})
    from cluster.config import dumps_toml, to_dict

    toml.write_text(dumps_toml(to_dict(cfg)))
    assert main(["run", str(toml)]) == 0
    assert "party shards restarted during the run (their calls were retried): [0]" in capsys.readouterr().out
    np.testing.assert_array_equal(values(out), reference["values"])


def test_nan_parties_are_quarantined_and_the_run_goes_on(ray_session, tmp_path):
    out = tmp_path / "nan"
    lines = []
    result = run(small(out, faults={"nan_parties": [2, 7]}), log=lines.append)
    assert result.quarantined == [2, 7]
    assert (
        out / "quarantined.csv"
    ).read_text() == "party_id,reason\n2,non-finite parameters\n7,non-finite parameters\n"
    assert any(line.startswith("quarantined 2 training parties") for line in lines)
    table = pq.read_table(out / "results.parquet")
    assert np.isfinite(table["value"].to_numpy()).all() and table.num_rows == 5 * 2 * 4
    model, spec = load_warm_starter(out / "fusion_model.pt")
    assert np.isfinite(model.predict(np.array([[1.0, 0.9]]))).all()


def test_interrupted_run_resumes_without_retraining_and_matches(ray_session, reference, tmp_path, capsys):
    out = tmp_path / "interrupted"

    def interrupt(line: str) -> None:
        if line.startswith("pretrain:"):
            raise KeyboardInterrupt  # Ctrl-C after the first finished pretraining call

    with pytest.raises(KeyboardInterrupt):
        run(small(out), log=interrupt)
    saved = sorted(p.name for p in (out / "checkpoint").iterdir())
    assert saved and all(n.startswith("pretrained-") for n in saved) and not (out / "results.parquet").exists()
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]

    assert main(["run", "--resume", str(out)]) == 0
    printed = capsys.readouterr().out
    n_saved = sum(len(np.load(out / "checkpoint" / n)["party_id"]) for n in saved)
    assert f"checkpoint: {n_saved} of 12 training parties pretrained already" in printed
    assert f"pretrain: {12 - n_saved}/{12 - n_saved} parties" in printed  # only the rest was trained
    np.testing.assert_array_equal(values(out), reference["values"])

    # Interrupted after the fusion stage: nothing is pretrained or fitted again.
    again = tmp_path / "after-fusion"
    again.mkdir()
    shutil.copy(out / "config.toml", again / "config.toml")
    shutil.copytree(out / "checkpoint", again / "checkpoint")
    assert main(["run", "--resume", str(again)]) == 0
    printed = capsys.readouterr().out
    assert "fusion: fusion, fusion_noalign, nearest_task, average loaded from the checkpoint" in printed
    assert "pretrain:" not in printed
    np.testing.assert_array_equal(values(again), reference["values"])
