"""Rounds on the simulated clock (fusion.system.RoundClock): party classes, drop-outs, deadlines, partial stragglers,
overselection and availability inside the rounds, in one process and on the Ray engine; fedbuff's staleness; the
time-to-target of the summary; the config keys."""

from __future__ import annotations

import dataclasses
import os
import signal

import numpy as np
import pytest
import torch

from actors.federated_server import RoundsJob
from actors.party_shard import training_parties
from cluster.config import ConfigError, resolve
from cluster.pipeline import preflight
from cluster.results import with_time_to_target
from cluster.rounds import common_init
from fusion.federated import ALGORITHMS, FederatedConfig
from fusion.federated.local import local_train
from fusion.federated.rounds import run_rounds, timed_round
from fusion.system import PartyClass, RoundClock, SystemConfig
from scenarios import build, make_options
from tests.test_operations import small
from tests.test_rounds_engine import make_shards

SEED, N_TRAIN = 3, 10
CFG = FederatedConfig(rounds=5, clients_per_round=0.5, local_steps=8, lr=5e-6, checkpoint_every=2)  # sine's lr
SCENARIO = build("sine", make_options("sine", {"hidden": [8], "train_points": 20}))
SLOW = (PartyClass("fast", 0.6), PartyClass("slow", 0.4, speed=0.25, drop=0.1, bandwidth=4000.0, latency=1.0))
# every mechanism at once: slow parties, drop-outs, jitter, partial stragglers, overselection, parties offline
BUSY = RoundClock(
    (PartyClass("fast", 0.6, online=0.9), SLOW[1]),
    SystemConfig(round_deadline=24, jitter=0.5, straggler="partial", overselect=1.5),
)


def parties():
    return training_parties(SCENARIO, SEED, np.arange(N_TRAIN))


def in_process(name: str, clock: RoundClock, shards: int = 1, cfg: FederatedConfig = CFG):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as in a shard with one CPU
    try:
        algo = ALGORITHMS[name](cfg)
        return run_rounds(algo, SCENARIO.spec, parties(), common_init(SCENARIO, SEED), SEED, shards=shards, clock=clock)
    finally:
        torch.set_num_threads(threads)


# -- in one process ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["fedavg", "fedbuff"])
def test_class_draws_and_drop_outs_do_not_depend_on_the_sharding(name):
    one, three = in_process(name, BUSY, 1), in_process(name, BUSY, 3)

    for key in one.server:
        np.testing.assert_array_equal(one.server[key], three.server[key], err_msg=key)
    assert one.costs == three.costs
    nominal = in_process(name, RoundClock())
    assert np.isfinite(one.server["w"]).all() and not np.array_equal(one.server["w"], nominal.server["w"])
    assert one.costs.download_bytes > nominal.costs.download_bytes  # overselection sampled more: the clock bit


def test_partial_stragglers_upload_fewer_steps_than_full_parties_and_exactly_those_steps():
    clock = RoundClock(SLOW, SystemConfig(round_deadline=20, straggler="partial"))
    algo, ps = ALGORITHMS["fedavg"](CFG), parties()
    ids = np.arange(N_TRAIN)
    down = algo.broadcast(algo.init_server(SCENARIO.spec, common_init(SCENARIO, SEED), None, SEED))

    part = timed_round(algo, down, None, ps, ids, SCENARIO.spec, CFG, SEED, 0, clock)

    times = part["times"]
    partial = (times.steps > 0) & (times.steps < times.full)
    assert partial.any() and (times.steps[times.class_index == 0] == CFG.local_steps).all()
    for i in np.flatnonzero(partial):  # its upload is local training with only its finished steps
        batch = ps.batch(
            ids[i : i + 1], SCENARIO.spec, dataclasses.replace(CFG, local_steps=int(times.steps[i])), SEED, 0
        )
        alone = local_train(torch.as_tensor(down["w"])[None], batch)
        row = int(np.flatnonzero(part["party_id"] == ids[i])[0])
        np.testing.assert_array_equal(part["uploads"]["w"][row], alone[0].numpy())


