"""System heterogeneity: party classes with their own resources, stragglers and dropouts on a simulated clock."""

from __future__ import annotations

import numpy as np
import pyarrow.parquet as pq
import pytest

from cluster.config import ConfigError, dumps_toml, load_toml, resolve, to_dict
from cluster.pipeline import run
from fusion.system import PartyClass, SystemConfig, party_classes_of, schedule

CLASSES = [
    {"name": "fast", "share": 0.5, "cpus": 1, "gpus": 0.5},
    {"name": "slow", "share": 0.5, "cpus": 0.5, "gpus": 0.25, "speed": 0.5, "drop": 0.2, "actors": 2},
]
SMALL = {
    "scenario": {"name": "sine", "hidden": [16], "train_points": 40},
    "parties": 16,
    "test_parties": 6,
    "shots": [0, 5],
    "seed": 3,
    "methods": ["fusion", "nearest_task", "average"],
    "pretrain": {"steps": 150},
    "finetune": {"steps": 20},
    "fusion": {"gp": {"max_steps": 30, "inducing": 16}, "align_iters": 5, "refit_steps": 100},
    "party_classes": CLASSES,
    "system": {"deadline": 250, "jitter": 0.3},
}


def test_schedule_is_a_function_of_seed_and_party():
    classes = (PartyClass("a", 0.7), PartyClass("b", 0.3, speed=0.25, drop=0.3))
    ids = np.arange(400)
    plan = schedule(classes, SystemConfig(deadline=2500, jitter=0.2), 5, ids, 2000)
    again = schedule(classes, SystemConfig(deadline=2500, jitter=0.2), 5, ids[::-1], 2000)
    np.testing.assert_array_equal(plan.class_index, again.class_index[::-1])
    np.testing.assert_array_equal(plan.left_out_reason, again.left_out_reason[::-1])
    share_b = (plan.class_index == 1).mean()
    assert 0.22 < share_b < 0.38  # shares are honoured (400 draws)
    slow = plan.class_index == 1
    # class a: 2000 steps at speed 1, jitter <= 20% -> <= 2400: always in time and never dropped
    assert (plan.left_out_reason[~slow] == "").all() and (plan.time[~slow] <= 2400).all()
    # class b: 8000+ time units -> late unless dropped first; about 30% dropped
    assert set(plan.left_out_reason[slow]) == {"dropped", "late"}
    assert 0.15 < (plan.left_out_reason[slow] == "dropped").mean() < 0.45
    assert set(plan.reporting) == set(ids[~slow])
    no_deadline = schedule(classes, SystemConfig(), 5, ids, 2000)
    assert set(no_deadline.left_out_reason[slow]) == {"", "dropped"}


def test_one_class_takes_every_party():
    assert (party_classes_of((PartyClass("all", 1.0),), 0, np.arange(50)) == 0).all()


@pytest.mark.parametrize(
    "classes, system, message",
    [
        ([{"name": "a", "share": 0.5}, {"name": "b", "share": 0.4}], {}, "shares must sum to 1"),
        ([{"name": "a", "share": 1.0, "colour": "red"}], {}, r"party_classes\[0\].colour"),
        ([{"name": "a", "share": 1.0, "cpus": -1}], {}, "cpus must be > 0"),
        ([{"name": "a", "share": 1.0, "gpus": -0.5}], {}, "gpus must be >= 0"),
        ([{"name": "a", "share": 1.0, "speed": 0}], {}, "speed must be > 0"),
        ([{"name": "a", "share": 1.0, "drop": 1.5}], {}, "drop must be a probability"),
        ([{"name": "a", "share": 1.0, "actors": 0}], {}, "actors must be >= 1"),
        ([{"share": 1.0}], {}, r"party_classes\[0\].name is required"),
        ([{"name": "a b", "share": 1.0}], {}, "name must be letters"),
        ([{"name": "a", "share": 0.5}, {"name": "a", "share": 0.5}], {}, "names must be distinct"),
        ([{"name": "a", "share": 1.0}], {"deadline": -1}, "system.deadline must be >= 0"),
        ([{"name": "a", "share": 1.0}], {"when": 3}, "system.when"),
        ("fast", {}, "one or more"),
    ],
)
def test_bad_classes_are_config_errors(classes, system, message):
    with pytest.raises(ConfigError, match=message):
        resolve({"scenario": "sine", "party_classes": classes, "system": system})


