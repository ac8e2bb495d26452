"""Shared fixtures: one Ray instance for the whole test session (starting Ray costs ~4 s).

``ray_session`` starts the instance on first use and reuses it. A test that needs a Ray of its own
(tests/test_multinode.py: a ``ray.cluster_utils.Cluster``) shuts the session's instance down; the
next test that asks for ``ray_session`` starts it again, once.
"""

from __future__ import annotations

import os

import pytest

SESSION_RAY = dict(
    address="local",  # never the cluster `ray start` last left on the machine
    num_cpus=2,
    num_gpus=1,
    include_dashboard=False,
    object_store_memory=256 * 1024**2,
    namespace="fusion-cluster-tests",
    log_to_driver=False,
    logging_level="ERROR",
    # custom metrics reach the node's Prometheus endpoint after ~1 s instead of ~10 s
    _system_config={"metrics_report_interval_ms": 1000},
)


@pytest.fixture
def ray_session():
    """A local Ray with 2 CPUs and 1 logical GPU (for GPU-fraction scheduling on CPU machines)."""
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # tests only; users keep token auth on
    import ray

    if not ray.is_initialized():
        ray.init(**SESSION_RAY)
    return ray


@pytest.fixture(scope="session", autouse=True)
def _shutdown_ray_at_the_end():
    yield
    import sys

    if "ray" in sys.modules and sys.modules["ray"].is_initialized():
        sys.modules["ray"].shutdown()


@pytest.fixture
def scenario_options(tmp_path):
    """Small options for each registered scenario (those that read files get a synthetic folder)."""

    def options(name: str) -> dict:
        if name == "movielens":
            from scenarios.movielens_synthetic import write_synthetic_ml100k

            folder = write_synthetic_ml100k(tmp_path / "ml", n_users=40, n_items=60, n_ratings=1200, seed=1)
            return {"data_dir": str(folder), "dim": 4, "context_items": 15, "als_iters": 5}
        return {"digits": {"train_per_class": 5, "eval_per_class": 5}}.get(name, {})

    return options


_EXIT_STATUS: list[int] = []


def pytest_sessionfinish(session, exitstatus):
    _EXIT_STATUS.append(int(exitstatus))


@pytest.hookimpl(trylast=True)
def pytest_unconfigure(config):
    """Leave without the interpreter's teardown once pytest has reported and every fixture has finished.

    The teardown of a process that hosted Ray's driver threads next to torch's can crash after the last result
    is written (a segfault after the summary with every test passed), turning a green run red. The exit status
    stays pytest's own.
    """
    if _EXIT_STATUS:
        import sys

        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(_EXIT_STATUS[-1])