def test_tightening_the_deadline_lowers_the_aggregated_uploads():
    cfg = dataclasses.replace(CFG, rounds=8, local_steps=20)
    loose = in_process("fedavg", RoundClock(SLOW, SystemConfig(round_deadline=120, jitter=0.5)), cfg=cfg)
    tight = in_process("fedavg", RoundClock(SLOW, SystemConfig(round_deadline=40, jitter=0.5)), cfg=cfg)

    assert tight.costs.aggregated < loose.costs.aggregated
    assert tight.costs.upload_bytes < loose.costs.upload_bytes
    assert tight.costs.sim_time < loose.costs.sim_time  # rounds end at the deadline when someone is late


def test_fedbuff_weighs_a_stale_update_down_by_one_over_sqrt_one_plus_staleness():
    algo = ALGORITHMS["fedbuff"](CFG, ALGORITHMS["fedbuff"].settings(buffer=2, server_lr=1.0))
    w0 = np.zeros(3, np.float32)
    server = {
        "w": w0,
        "version": np.array([1.0]),  # one server step since the buffered update's party downloaded
        "pending.d": np.array([[4.0, 0.0, 0.0]], np.float32),
        "pending.t": np.array([5.0]),
        "pending.v": np.array([0.0]),
    }
    uploads = {"d": np.array([[0.0, 2.0, 0.0], [0.0, 0.0, 8.0]], np.float32), "v": np.array([[1.0], [1.0]])}

    new, end, used = algo.aggregate_async(server, uploads, np.ones(2), np.array([3, 7]), np.array([6.0, 9.0]), 4.0)

    # arrivals 5 (stale by 1) and 6 make one step at t = 6; the one at 9 waits in the buffer
    np.testing.assert_allclose(new["w"], [4.0 / np.sqrt(2) / 2, 2.0 / 2, 0.0], rtol=1e-6)
    assert (end, used, float(new["version"][0])) == (6.0, 2, 2.0)
    np.testing.assert_array_equal(new["pending.d"], [[0.0, 0.0, 8.0]])
    assert new["pending.t"].tolist() == [9.0] and new["pending.v"].tolist() == [1.0]


def test_time_to_target_goes_by_the_metrics_direction_and_says_never():
    rows = [{"method": "a", "shots": 0, "mean": 0.2}, {"method": "b", "shots": 0, "mean": 0.9}]
    costs = {"a": {"sim_time": 10.0}, "b": {"sim_time": 20.0}}
    curve = [
        {"round": r, "party_id": np.arange(2), "value": np.full(2, v), "loss": np.zeros(2), "sim_time": t}
        for r, v, t in ((0, 0.9, 0.0), (1, 0.5, 4.0), (2, 0.3, 8.0))
    ]
    part = [{"method": "b", "shots": 0, "mean": 0.3, "protocol": "participating", "round": 2}]

    error = with_time_to_target(rows + part, costs, {"b": curve}, 0.5, lower_is_better=True)
    accuracy = with_time_to_target(rows + part, costs, {"b": curve}, 0.5, lower_is_better=False)

    assert [r["time_to_target"] for r in error] == [10.0, float("inf"), 4.0]
    assert [r["time_to_target"] for r in accuracy] == [float("inf"), 20.0, 0.0]


# -- config ----------------------------------------------------------------------------------------------------------


def test_the_round_clocks_keys_need_a_rounds_method_and_an_availability_file_must_read(tmp_path):
    classes = [{"name": "a", "share": 1.0, "online": 0.5}]
    with pytest.raises(ConfigError, match=r"party_classes\['a'\].online: only the rounds methods' clock"):
        resolve({"party_classes": classes, "methods": ["fusion"]})
    with pytest.raises(ConfigError, match=r"system.round_deadline, system.straggler: only the rounds"):
        resolve(
            {
                "party_classes": [{"name": "a", "share": 1.0}],
                "methods": ["fusion"],
                "system": {"round_deadline": 5, "straggler": "partial"},
            }
        )
    ok = resolve({"party_classes": classes, "methods": ["fusion", "fedbuff"], "system": {"round_deadline": 5}})
    assert ok.system.round_deadline == 5.0 and ok.party_classes[0].online == 0.5
    missing = small(
        tmp_path / "x", party_actors=0, party_classes=classes, methods=["fedavg"], system={"availability": "nope.csv"}
    )
    with pytest.raises(ConfigError, match=r"system.availability = 'nope.csv': cannot read it"):
        preflight(missing)
    trace = tmp_path / "trace.csv"
    trace.write_text("who,start,end\na,0,100\n")
    found = small(
        tmp_path / "y", party_actors=0, party_classes=classes, methods=["fedavg"], system={"availability": str(trace)}
    )
    assert preflight(found).clock.trace.windows == {"a": ((0.0, 100.0),)}


