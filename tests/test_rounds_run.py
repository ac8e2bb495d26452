"""Federated methods in a whole run: beside one-shot fusion, costs.csv, the upload plot, and --resume mid-rounds."""

from __future__ import annotations

import csv
import json

import numpy as np
import pyarrow.parquet as pq
import pytest

from cluster.cli import main
from cluster.pipeline import run
from tests.test_operations import SMALL, small, values

FEDERATED = {
    "methods": ["fusion", "nearest_task", "cold_start", "fedavg", "fedavg_ft"],
    "federated": {"rounds": 6, "clients_per_round": 0.5, "local_steps": 20, "checkpoint_every": 2},
    "report": {"target": 10.0},  # an nRMSE every method reaches at once: the times are the clock's own
}


def costs(out) -> dict[str, dict]:
    with open(out / "costs.csv") as fh:
        return {row.pop("method"): row for row in csv.DictReader(fh)}


@pytest.fixture(scope="module")
def federated_run(tmp_path_factory):
    import os

    import ray

    from tests.conftest import SESSION_RAY

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    if not ray.is_initialized():
        ray.init(**SESSION_RAY)
    out = tmp_path_factory.mktemp("fed") / "reference"
    lines = []
    result = run(small(out, **FEDERATED), log=lines.append)
    return {"out": out, "values": values(out), "lines": lines, "result": result}


def test_federated_methods_run_beside_fusion_and_costs_are_written(federated_run):
    out = federated_run["out"]
    table = pq.read_table(out / "results.parquet")
    got = {(m, k) for m, k in zip(table["method"].to_pylist(), table["shots"].to_pylist())}
    assert got == {(m, k) for m in FEDERATED["methods"] for k in SMALL["shots"]}
    assert (out / "metric_vs_upload.png").stat().st_size > 0
    rows = costs(out)
    assert list(rows) == FEDERATED["methods"]
    n_bytes = 4 * (1 * 16 + 16 + 16 * 1 + 1)  # sine 1-16-1
    assert rows["fusion"] == rows["nearest_task"] | {"wall_s": rows["fusion"]["wall_s"]}
    assert int(rows["fusion"]["upload_bytes"]) == 12 * n_bytes and int(rows["fusion"]["rounds"]) == 1
    assert int(rows["fusion"]["download_bytes"]) == 4 * n_bytes
    assert int(rows["fusion"]["party_steps"]) == 12 * 150
    # the nominal clock: the pretraining's 150 steps, then an upload that takes no time; 12 models fused
    assert (float(rows["fusion"]["sim_time"]), int(rows["fusion"]["aggregated"])) == (150.0, 12)
    assert rows["cold_start"] == {
        k: "0" for k in ("rounds", "upload_bytes", "download_bytes", "party_steps", "aggregated", "sim_time")
    } | {"wall_s": "0.000"}
    fed = rows["fedavg"]  # 6 rounds of 6 sampled parties, each 20 local steps; + the 4 novel parties' download
    assert (int(fed["rounds"]), int(fed["upload_bytes"]), int(fed["party_steps"])) == (6, 36 * n_bytes, 36 * 20)
    assert int(fed["download_bytes"]) == (36 + 4) * n_bytes
    assert (int(fed["aggregated"]), float(fed["sim_time"])) == (36, 6 * 20.0)  # every upload, 20 steps a round
    assert rows["fedavg_ft"] == fed  # one training serves both
    assert int(rows["fusion"]["upload_bytes"]) < int(fed["upload_bytes"])
    assert any(line.startswith("fedavg: round 6/6, 6 parties sampled") for line in federated_run["lines"])
    stages = json.loads((out / "timing.json").read_text())["stages_s"]
    assert {"connect", "actors", "pretrain", "fusion", "federated", "evaluate", "write"} <= set(stages)


def test_rounds_parquet_and_the_summary_carry_the_simulated_clock(federated_run):
    out = federated_run["out"]
    table = pq.read_table(out / "rounds.parquet")
    cols = {k: np.asarray(table[k].to_pylist()) for k in ("method", "round", "protocol", "sim_time")}
    fed = (cols["method"] == "fedavg") & (cols["protocol"] == "participating")
    by_round = dict(zip(cols["round"][fed].tolist(), cols["sim_time"][fed].tolist()))
    assert by_round[0] == 0.0 and by_round[6] == 6 * 20.0  # 20 nominal steps a round
    assert list(by_round.values()) == sorted(by_round.values())
    with open(out / "summary.csv") as fh:
        rows = list(csv.DictReader(fh))
    times = {(r["method"], r["shots"], r["protocol"]): r["time_to_target"] for r in rows}
    assert times[("fusion", "0", "novel")] == "150" and times[("fedavg", "0", "novel")] == "120"
    assert times[("fedavg", "0", "participating")] == "0"  # the first point already reaches 10
    assert (out / "metric_vs_time.png").stat().st_size > 0


