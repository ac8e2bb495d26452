"""A study's ``[tune]``: each method's settings chosen on validation parties from a small grid, then the study run
with every method at its choice (:mod:`cluster.study`).

    [tune]
    validation_parties = 10      # V: the validation parties (below)
    seeds = [101, 102]           # the tuning runs' seeds; the study's own seeds are the fresh ones
    shots = 10                   # the k whose validation score chooses (default: the largest of the runs' shots)
    methods = ["fedavg_ft"]      # the methods tuned (default: every rounds method of the study)
    [tune.grid]                  # run keys (dotted) and their values, for every tuned method
    "federated.lr" = [2e-6, 5e-6]
    [tune.method.ditto]          # one method's own keys, beside the shared ones
    "federated.ditto.lam" = [0.01, 0.1]

What is validation. A tuning run is the study's ``[base]`` run at a tuning seed with the grid point's values, with
``parties − V`` training parties and the V parties of ids ``parties − V .. parties − 1`` as its novel parties: in the
study's runs those are training parties, never test parties (ids ``parties .. parties + test_parties − 1``), which no
tuning run draws. A method's score at a grid point is the mean metric of the validation parties at ``shots`` shots
(the sample-weighted mean where the scenario weights parties), averaged over the tuning seeds; its choice is the best
score (lowest or highest as the scenario's metric says), ties to the first point in grid order, a NaN score (a
diverged run) never chosen while another is finite. The choice is made once, on ``[base]``, for every point of the
study's grid, so the grid may not vary ``parties``, ``test_parties`` or ``methods``; the tuning seeds may not be
seeds of the study.

Methods that choose the same settings share a run; the untuned methods run at ``[base]``. Files, in the study folder:
``tuning/methods=<m1+m2>,<point>,seed=<s>/`` (each a run), ``tuning.csv`` (``method, point, seeds, shots, score,
chosen``: every grid point's validation score) and ``tuned.toml`` (each tuned method's chosen keys, a table per
method).
"""

from __future__ import annotations

import csv
import itertools
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cluster.config import ConfigError, RunConfig, dumps_toml
from cluster.study import TUNING, flatten, point_config, point_name, set_key
from fusion.methods import is_federated

TUNING_CSV = "tuning.csv"
TUNED_TOML = "tuned.toml"
_KEYS = {"validation_parties", "seeds", "shots", "methods", "grid", "method"}
_FIXED = ("seed", "parties", "test_parties", "methods", "out", "address")  # set by the tuning, not tunable


@dataclass(frozen=True)
class Tune:
    """A validated ``[tune]`` table: ``grids`` method -> {dotted run key: values} (the shared grid and the method's
    own); ``parties`` the study's training parties (the validation ids are the last ``validation_parties``)."""

    validation_parties: int
    seeds: tuple[int, ...]
    shots: int
    grids: dict[str, dict[str, list]]
    parties: int


@dataclass(frozen=True)
class TuningRun:
    """One tuning run: the methods it scores, the grid point's values, its seed, folder name and config."""

    methods: tuple[str, ...]
    values: dict[str, Any]
    seed: int
    name: str
    cfg: RunConfig


def _grid(table: Any, where: str) -> dict[str, list]:
    """A grid table (dotted run key -> non-empty list of distinct values), checked; errors name ``where``.key."""
    if not isinstance(table, dict):
        raise ConfigError(f"{where} must be a table of run keys, each with its list of values")
    grid = flatten(table)
    for key, values in grid.items():
        if key.split(".")[0] in _FIXED:
            raise ConfigError(f"{where}.{key}: {key.split('.')[0]} is set by the tuning, not tuned")
        if not isinstance(values, list) or not values:
            raise ConfigError(f"{where}.{key} must be a non-empty list of values, got {values!r}")
        if len({repr(v) for v in values}) != len(values):
            raise ConfigError(f"{where}.{key} lists a value twice: {values!r}")
    return grid


