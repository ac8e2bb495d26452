"""The embedded default stays embedded: a cluster left by ``ray start`` on the machine is never joined.

A bare ``ray.init()`` reads Ray's "current cluster" file and joins that cluster, or hangs retrying it once it
is gone. This module starts a real ``ray start --head``, checks that an embedded connection does not join it,
ends its processes by PID (leaving the stale file behind, as a crashed or stopped cluster does) and runs a
whole embedded run, which must finish. The session's Ray is shut down first (a driver holds one Ray).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cluster.config import ClusterConfig, resolve
from cluster.pipeline import run
from cluster.runtime import connect

CURRENT_CLUSTER = Path("/tmp/ray/ray_current_cluster")
TINY = {
    "scenario": {"name": "sine", "hidden": [8], "train_points": 20},
    "parties": 4,
    "test_parties": 2,
    "shots": [0],
    "methods": ["fusion", "nearest_task"],
    "party_actors": 1,
    "include_dashboard": False,
    "pretrain": {"steps": 20},
    "fusion": {"gp": {"max_steps": 5, "inducing": 4}, "align_iters": 2, "refit_steps": 5},
}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _pids_of(port: int) -> list[int]:
    """Processes of the cluster whose GCS listens on ``port`` (every one names the GCS address or port)."""
    mine = []
    for entry in Path("/proc").iterdir():
        try:
            cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except (OSError, ValueError):
            continue
        if entry.name.isdigit() and (f":{port}" in cmd or f"port={port}" in cmd):
            mine.append(int(entry.name))
    return mine


@pytest.fixture
def stale_cluster():
    """A ``ray start`` head (yields its GCS address), ended by PID; Ray's current-cluster file restored after."""
    import ray

    if ray.is_initialized():
        ray.shutdown()
    saved = CURRENT_CLUSTER.read_bytes() if CURRENT_CLUSTER.exists() else None
    port = _free_port()
    env = {**os.environ, "RAY_AUTH_MODE": "disabled"}
    ray_cli = shutil.which("ray") or str(Path(sys.executable).with_name("ray"))
    subprocess.run(
        [
            ray_cli,
            "start",
            "--head",
            f"--port={port}",
            "--num-cpus=1",
            "--include-dashboard=false",
            "--disable-usage-stats",
        ],
        env=env,
        check=True,
        capture_output=True,
        timeout=120,
    )
    pids = _pids_of(port)
    state = {"address": f"{ray.util.get_node_ip_address()}:{port}", "pids": pids}
    try:
        yield state
    finally:
        for pid in _pids_of(port) + pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        if saved is None:
            CURRENT_CLUSTER.unlink(missing_ok=True)
        else:
            CURRENT_CLUSTER.write_bytes(saved)


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="finds the cluster's processes in /proc (Linux)")
def test_an_embedded_run_neither_joins_a_live_cluster_nor_hangs_on_a_dead_one(stale_cluster, tmp_path, monkeypatch):
    import ray

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    assert stale_cluster["pids"], "the ray start head's processes were not found"
    assert CURRENT_CLUSTER.exists()

    conn = connect(ClusterConfig(include_dashboard=False))  # while the ray start cluster is alive
    try:
        assert conn.owned
        assert ray.get_runtime_context().gcs_address.rpartition(":")[2] != stale_cluster["address"].rpartition(":")[2]
    finally:
        ray.shutdown()

    for pid in stale_cluster["pids"]:  # the cluster dies; its address stays in Ray's current-cluster file
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    time.sleep(0.5)
    assert CURRENT_CLUSTER.exists()
    start = time.perf_counter()
    result = run(resolve({**TINY, "out": str(tmp_path / "run")}), log=lambda _: None)
    assert (result.out / "results.parquet").exists()
    assert time.perf_counter() - start < 180  # a hang on the dead address retries for minutes