# -- on the Ray engine ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def actors():
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    import ray

    from tests.conftest import SESSION_RAY

    if not ray.is_initialized():
        ray.init(**SESSION_RAY)
    made = {n: make_shards(ray, f"clock-test-{n}", n) for n in (1, 3)}
    yield made
    for shards, _, server in made.values():
        for actor in [*shards, server]:
            ray.kill(actor, no_restart=True)


def engine_run(actors, out, job: RoundsJob, hook=None):
    from cluster.checkpoint import Checkpoint
    from cluster.rounds import RoundsEngine

    shards, slices, server = actors
    ckpt = Checkpoint(out, SCENARIO, SEED, N_TRAIN)
    ckpt.dir.mkdir(parents=True)
    lines = []
    trained = RoundsEngine(shards, slices, server, SCENARIO, SEED, ckpt, out.name, lines.append, hook).train(
        job, [job.key]
    )
    return trained, lines


def test_one_and_three_shards_and_the_in_process_runner_agree_bitwise_with_classes(actors, tmp_path):
    job = RoundsJob("fedavg", ALGORITHMS["fedavg"], CFG, clock=BUSY)
    one, _ = engine_run(actors[1], tmp_path / "one", job)
    three, _ = engine_run(actors[3], tmp_path / "three", job)
    local = in_process("fedavg", BUSY, 3)

    for got in (one, three):
        np.testing.assert_array_equal(got.server["w"], local.server["w"])
        assert got.costs == dataclasses.asdict(local.costs)
    assert [p["sim_time"] for p in one.curve] == [p["sim_time"] for p in three.curve]
    assert one.costs["download_bytes"] > in_process("fedavg", RoundClock()).costs.download_bytes  # overselected


KILLED = {
    # nothing kept in the shards between rounds: the retried call recomputes the round from (seed, party id, round)
    "fedbuff": RoundsJob("fedbuff", ALGORITHMS["fedbuff"], CFG, clock=BUSY),
    # momentum kept per party in the shards: the restart loses it and the run rolls back to its last save
    "fedavg_persistent": RoundsJob(
        "fedavg",
        ALGORITHMS["fedavg"],
        dataclasses.replace(CFG, momentum=0.9, optimizer_state="persistent"),
        clock=BUSY,
    ),
}


@pytest.mark.parametrize("key", list(KILLED))
def test_a_shard_killed_mid_round_with_classes_gives_identical_results(ray_session, actors, tmp_path, key):
    job = KILLED[key]
    reference, _ = engine_run(actors[3], tmp_path / "reference", job)
    killed = {}

    def kill(round_: int) -> None:
        if round_ == 3 and not killed:  # round 3's calls are sent; the last save is after round 2
            killed.update(ray_session.get(actors[3][0][1].info.remote()))
            os.kill(killed["pid"], signal.SIGKILL)

    got, lines = engine_run(actors[3], tmp_path / "killed", job, hook=kill)

    after = ray_session.get(actors[3][0][1].info.remote())
    assert killed and after["pid"] != killed["pid"] and after["restarted"]
    if job.keeps_state:
        assert got.restarts >= 1 and any("rolled back to round 2" in line for line in lines), lines
    for k in reference.server:
        np.testing.assert_array_equal(got.server[k], reference.server[k], err_msg=k)
    assert got.costs == reference.costs