def read_tune(table: Any, base_cfg: RunConfig, study_grid: dict[str, list], study_seeds: set[int]) -> Tune:
    """The ``[tune]`` table of a study whose ``[base]`` resolves to ``base_cfg``, checked against the study's grid
    and seeds; a bad table is one :class:`ConfigError` naming the ``tune.<key>``."""
    if not isinstance(table, dict):
        raise ConfigError("tune must be a table ([tune])")
    unknown = sorted(set(table) - _KEYS)
    if unknown:
        raise ConfigError(f"unknown key(s) {', '.join(f'tune.{k}' for k in unknown)}; [tune] takes {sorted(_KEYS)}")
    v = table.get("validation_parties")
    if not isinstance(v, int) or isinstance(v, bool) or not 1 <= v <= base_cfg.parties - 2:
        raise ConfigError(
            f"tune.validation_parties must be an integer in [1, parties - 2 = {base_cfg.parties - 2}] (the last ones "
            f"of [base]'s {base_cfg.parties} training parties), got {v!r}"
        )
    seeds = table.get("seeds")
    if not isinstance(seeds, list) or not seeds or not all(isinstance(s, int) and s >= 0 for s in seeds):
        raise ConfigError(f"tune.seeds must be a non-empty list of integers >= 0, got {seeds!r}")
    if len(set(seeds)) != len(seeds):
        raise ConfigError(f"tune.seeds lists a seed twice: {seeds!r}")
    if set(seeds) & study_seeds:
        raise ConfigError(
            f"tune.seeds {sorted(set(seeds) & study_seeds)} are seeds of the study: the choice is rerun on fresh seeds"
        )
    shots = table.get("shots", max(base_cfg.shots))
    if shots not in base_cfg.shots:
        raise ConfigError(f"tune.shots must be one of the runs' shots {list(base_cfg.shots)}, got {shots!r}")
    for key in ("parties", "test_parties", "methods"):
        if key in study_grid:
            raise ConfigError(
                f"grid.{key} with [tune]: the choice is made once on [base] (validation parties are ids "
                f"parties - validation_parties .. parties - 1), so the study's grid may not vary {key}"
            )
    shared = _grid(table.get("grid", {}), "tune.grid")
    own = table.get("method", {})
    if not isinstance(own, dict) or not all(isinstance(g, dict) for g in own.values()):
        raise ConfigError("tune.method must hold one table per method: [tune.method.<name>] key = [values]")
    methods = table.get("methods")
    if methods is None:
        methods = [m for m in base_cfg.methods if is_federated(m) or m in own]
    if not isinstance(methods, list) or not methods or not all(isinstance(m, str) for m in methods):
        raise ConfigError(f"tune.methods must be a non-empty list of the study's methods, got {methods!r}")
    outside = [m for m in [*methods, *own] if m not in base_cfg.methods]
    if outside:
        study = list(base_cfg.methods)
        raise ConfigError(f"tune.methods / tune.method: {outside} not among the study's methods {study}")
    grids = {}
    for m in dict.fromkeys([*methods, *own]):
        grids[m] = {**shared, **_grid(own.get(m, {}), f"tune.method.{m}")}
        if not grids[m]:
            raise ConfigError(f"tune: method {m} has no grid (set [tune.grid] or [tune.method.{m}])")
        clash = sorted(set(grids[m]) & set(study_grid))
        if clash:
            raise ConfigError(f"tune: {clash} are in the study's [grid] too; a key is either swept or tuned")
    return Tune(v, tuple(seeds), int(shots), grids, base_cfg.parties)


