"""A simulated 3-node cluster (``ray.cluster_utils.Cluster``): shards spread over nodes, a node removed mid-run.

A ``Cluster`` needs a Ray of its own, so this module shuts the session's Ray down first (a driver
holds one Ray at a time) and shuts its cluster down at the end; the next test that uses
``ray_session`` starts the session's Ray again (conftest). Doing it in-process rather than in a
subprocess keeps pytest's assertions and failure output, and costs one Ray restart (~4 s).
"""

from __future__ import annotations

import threading

import numpy as np
import pyarrow.parquet as pq
import pytest

from cluster.config import resolve
from cluster.pipeline import run

SMALL = {
    "scenario": {"name": "sine", "hidden": [16], "train_points": 40},
    "parties": 12,
    "test_parties": 4,
    "shots": [0, 5],
    "seed": 9,
    "chunk_parties": 2,
    "pretrain": {"steps": 150},
    "finetune": {"steps": 20},
    "fusion": {"gp": {"max_steps": 30, "inducing": 16}, "align_iters": 5, "refit_steps": 100},
}
# Fast failure detection (RAY-NOTES: node loss noticed in ~4 s instead of ~18 s).
HEALTH = {
    "health_check_initial_delay_ms": 0,
    "health_check_period_ms": 500,
    "health_check_failure_threshold": 3,
    "health_check_timeout_ms": 500,
    "metrics_report_interval_ms": 1000,
}


def values(out) -> np.ndarray:
    table = pq.read_table(out / "results.parquet").sort_by(
        [("method", "ascending"), ("shots", "ascending"), ("party_id", "ascending")]
    )
    return np.asarray(table["value"].to_pylist())


@pytest.fixture
def one_node_values(ray_session, tmp_path):
    """The same run on the session's one-node Ray, with a single party shard."""
    out = tmp_path / "one-node"
    run(resolve({**SMALL, "party_actors": 1, "out": str(out)}), log=lambda _: None)
    return values(out)


@pytest.fixture
def three_nodes(one_node_values):
    import ray
    from ray.cluster_utils import Cluster

    ray.shutdown()  # the session's Ray; conftest's ray_session starts it again for later tests
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "_system_config": HEALTH})
    nodes = [cluster.add_node(num_cpus=1) for _ in range(3)]  # 2 shards + 1 spare for the restart
    cluster.wait_for_nodes()
    yield cluster, nodes
    ray.shutdown()
    cluster.shutdown()


def test_shards_spread_over_nodes_and_survive_a_node_loss(three_nodes, one_node_values, tmp_path):
    import ray

    cluster, nodes = three_nodes
    out = tmp_path / "three-nodes"
    namespace = f"fusion-cluster-{out.name}"
    placed, removed, lines, started = {}, [], [], []

    def remove_node_of_shard_0() -> None:
        info = ray.get(ray.get_actor("party-shard-0", namespace=namespace).info.remote())
        victim = next(n for n in nodes if n.node_id == info["node_id"])
        cluster.remove_node(victim, allow_graceful=False)
        removed.append(info["node_id"])

    def log(line: str) -> None:
        lines.append(line)
        if " party shards on " in line:
            shards = [ray.get_actor(f"party-shard-{i}", namespace=namespace) for i in range(2)]
            placed.update({i: ray.get(s.info.remote())["node_id"] for i, s in enumerate(shards)})
        if line.startswith("pretrain:") and not started:  # after the first finished pretraining call
            started.append(threading.Thread(target=remove_node_of_shard_0, daemon=True))
            started[0].start()

    cfg = resolve({**SMALL, "party_actors": 2, "address": cluster.address, "out": str(out)})
    run(cfg, log=log)
    assert len(set(placed.values())) == 2  # one shard per node: each node has 1 CPU
    assert any(" party shards on 2 node(s) " in line for line in lines)
    assert removed == [placed[0]]
    assert "party shards restarted during the run (their calls were retried): [0]" in lines
    np.testing.assert_array_equal(values(out), one_node_values)