def test_classes_exclude_party_actors_and_round_trip(tmp_path):
    with pytest.raises(ConfigError, match="party_actors cannot be combined"):
        resolve({"party_classes": CLASSES, "party_actors": 2})
    with pytest.raises(ConfigError, match=r"\[system\] needs \[\[party_classes\]\]"):
        resolve({"system": {"deadline": 10}})
    cfg = resolve(SMALL)
    path = tmp_path / "c.toml"
    path.write_text(dumps_toml(to_dict(cfg)))
    assert resolve(load_toml(path)) == cfg


def _values(out) -> np.ndarray:
    table = pq.read_table(out / "results.parquet").sort_by(
        [("method", "ascending"), ("shots", "ascending"), ("party_id", "ascending")]
    )
    return np.asarray(table["value"].to_pylist())


def test_two_classes_run_with_their_resources_and_record_who_was_left_out(ray_session, tmp_path):
    cfg = resolve({**SMALL, "out": str(tmp_path / "a")})
    logs: list[str] = []
    res = run(cfg, log=logs.append)
    # every shard holds its class's resources (asked of Ray inside the actor)
    by_name = {s["name"]: s["resources"] for s in res.shards}
    assert sorted(by_name) == ["party-shard-fast-0", "party-shard-slow-0", "party-shard-slow-1"]
    assert by_name["party-shard-fast-0"]["CPU"] == 1 and by_name["party-shard-fast-0"]["GPU"] == 0.5
    assert by_name["party-shard-slow-1"]["CPU"] == 0.5 and by_name["party-shard-slow-1"]["GPU"] == 0.25
    # left_out.csv = the schedule: slow parties (300 time units > 250) are late or dropped
    plan = schedule(cfg.party_classes, cfg.system, cfg.seed, np.arange(cfg.parties), cfg.pretrain.steps)
    lines = (res.out / "left_out.csv").read_text().splitlines()
    assert lines[0] == "party_id,class,reason,simulated_time"
    rows = [line.split(",") for line in lines[1:]]
    assert [int(r[0]) for r in rows] == sorted(set(range(cfg.parties)) - set(plan.reporting.tolist()))
    assert {r[1] for r in rows} == {"slow"} and {r[2] for r in rows} <= {"dropped", "late"}
    assert all(float(r[3]) > 250 for r in rows if r[2] == "late")
    assert res.left_out == {"dropped": sum(r[2] == "dropped" for r in rows), "late": sum(r[2] == "late" for r in rows)}
    assert any(line.startswith("left out of fusion:") for line in logs)
    # only reporting parties were pretrained (and reached fusion)
    saved = sorted(int(p.stem.split("-")[1]) for p in (res.out / "checkpoint").glob("pretrained-*.npz"))
    assert set(saved) <= set(plan.reporting.tolist())
    # the same run with other actor counts per class gives the same numbers
    other = [{**CLASSES[0], "actors": 1}, {**CLASSES[1], "actors": 1, "cpus": 1, "gpus": 0.5}]
    res2 = run(resolve({**SMALL, "party_classes": other, "out": str(tmp_path / "b")}), log=lambda _: None)
    np.testing.assert_array_equal(_values(res.out), _values(res2.out))
    assert (res2.out / "left_out.csv").read_text() == (res.out / "left_out.csv").read_text()


def test_a_class_larger_than_the_cluster_is_refused(ray_session, tmp_path):
    too_big = [{"name": "big", "share": 1.0, "cpus": 4}]
    with pytest.raises(ConfigError, match="party class 'big' asks cpus=4"):
        run(resolve({**SMALL, "party_classes": too_big, "out": str(tmp_path / "x")}), log=lambda _: None)
    too_many = [{"name": "a", "share": 0.5, "gpus": 0.75}, {"name": "b", "share": 0.5, "cpus": 0.5, "gpus": 0.5}]
    with pytest.raises(ConfigError, match="party classes need 1.25 GPUs"):
        run(resolve({**SMALL, "party_classes": too_many, "out": str(tmp_path / "x")}), log=lambda _: None)
    assert not (tmp_path / "x").exists()