def plan_tuning(tune: Tune, base: dict[str, Any], out: Path, address: str = "") -> list[TuningRun]:
    """Every tuning run: per group of methods with the same grid, per grid point, per tuning seed (validated)."""
    groups: dict[str, list[str]] = {}
    for m, grid in tune.grids.items():
        groups.setdefault(repr(sorted(grid.items())), []).append(m)
    runs = []
    for methods in groups.values():
        grid = tune.grids[methods[0]]
        for combo in itertools.product(*grid.values()):
            values = dict(zip(grid, combo))
            for seed in tune.seeds:
                name = point_name({"methods": "+".join(methods), **values, "seed": seed})
                keys = dict(seed=seed, parties=tune.parties - tune.validation_parties, methods=list(methods))
                try:
                    cfg = point_config(
                        base, values, out / TUNING / name, address, test_parties=tune.validation_parties, **keys
                    )
                except ConfigError as exc:
                    raise ConfigError(f"study tune point {name}: {exc}") from None
                runs.append(TuningRun(tuple(methods), values, seed, name, cfg))
    return runs


def read_score(folder: Path, method: str, shots: int) -> float:
    """A tuning run's validation score of ``method`` at ``shots``: its summary.csv novel row's mean (sample-weighted
    where there is one); NaN when the run has none."""
    with open(folder / "summary.csv") as fh:
        for row in csv.DictReader(fh):
            novel = row.get("protocol", "novel") in ("novel", "")
            if novel and row["method"] == method and int(row["shots"]) == shots:
                return float(row.get("weighted_mean") or row["mean"])
    return math.nan


def choose(
    tune: Tune, runs: list[TuningRun], score: Callable[[TuningRun, str], float], lower_is_better: bool
) -> tuple[dict[str, dict[str, Any]], list[dict]]:
    """Each method's chosen values and the rows of tuning.csv. ``score(run, method)``: the run's validation score of
    the method. A grid point's score is the mean over the tuning seeds."""
    chosen, rows = {}, []
    for method in tune.grids:
        points: dict[str, tuple[dict, list[float]]] = {}
        for run in runs:
            if method in run.methods:
                points.setdefault(point_name(run.values), (run.values, []))[1].append(score(run, method))
        means = {p: sum(s) / len(s) for p, (_, s) in points.items()}
        best = min(means, key=lambda p, m=means: _rank(m[p], lower_is_better))  # the first of equals: grid order
        chosen[method] = points[best][0]
        seeds = "-".join(str(s) for s in tune.seeds)
        rows += [
            {"method": method, "point": p, "seeds": seeds, "shots": tune.shots, "score": m, "chosen": int(p == best)}
            for p, m in means.items()
        ]
    return chosen, rows


def _rank(score: float, lower_is_better: bool) -> tuple[bool, float]:
    """The sort key of a score: NaN last, then the best first."""
    return math.isnan(score), score if lower_is_better else -score


def tuning_csv(rows: list[dict]) -> str:
    head = ("method", "point", "seeds", "shots", "score", "chosen")
    lines = [",".join(head)]
    lines += [f'{r["method"]},"{r["point"]}",{r["seeds"]},{r["shots"]},{r["score"]:.6g},{r["chosen"]}' for r in rows]
    return "\n".join(lines) + "\n"


def tuned_toml(chosen: dict[str, dict[str, Any]]) -> str:
    """``tuned.toml``: a table per tuned method with its chosen run keys (dotted keys as nested tables)."""
    tree: dict[str, Any] = {}
    for method, values in chosen.items():
        sub: dict[str, Any] = {}
        for key, value in values.items():
            set_key(sub, key, value)
        tree[method] = sub
    return "# each tuned method's settings, chosen on the validation parties (tuning.csv)\n" + dumps_toml(tree)


def settings_groups(methods: list[str], chosen: dict[str, dict[str, Any]]) -> list[tuple[list[str], dict]]:
    """The study's ``methods`` grouped by the settings they run at (a tuned method's choice; the others ``{}``, the
    base), in the order of ``methods``."""
    groups: dict[str, tuple[list[str], dict]] = {}
    for m in methods:
        values = chosen.get(m, {})
        groups.setdefault(repr(sorted(values.items())), ([], values))[0].append(m)
    return list(groups.values())