def test_fedavg_without_fine_tuning_scores_its_global_model_at_every_k(federated_run):
    table = pq.read_table(federated_run["out"] / "results.parquet").sort_by([("party_id", "ascending")])
    cols = {k: np.asarray(table[k].to_pylist()) for k in ("method", "shots", "value")}
    at = lambda m, k: cols["value"][(cols["method"] == m) & (cols["shots"] == k)]  # noqa: E731
    np.testing.assert_array_equal(at("fedavg", 0), at("fedavg", 5))
    np.testing.assert_array_equal(at("fedavg_ft", 0), at("fedavg", 0))  # the same global model at 0 shots
    assert not np.array_equal(at("fedavg_ft", 5), at("fedavg", 5))  # fedavg_ft fine-tunes it


def test_a_run_interrupted_mid_rounds_resumes_from_the_last_saved_round(ray_session, federated_run, tmp_path, capsys):
    out = tmp_path / "interrupted"

    def interrupt(line: str) -> None:
        if line.startswith("fedavg: round 3/6"):
            raise KeyboardInterrupt  # Ctrl-C after round 3: the last save is after round 2

    with pytest.raises(KeyboardInterrupt):
        run(small(out, **FEDERATED), log=interrupt)
    assert (out / "checkpoint" / "federated-fedavg.npz").is_file()
    assert main(["run", "--resume", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "fedavg: round 2/6 loaded from the checkpoint" in printed and "pretrain:" not in printed
    assert "fedavg: round 3/6" in printed
    np.testing.assert_array_equal(values(out), federated_run["values"])
    ref = costs(federated_run["out"])
    for method, row in costs(out).items():
        assert {k: v for k, v in row.items() if k != "wall_s"} == {
            k: v for k, v in ref[method].items() if k != "wall_s"
        }


def test_one_shot_methods_and_local_are_scored_on_the_participating_parties_too(federated_run):
    out = federated_run["out"]
    table = pq.read_table(out / "rounds.parquet")
    cols = {k: np.asarray(table[k].to_pylist()) for k in ("method", "round", "protocol", "party_id", "value")}
    part = cols["protocol"] == "participating"
    rounds_of = {m: sorted(set(cols["round"][part & (cols["method"] == m)].tolist())) for m in set(cols["method"])}
    # one point each: the one-shot methods after their one round, `local` (each party's own model) at round 0
    assert rounds_of["fusion"] == rounds_of["nearest_task"] == [1] and rounds_of["local"] == [0]
    assert "cold_start" not in rounds_of and len(rounds_of["fedavg"]) > 2
    for m in ("fusion", "nearest_task", "local"):
        sel = part & (cols["method"] == m)
        assert sorted(cols["party_id"][sel].tolist()) == list(range(12)) and np.isfinite(cols["value"][sel]).all()
    at = lambda m: cols["value"][part & (cols["method"] == m)]  # noqa: E731 (party-id order)
    assert not np.allclose(at("nearest_task"), at("local"))  # a lookup never copies the party's own model
    novel = cols["protocol"] == "novel"
    assert set(cols["round"][novel & (cols["method"] == "fusion")].tolist()) == {1}
    with open(out / "summary.csv") as fh:
        rows = [r for r in csv.DictReader(fh) if r["protocol"] == "participating"]
    assert {r["method"]: r["round"] for r in rows} == {
        "fusion": "1",
        "nearest_task": "1",
        "fedavg": "6",
        "fedavg_ft": "6",
        "local": "0",
    }
    assert (out / "metric_vs_round.png").stat().st_size > 0


def test_the_one_shot_methods_participating_scores_are_a_stage_of_their_own_and_can_be_left_out(
    federated_run, tmp_path
):
    timing = json.loads((federated_run["out"] / "timing.json").read_text())["stages_s"]
    assert list(timing)[list(timing).index("evaluate") + 1] == "participating"
    out = tmp_path / "without"
    cfg = {**FEDERATED, "methods": ["fusion", "fedavg"], "report": {"participating_oneshot": False}}
    run(small(out, **cfg), log=lambda line: None)
    table = pq.read_table(out / "rounds.parquet")
    part = {m for m, p in zip(table["method"].to_pylist(), table["protocol"].to_pylist()) if p == "participating"}
    assert part == {"fedavg"}
    assert "participating" not in json.loads((out / "timing.json").read_text())["stages_s"]
