"""The rounds engine on the session's Ray: sharding invariance, equality with the in-process runner, a shard
killed mid-round (the run rolls back to its last save and replays the same bits)."""

from __future__ import annotations

import dataclasses
import os
import signal

import numpy as np
import pytest
import torch

from actors.federated_server import FederatedServerActor, RoundsJob
from actors.party_shard import PartyShardActor, training_parties
from cluster.checkpoint import Checkpoint
from cluster.rounds import RoundsEngine, common_init
from fusion.adapt.train_config import FinetuneConfig, TrainConfig
from fusion.federated import ALGORITHMS, FederatedConfig
from fusion.federated.rounds import run_rounds
from scenarios import build, make_options
from tests.federated_toy import PersonalToy

SEED, N_TRAIN = 3, 10
CFG = FederatedConfig(rounds=5, clients_per_round=0.5, local_steps=5, checkpoint_every=2)
SCENARIO = build("sine", make_options("sine", {"hidden": [8], "train_points": 20}))
JOBS = {
    "fedavg": RoundsJob("fedavg", ALGORITHMS["fedavg"], CFG),
    "personal_toy": RoundsJob("personal_toy", PersonalToy, CFG),
    # momentum kept per party across rounds: the shards hold (and the checkpoint saves) a state FedAvg does not have
    "fedavg_persistent": RoundsJob(
        "fedavg", ALGORITHMS["fedavg"], dataclasses.replace(CFG, momentum=0.9, optimizer_state="persistent")
    ),
}


def make_shards(ray, namespace: str, n_shards: int) -> tuple[list, list[np.ndarray], object]:
    slices = np.array_split(np.arange(N_TRAIN), n_shards)
    shards = [
        PartyShardActor.options(name=f"party-shard-{i}", namespace=namespace, num_cpus=0.5).remote(
            i, SCENARIO, SEED, ids, [], TrainConfig(steps=1), FinetuneConfig(steps=1), name=f"party-shard-{i}"
        )
        for i, ids in enumerate(slices)
    ]
    return shards, slices, FederatedServerActor.options(namespace=namespace).remote(namespace)


def engine_run(actors, out, job: RoundsJob, hook=None) -> dict:
    """Train ``job`` on ``actors`` (shards, slices, server) with checkpoints in ``out``: the final server state,
    personal states, costs and log lines."""
    shards, slices, server = actors
    ckpt = Checkpoint(out, SCENARIO, SEED, N_TRAIN)
    ckpt.dir.mkdir(parents=True)
    lines = []
    engine = RoundsEngine(shards, slices, server, SCENARIO, SEED, ckpt, out.name, lines.append, hook)
    trained = engine.train(job, [job.key])
    personal = ckpt.load_federated(job.key, CFG.rounds)["personal"]
    return {"trained": trained, "personal": personal, "lines": lines}


def in_process(job: RoundsJob):
    parties = training_parties(SCENARIO, SEED, np.arange(N_TRAIN))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as in a shard with one CPU
    try:
        return run_rounds(job.build(), SCENARIO.spec, parties, common_init(SCENARIO, SEED), SEED)
    finally:
        torch.set_num_threads(threads)


def assert_same(a: dict, b_server: dict, b_personal: dict, b_costs: dict) -> None:
    assert a["trained"].server.keys() == b_server.keys()
    for k in b_server:
        np.testing.assert_array_equal(a["trained"].server[k], b_server[k])
    assert a["personal"].keys() == b_personal.keys()
    for k in b_personal:
        np.testing.assert_array_equal(a["personal"][k], b_personal[k])
    assert a["trained"].costs == b_costs


@pytest.fixture(scope="module")
def actors():
    """One shard (and a server), and two shards (and a server), reused by every test of the module."""
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    import ray

    from tests.conftest import SESSION_RAY

    if not ray.is_initialized():
        ray.init(**SESSION_RAY)
    made = {n: make_shards(ray, f"rounds-test-{n}", n) for n in (1, 2)}
    yield made
    for shards, _, server in made.values():
        for actor in [*shards, server]:
            ray.kill(actor, no_restart=True)


@pytest.fixture(scope="module")
def reference(actors, tmp_path_factory):
    """The personal toy on one shard (the reference of the sharding and kill tests)."""
    return engine_run(actors[1], tmp_path_factory.mktemp("rounds") / "one", JOBS["personal_toy"])


@pytest.mark.parametrize("key", ["fedavg", "personal_toy", "fedavg_persistent"])
def test_one_and_two_shards_and_the_in_process_runner_give_the_same_bits(actors, reference, tmp_path, key):
    job = JOBS[key]
    local = in_process(job)
    costs = dataclasses.asdict(local.costs)
    two = engine_run(actors[2], tmp_path / "two", job)
    assert_same(two, local.server, local.store.export(), costs)
    if key == "personal_toy":
        assert_same(reference, local.server, local.store.export(), costs)
        assert len(reference["personal"]["party_id"]) > 0  # parties kept personal models: the test has teeth
    if key == "fedavg_persistent":
        assert "opt.w.buf" in two["personal"]
    assert any(line.startswith(f"{job.key}: round 5/5, 5 parties sampled") for line in two["lines"])


def test_a_shard_killed_mid_round_rolls_back_and_gives_identical_results(ray_session, actors, reference, tmp_path):
    killed = {}

    def kill(round_: int) -> None:
        if round_ == 3 and not killed:  # round 3's calls are sent; the last save is after round 2
            killed.update(ray_session.get(actors[2][0][1].info.remote()))
            os.kill(killed["pid"], signal.SIGKILL)

    got = engine_run(actors[2], tmp_path / "killed", JOBS["personal_toy"], hook=kill)
    after = ray_session.get(actors[2][0][1].info.remote())
    assert killed and after["pid"] != killed["pid"] and after["restarted"] and got["trained"].restarts >= 1
    assert any("rolled back to round 2" in line for line in got["lines"]), got["lines"]
    ref = reference["trained"]
    assert_same(got, ref.server, reference["personal"], ref.costs)