# -- rounds on the simulated clock (fusion.system.round_plan; in runs: tests/test_rounds_clock.py) -------------------

from fusion.system import online_parties, read_availability, round_plan  # noqa: E402

SLOW = (PartyClass("fast", 0.5), PartyClass("slow", 0.5, speed=0.25, drop=0.1, bandwidth=1e6, latency=2.0))


def test_a_round_plan_is_a_function_of_seed_party_and_round():
    ids = np.arange(40)
    whole = round_plan(SLOW, SystemConfig(round_deadline=300, jitter=0.2), 7, 3, ids, 100, 4000, 4000)
    halves = [
        round_plan(SLOW, SystemConfig(round_deadline=300, jitter=0.2), 7, 3, part, 100, 4000, 4000)
        for part in (ids[:13], ids[13:])
    ]
    assert np.array_equal(whole.finish, np.concatenate([h.finish for h in halves]))
    assert np.array_equal(whole.reason, np.concatenate([h.reason for h in halves]))
    other = round_plan(SLOW, SystemConfig(round_deadline=300, jitter=0.2), 7, 4, ids, 100, 4000, 4000)
    assert not np.array_equal(whole.finish, other.finish)  # a new round draws anew


def test_slow_parties_miss_a_tight_deadline_and_partial_ones_upload_fewer_steps():
    ids = np.arange(200)
    loose = round_plan(SLOW, SystemConfig(round_deadline=1000), 1, 0, ids, 100, 0, 0)
    tight = round_plan(SLOW, SystemConfig(round_deadline=200), 1, 0, ids, 100, 0, 0)
    partial = round_plan(SLOW, SystemConfig(round_deadline=200, straggler="partial"), 1, 0, ids, 100, 0, 0)
    slow = loose.class_index == 1
    assert (loose.reason[slow] == "dropped").mean() > 0.02  # drop 0.1 per round
    assert loose.included[~slow].all() and loose.included.sum() > tight.included.sum()
    assert (tight.reason[slow & (tight.reason != "dropped")] == "late").all()  # 100 steps at speed 0.25 = 402+
    assert loose.duration > tight.duration == 200
    took = partial.steps[slow & partial.included]
    assert len(took) and (took < 100).all() and (took > 0).all()  # fewer steps than full parties
    assert (partial.steps[~slow] == 100).all()


def test_overselection_keeps_the_first_to_finish():
    classes = (PartyClass("a", 1.0),)
    plan = round_plan(classes, SystemConfig(jitter=1.0, overselect=1.5), 2, 0, np.arange(30), 100, 0, 0, needed=20)
    assert plan.included.sum() == 20 and (plan.reason == "surplus").sum() == 10
    assert plan.finish[plan.included].max() <= plan.finish[~plan.included].min()
    assert plan.duration == plan.finish[plan.included].max()


def test_availability_by_class_probability_and_by_trace(tmp_path):
    classes = (PartyClass("a", 0.5, online=0.5), PartyClass("b", 0.5))
    on = online_parties(classes, 3, np.arange(400), 5, 0.0)
    cls = party_classes_of(classes, 3, np.arange(400))
    assert 0.35 < on[cls == 0].mean() < 0.65 and on[cls == 1].all()
    trace = tmp_path / "trace.csv"
    trace.write_text("who,start,end\n# party 7 only early on\n7,0,100\nb,50,60\nb,200,300\n")
    windows = read_availability(str(trace))
    ids = np.arange(20)
    at = lambda t: online_parties(classes, 3, ids, 0, t, windows)  # noqa: E731
    b = party_classes_of(classes, 3, ids) == 1
    assert at(10.0)[7] and not at(150.0)[7]
    assert not at(10.0)[b & (ids != 7)].any() and at(55.0)[b & (ids != 7)].all()
    trace.write_text("who,start,end\n7,5,1\n")
    with pytest.raises(ValueError, match="row 2: a window needs start < end"):
        read_availability(str(trace))
