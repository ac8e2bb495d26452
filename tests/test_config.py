import re
import tomllib

import pytest

from cluster.cli import main
from cluster.config import ConfigError, dumps_toml, load_toml, resolve, to_dict
from fusion.federated import ALGORITHMS
from fusion.strategies.base import settings_classes
from scenarios import SCENARIOS


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
        ({"pretrain": {"lr": -1.0}}, "pretrain.lr must be > 0"),
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


@pytest.mark.parametrize("table", ["pretrain", "finetune", "federated"])
def test_a_zero_learning_rate_is_refused_naming_its_table(table):
    with pytest.raises(ConfigError) as refused:
        resolve({table: {"lr": 0}})

    assert str(refused.value) == f"{table}.lr must be > 0, got 0.0"


CLASSES = [{"name": "a", "share": 1.0}]
# one refused value per table: (tree, the dotted key the error must name, the value it must show)
BAD_VALUES = [
    ({"chunk_parties": 0}, "chunk_parties", "0"),
    ({"pretrain": {"steps": -1}}, "pretrain.steps", "-1"),
    ({"finetune": {"folds": 1}}, "finetune.folds", "1"),
    ({"finetune": {"recipe": "magic"}}, "finetune.recipe", "'magic'"),
    ({"faults": {"corrupt_share": 0.9}}, "faults.corrupt_share", "0.9"),
    ({"report": {"band": "ci"}}, "report.band", "'ci'"),
    ({"party_classes": CLASSES, "system": {"jitter": -1}}, "system.jitter", "-1"),
    ({"party_classes": CLASSES, "system": {"round_deadline": -5}}, "system.round_deadline", "-5"),
    ({"report": {"target": "x"}}, "report.target", "'x'"),
    ({"federated": {"fedbuff": {"buffer": 0}}}, "federated.fedbuff.buffer", "0"),
    ({"party_classes": [{"name": "a", "share": 1.0, "speed": 0}]}, "party_classes[0].speed", "0"),
    ({"party_classes": [{"name": "a b", "share": 1.0}]}, "party_classes[0].name", "'a b'"),
    ({"fusion": {"align_iters": 0}}, "fusion.align_iters", "0"),
    ({"fusion": {"refit_lr": 0}}, "fusion.refit_lr", "0"),
    ({"fusion": {"gp": {"max_steps": 0}}}, "fusion.gp.max_steps", "0"),
    ({"fusion": {"pfnm": {"gamma": 0}}}, "fusion.pfnm.gamma", "0"),
    ({"fusion": {"outliers": {"neighbours": 0}}}, "fusion.outliers.neighbours", "0"),
    ({"fusion": {"maml": {"outer_lr": 0}}}, "fusion.maml.outer_lr", "0"),
    ({"fusion": {"matched_average": {"sweeps": -1}}}, "fusion.matched_average.sweeps", "-1"),
    ({"fusion": {"matched_gp": {"sigma0": 0}}}, "fusion.matched_gp.sigma0", "0"),
    ({"fusion": {"mfpl": {"window": 0}}}, "fusion.mfpl.window", "0"),
    ({"federated": {"rounds": 0}}, "federated.rounds", "0"),
    ({"federated": {"ditto": {"lam": -1}}}, "federated.ditto.lam", "-1"),
    ({"federated": {"fd": {"lam": -1}}}, "federated.fd.lam", "-1"),
    ({"federated": {"fedala": {"weight_lr": 0}}}, "federated.fedala.weight_lr", "0"),
    ({"federated": {"fedgh": {"server_steps": -1}}}, "federated.fedgh.server_steps", "-1"),
    ({"federated": {"fedproto": {"lam": -1}}}, "federated.fedproto.lam", "-1"),
    ({"federated": {"fedrep": {"head_steps": -1}}}, "federated.fedrep.head_steps", "-1"),
    ({"federated": {"fedtgp": {"margin_cap": -1}}}, "federated.fedtgp.margin_cap", "-1"),
    ({"federated": {"per_fedavg": {"fd_radius": 0}}}, "federated.per_fedavg.fd_radius", "0"),
    ({"federated": {"per_fedavg": {"fd_radius": 0}}}, "federated.per_fedavg.fd_radius", "0"),
    ({"federated": {"pfedhn": {"hidden": 0}}}, "federated.pfedhn.hidden", "0"),
    ({"scenario": {"name": "sine-domains", "eval_points": 0}}, "scenario.eval_points", "0"),
    ({"scenario": {"name": "sine-uniform", "noise": -1}}, "scenario.noise", "-1"),
    ({"scenario": {"name": "digits", "k": 7}}, "scenario.k", "7"),
    ({"scenario": {"name": "digits-split", "alpha": 0}}, "scenario.alpha", "0"),
    ({"scenario": {"name": "movielens", "eval_fraction": 1.5}}, "scenario.eval_fraction", "1.5"),
]


def _table(tree: dict, key: str) -> str:
    """The table a case exercises: the key's path ("" at the top level), a scenario's by its name."""
    table = key.rsplit(".", 1)[0] if "." in key else ""
    return f"scenario:{tree['scenario']['name']}" if table == "scenario" else table


@pytest.mark.parametrize(("tree", "key", "value"), BAD_VALUES, ids=[case[1] for case in BAD_VALUES])
def test_a_refused_value_names_its_dotted_key_and_the_value(tree, key, value):
    with pytest.raises(ConfigError) as refused:
        resolve(tree)

    message = str(refused.value)
    assert re.search(rf"(?<![\w.]){re.escape(key)}(?![\w.])", message), message
    assert re.search(rf"got (?:{re.escape(key)} = )?{re.escape(value)}", message), message
    table = key.rpartition(".")[0]
    assert not (table and message.startswith(table + ":")), message  # no "pretrain: lr must ..."
    assert not re.search(r"(?<![\w.])(\w+)\.\1\.", message), message  # no "fusion.fusion.x"


def test_the_bad_value_cases_cover_every_table_of_a_run_config():
    tables = {"", "pretrain", "finetune", "faults", "system", "party_classes[0]", "fusion", "federated", "report"}
    tables |= {"fusion.gp", "fusion.pfnm", "fusion.outliers", *(f"fusion.{key}" for key in settings_classes())}
    tables |= {f"federated.{name}" for name, algorithm in ALGORITHMS.items() if algorithm.settings is not None}
    tables |= {f"scenario:{name}" for name in SCENARIOS}

    covered = {_table(tree, key) for tree, key, _ in BAD_VALUES}

    assert tables <= covered, f"tables without a bad-value case: {sorted(tables - covered)}"


def test_a_study_names_base_for_a_bad_base_value_and_the_point_for_a_bad_grid_value(tmp_path, capsys):
    base = tmp_path / "base.toml"
    base.write_text("[base]\nparties = 10\n[base.pretrain]\nlr = 0\n\n[grid]\nseed = [1, 2]\n")
    grid = tmp_path / "grid.toml"
    grid.write_text('[base]\nparties = 10\n\n[grid]\n"pretrain.lr" = [0.01, 0]\n')

    codes = [main(["study", str(path), "--check"]) for path in (base, grid)]

    assert codes == [2, 2]
    errors = capsys.readouterr().err.splitlines()
    assert errors == [
        "fusion-cluster: error: study [base]: pretrain.lr must be > 0, got 0.0",
        "fusion-cluster: error: study point pretrain.lr=0: pretrain.lr must be > 0, got 0.0",
    ]
