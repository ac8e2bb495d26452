"""``fusion-cluster study``: a 2x2 grid on the session's Ray, its table and plot, resume, bad study files."""

from __future__ import annotations

import shutil

import pyarrow.parquet as pq
import pytest

from cluster.cli import main
from cluster.config import ConfigError
from cluster.study import STUDY_PARQUET, STUDY_PNG, read_study, run_study
from tests.test_multinode import SMALL

BASE = {**{k: v for k, v in SMALL.items() if k not in ("parties", "seed")}, "test_parties": 2, "shots": [0, 5]}
BASE["party_actors"] = 1  # one shard per point: fewer processes to start


def _toml_value(v) -> str:
    return str(v).replace("'", '"') if not isinstance(v, str) else f'"{v}"'


def _study_file(tmp_path, grid: str) -> str:
    lines = ["[base]"] + [f"{k} = {_toml_value(v)}" for k, v in BASE.items() if not isinstance(v, dict)]
    lines.append('methods = ["fusion", "average"]')
    for table, values in BASE.items():
        if isinstance(values, dict):
            lines.append(f"[base.{table}]")
            lines += [f"{k} = {_toml_value(v)}" for k, v in values.items() if not isinstance(v, dict)]
            for sub, sv in values.items():
                if isinstance(sv, dict):
                    lines.append(f"[base.{table}.{sub}]")
                    lines += [f"{k} = {_toml_value(v)}" for k, v in sv.items()]
    path = tmp_path / "study.toml"
    path.write_text("\n".join([*lines, "[grid]", grid]) + "\n")
    return str(path)


def test_two_by_two_study_and_resume(ray_session, tmp_path):
    path, out = _study_file(tmp_path, "parties = [4, 6]\nseed = [1, 2]"), tmp_path / "study"
    logs: list[str] = []
    run_study(path, out, log=logs.append)

    table = pq.read_table(out / STUDY_PARQUET)
    points = {(p, s) for p, s in zip(table["parties"].to_pylist(), table["seed"].to_pylist())}
    assert points == {(4, 1), (4, 2), (6, 1), (6, 2)}
    assert set(table["run_id"].to_pylist()) == {
        "parties=4,seed=1",
        "parties=4,seed=2",
        "parties=6,seed=1",
        "parties=6,seed=2",
    }
    assert table.num_rows == 4 * 2 * 2 * 2  # points x methods x shots x test parties
    assert (out / STUDY_PNG).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temp files left

    kept = {p.name: (p / "results.parquet").stat().st_mtime_ns for p in out.iterdir() if p.is_dir()}
    shutil.rmtree(out / "parties=6,seed=1")  # an interruption that lost one point
    logs.clear()
    run_study(path, out, resume=True, log=logs.append)
    assert sum("finished already, skipped" in line for line in logs) == 3
    for name, mtime in kept.items():
        if name != "parties=6,seed=1":
            assert (out / name / "results.parquet").stat().st_mtime_ns == mtime  # not rerun
    again = pq.read_table(out / STUDY_PARQUET)
    assert again.num_rows == table.num_rows
    assert _values(again, "parties=6,seed=1") == _values(table, "parties=6,seed=1")  # the rerun point: same numbers
    assert _values(again, "parties=4,seed=2") == _values(table, "parties=4,seed=2")


def _values(table, point: str) -> list[float]:
    return [v for r, v in zip(table["run_id"].to_pylist(), table["value"].to_pylist()) if r == point]


