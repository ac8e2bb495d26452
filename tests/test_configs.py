"""``configs/``: every file passes ``--check`` in process without Ray, the docs name no config that is not there, and
``--check`` makes the checks a run makes before Ray (it calls the run's own :func:`cluster.pipeline.preflight`)."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest

from cluster import pipeline
from cluster.cli import main
from cluster.config import resolve

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = sorted((ROOT / "configs").glob("*.toml"))
DATA = ROOT.parent / "shared" / "data"  # MNIST beside the project in development and CI, not on a user's machine


def _reads_files(tree: dict) -> bool:
    """Whether the run (or the study's base) reads a data folder: MNIST or Fashion-MNIST images, or MovieLens."""
    scenario = tree.get("base", tree).get("scenario", {})
    scenario = {"name": scenario} if isinstance(scenario, str) else scenario
    return scenario.get("source") in ("mnist", "fashion-mnist") or scenario.get("name") == "movielens"


@pytest.fixture
def no_ray(monkeypatch):
    """A check that connects to Ray or starts a run fails the test."""

    def refuse(*_args, **_kwargs):
        raise AssertionError("--check connected to Ray or started a run")

    monkeypatch.setattr(pipeline, "connect", refuse)
    monkeypatch.setattr(pipeline, "run", refuse)


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_every_file_in_configs_passes_check_without_ray(path, no_ray, capsys):
    tree = tomllib.loads(path.read_text())
    study = "grid" in tree
    argv = ["study" if study else "run", str(path), "--check"]
    if _reads_files(tree):
        if not DATA.is_dir():
            pytest.skip(f"{path.name} reads a data folder and {DATA} is absent")
        argv += ["--data-dir", str(DATA)]

    code = main(argv)

    out, err = capsys.readouterr()
    assert code == 0, err
    assert len(out.splitlines()) == 1 and "is valid (nothing run)" in out, out


def test_every_config_says_what_it_runs_and_is_listed_in_the_readme():
    readme = (ROOT / "configs" / "README.md").read_text()
    for path in CONFIGS:
        first = path.read_text().splitlines()[0]
        assert first.startswith("# ") and len(first) > 20, f"{path.name}: the first line says what it runs"
        assert f"`{path.name}`" in readme, f"{path.name} is not listed in configs/README.md"
        assert "/work/" not in path.read_text(), f"{path.name} holds a machine's path"


def test_every_config_the_docs_run_is_in_configs():
    pages = [ROOT / "README.md", *(ROOT / "docs").glob("*.md")]
    text = "".join(page.read_text() for page in pages)

    named = set(re.findall(r"fusion-cluster (?:run|study) ([a-z0-9_./-]+\.toml)", text))  # not STUDY.toml

    assert named, "the docs run no config file"
    assert all(name.startswith("configs/") for name in named), sorted(n for n in named if "configs/" not in n)
    assert all((ROOT / name).is_file() for name in named), sorted(n for n in named if not (ROOT / n).is_file())


def test_check_of_a_config_that_reads_mnist_names_the_missing_data_folder(tmp_path, no_ray, capsys):
    config = str(ROOT / "configs" / "pc5.toml")

    codes = [main(["run", config, "--check"]), main(["run", config, "--check", "--data-dir", str(tmp_path)])]

    assert codes == [2, 2]
    first, second = capsys.readouterr().err.splitlines()
    assert "needs scenario.data_dir" in first
    assert f"scenario.data_dir = '{tmp_path}': no MNIST idx files" in second


def test_check_refuses_what_the_run_refuses_before_ray_and_writes_nothing(tmp_path, no_ray, capsys):
    out = tmp_path / "out"

    code = main(["run", "digits", "--shots", "0,500", "--out", str(out), "--check"])

    assert code == 2
    assert "shots=500 is more than the" in capsys.readouterr().err
    assert not out.exists()


def test_check_of_a_valid_run_says_what_it_would_run_and_writes_nothing(tmp_path, no_ray, capsys):
    out = tmp_path / "out"

    code = main(["run", "sine", "--parties", "12", "--methods", "fusion,cold_start", "--out", str(out), "--check"])

    assert code == 0
    line = capsys.readouterr().out.strip()
    assert line == (
        "sine is valid (nothing run): scenario sine-domains, 12 training / 50 test parties, shots 0,10,20, seed 0, "
        f"methods fusion, cold_start; it would write {out}/"
    )
    assert not out.exists()


def test_a_run_starts_with_the_same_preflight_that_check_calls(monkeypatch):
    class Stop(Exception):
        pass

    def stop(cfg, resume=False):
        raise Stop

    monkeypatch.setattr(pipeline, "preflight", stop)

    with pytest.raises(Stop):
        pipeline.run(resolve({"scenario": "sine"}))
