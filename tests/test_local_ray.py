"""The embedded local Ray's start and stop (cluster/local_ray.py): the dashboard head started beside the raylet
still serves, the agent's HTTP port moves off a taken 52365, and the stop ends every process of the node.

Starts a Ray of its own with the dashboard (the session's Ray has none), so the session's Ray is shut down first.
"""

from __future__ import annotations

import contextlib
import json
import socket
import urllib.request

import pytest

from cluster import local_ray
from cluster.local_ray import psutil  # Ray's own copy (see cluster/local_ray.py)

AGENT_PORT = 52365


@contextlib.contextmanager
def _held(port: int):
    """Listen on ``port`` while the block runs (if someone else holds it already, it is taken anyway)."""
    sock = socket.socket()
    try:
        sock.bind(("", port))
        sock.listen()
    except OSError:
        pass
    try:
        yield
    finally:
        sock.close()


def _running(procs: list[psutil.Process]) -> list[psutil.Process]:
    def alive(p: psutil.Process) -> bool:
        try:
            return p.is_running() and p.status() != psutil.STATUS_ZOMBIE
        except psutil.Error:
            return False

    return [p for p in procs if alive(p)]


@pytest.mark.skipif(not hasattr(socket, "SO_REUSEADDR"), reason="needs POSIX sockets")
def test_a_local_start_serves_the_dashboard_and_its_stop_ends_every_process(monkeypatch):
    import ray

    if ray.is_initialized():
        ray.shutdown()
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")  # tests only; users keep token auth on
    with _held(AGENT_PORT):
        ctx = local_ray.start_local(
            num_cpus=1,
            include_dashboard=True,
            dashboard_host="127.0.0.1",
            object_store_memory=128 * 1024**2,
            log_to_driver=False,
            logging_level="ERROR",
        )
    try:
        node = local_ray._local_node()
        assert "dashboard" in node.all_processes and "log_monitor" not in node.all_processes
        with urllib.request.urlopen(f"http://{ctx.dashboard_url}/api/version", timeout=30) as answer:
            assert json.loads(answer.read())["ray_version"] == ray.__version__
        (info,) = [n for n in ray.nodes() if n["Alive"]]
        assert info["DashboardAgentListenPort"] not in (0, AGENT_PORT)
        assert ray.get(ray.remote(lambda: 1).remote()) == 1
        procs = local_ray._processes_of(node)
        assert len(procs) >= 5  # GCS, raylet, dashboard (and its modules), monitor, agents, the task's worker
    finally:
        local_ray.stop_local()
    assert not ray.is_initialized()
    assert _running(procs) == []
