import tomllib

import pytest

from cluster.cli import main
from cluster.config import ConfigError, dumps_toml, load_toml, resolve, to_dict


def test_defaults_and_round_trip(tmp_path):
    cfg = resolve({"scenario": "sine", "parties": 60, "shots": [0, 10]})
    assert cfg.scenario == "sine-domains" and cfg.parties == 60 and cfg.shots == (0, 10)
    path = tmp_path / "c.toml"
    path.write_text(dumps_toml(to_dict(cfg)))
    assert resolve(load_toml(path)) == cfg


@pytest.mark.parametrize(
    "tree, message",
    [
        ({"parties": 0}, "parties must be >= 2"),
        ({"parties": -5}, "parties must be >= 2"),
        ({"test_parties": 0}, "test_parties must be >= 1"),
        ({"parties": "ten"}, "parties must be a int"),
        ({"bogus": 1}, "unknown key"),
        ({"scenario": "cosine"}, "unknown scenario"),
        ({"scenario": {"name": "sine", "hidden": [0]}}, "scenario.hidden"),
        ({"scenario": {"name": "sine", "colour": "red"}}, "scenario.colour"),
        ({"shots": [0, -1]}, "shots must be distinct"),
        ({"shots": [10, 10]}, "shots must be distinct"),
        ({"shots": "0,10"}, "shots must be a list"),
        ({"seed": -1}, "seed must be >= 0"),
        ({"party_actors": -1}, "party_actors must be >= 1"),
        ({"party_actors": 500, "parties": 10, "test_parties": 5}, "more than the 15 parties"),
        ({"gpus_per_actor": -0.5}, "gpus_per_actor must be >= 0"),
        ({"gpus_per_actor": 1.5}, "whole number"),
        ({"cpus_per_actor": 0}, "cpus_per_actor must be > 0"),
        ({"methods": ["fusion", "magic"]}, "unknown method"),
        ({"fusion": {"strategy": "magic"}}, "unknown fusion strategy"),
        ({"fusion": {"gp": {"inducing": 0}}}, "fusion.gp.inducing"),
        ({"pretrain": {"lr": -1.0}}, "lr must be > 0"),
        ({"pretrain": {"epochs": 3}}, "pretrain.epochs"),
    ],
)
def test_bad_config_is_one_clear_error(tree, message):
    with pytest.raises(ConfigError, match=message):
        resolve(tree)


def test_cli_bad_input_exits_2_without_traceback(tmp_path, capsys):
    broken = tmp_path / "broken.toml"
    broken.write_text("parties = [\n")
    assert main(["run", str(broken)]) == 2
    err = capsys.readouterr().err
    assert "not valid TOML" in err and "Traceback" not in err
    assert main(["run", "cosine"]) == 2
    assert "unknown scenario" in capsys.readouterr().err
    assert main(["run", "sine", "--shots", "0,x"]) == 2
    assert main(["run", "sine", "--parties", "1"]) == 2
    assert main(["run", "sine", "--no-such-flag"]) == 2
    out = tmp_path / "taken"
    out.mkdir()
    (out / "something").write_text("x")
    assert main(["run", "sine", "--out", str(out)]) == 2
    assert "already exists" in capsys.readouterr().err


def test_sine_size_and_noise_ranges_from_toml():
    cfg = resolve({"scenario": {"name": "sine", "train_points": [10, 100], "noise": [0, 0.5]}})
    assert cfg.scenario_options.train_points == (10, 100) and cfg.scenario_options.noise == (0.0, 0.5)
    assert resolve(tomllib.loads(dumps_toml(to_dict(cfg)))).scenario_options == cfg.scenario_options  # resume
    with pytest.raises(ConfigError, match=r"scenario.train_points\[1\] must be a int"):
        resolve({"scenario": {"name": "sine", "train_points": [10, "a"]}})
    with pytest.raises(ConfigError, match="scenario.train_points must be a number or \\[lo, hi\\]"):
        resolve({"scenario": {"name": "sine", "train_points": [100, 10]}})
    with pytest.raises(ConfigError, match="pretrain.steps must be a int"):  # ranges only where a field allows them
        resolve({"pretrain": {"steps": [1, 2]}})


@pytest.mark.parametrize("strategy", sorted(__import__("fusion.strategies", fromlist=["STRATEGIES"]).STRATEGIES))
def test_every_fusion_strategy_gives_a_runnable_default_method_list(strategy):
    from fusion.methods import strategy_for

    cfg = resolve({"scenario": "sine", "fusion": {"strategy": strategy}})
    for method in cfg.methods:
        strategy_for(method, cfg.fusion)  # builds, or the config would have been refused


def test_fusion_noalign_with_a_strategy_that_does_not_align_is_one_clear_error():
    with pytest.raises(ConfigError, match="fusion_noalign needs a fusion strategy that aligns"):
        resolve({"scenario": "sine", "fusion": {"strategy": "average"}, "methods": ["fusion", "fusion_noalign"]})
