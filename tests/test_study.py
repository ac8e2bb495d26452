"""``fusion-cluster study``: a 2x2 grid on the session's Ray, its table and plot, resume, bad study files."""

from __future__ import annotations

import shutil

import pyarrow.parquet as pq
import pytest

from cluster.cli import main
from cluster.config import ConfigError
from cluster.study import STUDY_PARQUET, STUDY_PNG, plan, read_study, run_study
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
    base = {"parties": 4, "scenario": {"name": "digits-split", "source": "mnist"}}
    grid = {"scenario.alpha": [0.1, 1.0], "seed": [1, 2]}

    given = plan(base, grid, tmp_path / "o", data_dir=str(tmp_path / "data"))
    left_out = plan(base, grid, tmp_path / "o")

    assert [p.cfg.scenario_options.data_dir for p in given] == [str(tmp_path / "data")] * 4
    assert [p.cfg.scenario_options.data_dir for p in left_out] == [""] * 4
    path = tmp_path / "s.toml"
    path.write_text('[base.scenario]\nname = "digits-split"\nsource = "mnist"\n[grid]\nseed = [1]\n')
    assert main(["study", str(path), "--check", "--data-dir", str(tmp_path), "--out", str(tmp_path / "o")]) == 2
    assert f"scenario.data_dir = '{tmp_path}': no MNIST idx files" in capsys.readouterr().err