@pytest.mark.parametrize(
    ("grid", "message"),
    [
        ("", "[grid] must list at least one run key"),
        ("seed = 3", "grid.seed must be a non-empty list"),
        ("seed = []", "grid.seed must be a non-empty list"),
        ("seed = [1, 1]", "lists a value twice"),
        ("out = ['a', 'b']", "out is set by the study command"),
        ("bogus = [1, 2]", "study point bogus=1: unknown key"),
        ('"scenario.bogus" = [1, 2]', "unknown key(s) scenario.bogus"),
        ("parties = [1, 4]", "study point parties=1: parties must be >= 2"),
    ],
)
def test_bad_study_files_are_one_clear_error(tmp_path, capsys, grid, message):
    path = _study_file(tmp_path, grid)
    assert main(["study", path, "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("fusion-cluster: error: ") and message in err and err.count("\n") == 1
    assert not (tmp_path / "o").exists()


def test_resume_refuses_another_study(tmp_path):
    out = tmp_path / "o"
    out.mkdir()
    (out / "study.toml").write_text("[grid]\nseed = [1, 2]\n")
    other = tmp_path / "other.toml"
    other.write_text("[grid]\nseed = [1, 3]\n")
    with pytest.raises(ConfigError, match="is not the study that folder holds"):
        run_study(other, out, resume=True)
    with pytest.raises(ConfigError, match="--resume needs --out"):
        run_study(other, None, resume=True)


def test_grid_accepts_dotted_and_nested_keys(tmp_path):
    path = tmp_path / "s.toml"
    path.write_text('[grid]\n"scenario.noise" = [0.0, 0.1]\nscenario.train_points = [20]\n')
    _, grid = read_study(path)
    assert grid == {"scenario.noise": [0.0, 0.1], "scenario.train_points": [20]}
    path.write_text("[base]\nparties = 4\n[other]\n")
    with pytest.raises(ConfigError, match="unknown table"):
        read_study(path)


def test_data_dir_of_the_study_command_is_every_points_data_dir(tmp_path, capsys):
    path = tmp_path / "s.toml"
    path.write_text('[base.scenario]\nname = "digits-split"\nsource = "mnist"\n[grid]\nseed = [1]\n')
    assert main(["study", str(path), "--check", "--data-dir", str(tmp_path), "--out", str(tmp_path / "o")]) == 2
    assert f"scenario.data_dir = '{tmp_path}': no MNIST idx files" in capsys.readouterr().err


# -- [tune]: settings chosen on validation parties, then rerun on fresh seeds ----------------------------------------

TUNE_BASE = """[base]
parties = 8
test_parties = 2
shots = [0, 5]
methods = ["nearest_task", "fedavg_ft"]
party_actors = 1
[base.scenario]
name = "sine"
hidden = [16]
train_points = 40
[base.pretrain]
steps = 100
[base.finetune]
steps = 10
[base.federated]
rounds = 3
clients_per_round = 0.5
local_steps = 5
"""


def _tune_file(tmp_path, tune: str, grid: str = "seed = [1]") -> str:
    path = tmp_path / "tuned.toml"
    path.write_text(f"{TUNE_BASE}[grid]\n{grid}\n{tune}\n")
    return str(path)


def test_tuning_chooses_the_best_validation_score_and_never_draws_a_test_party(ray_session, tmp_path):
    import csv
    import tomllib

    import numpy as np

    tune = '[tune]\nvalidation_parties = 3\nseeds = [11]\nshots = 5\n[tune.grid]\n"federated.lr" = [1e-6, 3e-5]'
    out = tmp_path / "study"
    logs: list[str] = []

    run_study(_tune_file(tmp_path, tune), out, log=logs.append)

    # the tuning runs: 5 training parties and the 3 validation parties 5, 6, 7; no test party (ids 8, 9) anywhere
    runs = sorted(p for p in (out / "tuning").iterdir() if p.is_dir())
    assert [p.name for p in runs] == [f"methods=fedavg_ft,federated.lr={lr},seed=11" for lr in ("1e-06", "3e-05")]
    scores = {}
    for run in runs:
        cfg = tomllib.loads((run / "config.toml").read_text())
        assert (cfg["parties"], cfg["test_parties"], cfg["seed"], cfg["methods"]) == (5, 3, 11, ["fedavg_ft"])
        novel = pq.read_table(run / "results.parquet")
        assert set(novel["party_id"].to_pylist()) == {5, 6, 7}
        assert max(pq.read_table(run / "rounds.parquet")["party_id"].to_pylist()) <= 7
        table = novel.filter(pa_equal(novel, "shots", 5))
        scores[cfg["federated"]["lr"]] = float(np.mean(table["value"].to_pylist()))
    # the choice is the argmin of the validation scores (nRMSE: lower is better), as tuning.csv and tuned.toml say
    with open(out / "tuning.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert [(r["method"], r["chosen"]) for r in rows].count(("fedavg_ft", "1")) == 1
    for r in rows:
        lr = float(r["point"].split("=")[1])
        assert np.isclose(float(r["score"]), scores[lr], rtol=1e-5)
    best = min(scores, key=scores.get)
    assert tomllib.loads((out / "tuned.toml").read_text())["fedavg_ft"]["federated"]["lr"] == best
    assert any(line.startswith("tune: fedavg_ft at federated.lr=") for line in logs)
    # the study: the tuned method at its choice on the fresh seed 1, the untuned one at [base]; test parties 8, 9
    tuned = tomllib.loads((out / "seed=1,methods=fedavg_ft" / "config.toml").read_text())
    assert tuned["federated"]["lr"] == best and tuned["seed"] == 1 and tuned["parties"] == 8
    table = pq.read_table(out / STUDY_PARQUET)
    assert set(table["method"].to_pylist()) == {"nearest_task", "fedavg_ft"}
    assert set(table["party_id"].to_pylist()) == {8, 9} and set(table["seed"].to_pylist()) == {1}


def pa_equal(table, column: str, value):
    import pyarrow.compute as pc

    return pc.equal(table[column], value)


@pytest.mark.parametrize(
    ("tune", "grid", "message"),
    [
        (
            "[tune]\nvalidation_parties = 7\nseeds = [11]\n[tune.grid]\n'federated.lr' = [1e-6]",
            "seed = [1]",
            "tune.validation_parties must be an integer in [1, parties - 2 = 6]",
        ),
        (
            "[tune]\nvalidation_parties = 2\nseeds = [1]\n[tune.grid]\n'federated.lr' = [1e-6]",
            "seed = [1, 2]",
            "tune.seeds [1] are seeds of the study",
        ),
        (
            "[tune]\nvalidation_parties = 2\nseeds = []\n[tune.grid]\n'federated.lr' = [1e-6]",
            "seed = [1]",
            "tune.seeds must be a non-empty list",
        ),
        (
            "[tune]\nvalidation_parties = 2\nseeds = [11]\nbogus = 1\n[tune.grid]\n'federated.lr' = [1e-6]",
            "seed = [1]",
            "unknown key(s) tune.bogus",
        ),
        (
            "[tune]\nvalidation_parties = 2\nseeds = [11]\n[tune.grid]\nseed = [3, 4]",
            "seed = [1]",
            "tune.grid.seed: seed is set by the tuning",
        ),
        (
            "[tune]\nvalidation_parties = 2\nseeds = [11]\n[tune.grid]\n'federated.lr' = 1e-6",
            "seed = [1]",
            "tune.grid.federated.lr must be a non-empty list",
        ),
        (
            "[tune]\nvalidation_parties = 2\nseeds = [11]\nmethods = ['ditto']\n[tune.grid]\n'federated.lr' = [1e-6]",
            "seed = [1]",
            "['ditto'] not among the study's methods",
        ),
        (
            "[tune]\nvalidation_parties = 2\nseeds = [11]\nshots = 3\n[tune.grid]\n'federated.lr' = [1e-6]",
            "seed = [1]",
            "tune.shots must be one of the runs' shots [0, 5]",
        ),
        (
            "[tune]\nvalidation_parties = 2\nseeds = [11]\n[tune.grid]\n'federated.lr' = [1e-6]",
            "parties = [8, 9]",
            "grid.parties with [tune]",
        ),
        (
            "[tune]\nvalidation_parties = 2\nseeds = [11]\n[tune.grid]\n'federated.lr' = [-1.0]",
            "seed = [1]",
            "federated.lr must be > 0",
        ),
        ("[tune]\nvalidation_parties = 2\nseeds = [11]", "seed = [1]", "tune: method fedavg_ft has no grid"),
    ],
)
def test_bad_tune_tables_are_one_clear_error(tmp_path, capsys, tune, grid, message):
    path = _tune_file(tmp_path, tune, grid)
    assert main(["study", path, "--check", "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("fusion-cluster: error: ") and message in err and err.count("\n") == 1, err
    assert not (tmp_path / "o").exists()


def test_the_choice_is_the_best_mean_over_seeds_ties_to_the_first_and_never_a_diverged_point():
    import numpy as np

    from cluster.tuning import Tune, TuningRun, choose

    tune = Tune(2, (11, 12), 5, {"a": {"federated.lr": [1, 2, 3, 4]}}, 8)
    runs = [TuningRun(("a",), {"federated.lr": lr}, s, f"{lr},{s}", None) for lr in (1, 2, 3, 4) for s in (11, 12)]
    scores = {(1, 11): 0.5, (1, 12): 0.3, (2, 11): 0.1, (2, 12): float("nan"), (3, 11): 0.2, (3, 12): 0.6}
    scores |= {(4, 11): 0.9, (4, 12): 0.7}  # lr 2 diverged on one seed (its 0.1 is no score); lr 1 and 3 tie at 0.4

    lower, _ = choose(tune, runs, lambda run, m: scores[(run.values["federated.lr"], run.seed)], True)
    higher, rows = choose(tune, runs, lambda run, m: scores[(run.values["federated.lr"], run.seed)], False)

    assert lower == {"a": {"federated.lr": 1}}  # the first of the tied 0.4s in grid order; lr 2's NaN never chosen
    assert higher == {"a": {"federated.lr": 4}}
    assert [r["chosen"] for r in rows] == [0, 0, 0, 1] and [r["seeds"] for r in rows] == ["11-12"] * 4
    assert np.isnan(rows[1]["score"]) and np.isclose(rows[3]["score"], 0.8)


def test_participating_best_round_skips_a_diverged_round():
    import numpy as np

    from cluster.results import participating_rows

    pts = [
        {"round": r, "party_id": np.arange(2), "value": np.array(v), "loss": np.zeros(2)}
        for r, v in ((0, [0.9, 0.7]), (5, [0.3, 0.5]), (10, [float("nan"), 0.2]))
    ]
    rows = participating_rows({"fedavg": pts})
    assert [(r["protocol"], r["round"]) for r in rows] == [("participating", 10), ("participating_best_optimistic", 5)]
