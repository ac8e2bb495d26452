"""``fusion-cluster study STUDY.toml``: a grid of runs on one Ray connection, gathered in one table and one plot.

A study file has two tables::

    [base]                       # any run keys, sub-tables included ([base.scenario], [base.fusion.gp], ...)
    parties = 30
    [base.scenario]
    name = "digits-split"

    [grid]                       # run keys (dotted for sub-tables), each with the list of its values
    seed = [1, 2]
    "scenario.alpha" = [0.1, 1.0]

Every combination of the grid's values is one run (:func:`cluster.pipeline.run`), written to
``OUT/<key=value,...>/``. Every point is validated before Ray starts (its config, and the checks a run makes
before Ray: :func:`cluster.pipeline.preflight`), which is all that ``--check`` does; Ray is connected once and
every run reuses that connection. ``--resume`` skips the points whose ``results.parquet`` exists and continues an
interrupted point from its checkpoint. At the end ``OUT/study.parquet`` (every point's result rows plus one
column per grid key, named by the key) and ``OUT/study.png`` are written (temp file, then rename).
"""

from __future__ import annotations

import copy
import dataclasses
import itertools
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from cluster.config import ConfigError, RunConfig, load_toml, resolve
from fusion.io import write_atomic

Log = Callable[[str], None]
STUDY_PARQUET = "study.parquet"
STUDY_PNG = "study.png"
STUDY_COPY = "study.toml"
TUNING = "tuning"  # the tuning runs' folder (cluster/tuning.py)
FINISHED = "results.parquet"
_SAFE = re.compile(r"[^A-Za-z0-9._+-]")


@dataclass(frozen=True)
class Point:
    """One run of the grid: its folder name, the grid values it takes, its validated config."""

    name: str
    values: dict[str, Any]
    cfg: RunConfig


def flatten(table: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"scenario": {"alpha": [..]}}`` (an unquoted dotted key in TOML) -> ``{"scenario.alpha": [..]}``."""
    out = {}
    for key, value in table.items():
        if isinstance(value, dict):
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[prefix + key] = value
    return out


def value_label(value: Any) -> str:
    text = "-".join(map(str, value)) if isinstance(value, list) else str(value)
    return _SAFE.sub("_", text)


def set_key(tree: dict[str, Any], dotted: str, value: Any) -> None:
    """Set ``a.b.c`` in a nested run tree (``scenario = "sine"`` becomes ``{name = "sine"}`` to take sub-keys)."""
    *path, last = dotted.split(".")
    node = tree
    for part in path:
        child = node.get(part, {})
        if part == "scenario" and isinstance(child, str):
            child = {"name": child}
        if not isinstance(child, dict):
            raise ConfigError(f"grid key {dotted!r}: {part} is not a table in [base]")
        node[part] = child = dict(child)
        node = child
    node[last] = value


def read_study(path: str | Path) -> tuple[dict[str, Any], dict[str, list]]:
    """The ``[base]`` tree and the ``[grid]`` (dotted key -> values) of a study file; a bad file is a ConfigError."""
    tree = load_toml(path)
    unknown = sorted(set(tree) - {"base", "grid", "tune"})
    if unknown:
        raise ConfigError(f"{path}: unknown table(s) {', '.join(unknown)}; a study has [base], [grid] and [tune]")
    base, grid = tree.get("base", {}), tree.get("grid")
    if not isinstance(base, dict):
        raise ConfigError(f"{path}: base must be a table of run keys")
    if not isinstance(grid, dict) or not grid:
        raise ConfigError(f"{path}: [grid] must list at least one run key with its values, e.g. seed = [1, 2]")
    grid = flatten(grid)
    for key, values in grid.items():
        if not isinstance(values, list) or not values:
            raise ConfigError(f"{path}: grid.{key} must be a non-empty list of values, got {values!r}")
        if len({repr(v) for v in values}) != len(values):
            raise ConfigError(f"{path}: grid.{key} lists a value twice: {values!r}")
    for key in ("out", "address"):
        if key in base or key in grid:
            raise ConfigError(f"{path}: {key} is set by the study command (--{key}), not in the study file")
    return base, grid


def point_name(values: dict[str, Any]) -> str:
    """A point's folder name: ``key=value,...``."""
    return ",".join(f"{k}={value_label(v)}" for k, v in values.items())


def point_config(base: dict[str, Any], values: dict[str, Any], out: Path, address: str = "", **keys) -> RunConfig:
    """The run config of ``[base]`` with the dotted ``values`` set, written to ``out``, and the run ``keys`` set
    (e.g. ``methods``); a bad value raises :class:`ConfigError`."""
    tree = copy.deepcopy(base)
    for key, value in values.items():
        set_key(tree, key, value)
    tree.update(keys, out=str(out))
    if address:
        tree["address"] = address
    return resolve(tree)


def plan(base: dict[str, Any], grid: dict[str, list], out: Path, address: str = "") -> list[Point]:
    """Every combination of the grid values, validated as a run config (errors name the point, or ``[base]`` when
    the base keys alone give the same error)."""
    points = []
    for combo in itertools.product(*grid.values()):
        values = dict(zip(grid, combo))
        name = point_name(values)
        try:
            cfg = point_config(base, values, out / name, address)
        except ConfigError as exc:
            where = "[base]" if _base_error(base) == str(exc) else f"point {name}"
            raise ConfigError(f"study {where}: {exc}") from None
        points.append(Point(name, values, cfg))
    return points


def _base_error(base: dict[str, Any]) -> str:
    """The error of the ``[base]`` keys alone as a run config ("" when they make one)."""
    try:
        resolve(copy.deepcopy(base))
    except ConfigError as exc:
        return str(exc)
    return ""


@dataclass(frozen=True)
class Study:
    """A checked study: its folder, its points, its ``[base]`` tree and, with ``[tune]``, the tuning and its runs."""

    out: Path
    points: list[Point]
    base: dict[str, Any]
    address: str = ""
    tune: Any = None  # cluster.tuning.Tune
    tuning: tuple = ()  # cluster.tuning.TuningRun, every one


def prepare(
    path: str | Path, out: str | Path | None = None, address: str = "", resume: bool = False, data_dir: str = ""
) -> Study:
    """The study's folder and its points (and tuning runs), every run checked as it will check itself before Ray
    starts (:func:`cluster.pipeline.preflight`; finished runs are skipped). Writes nothing. ``data_dir``
    (``--data-dir``) is every run's ``scenario.data_dir``: not part of the study file, so a resumed study may name
    another."""
    from cluster.pipeline import check_out, preflight

    path = Path(path)
    base, grid = read_study(path)
    tune_table = load_toml(path).get("tune")
    if out is None:
        if resume:
            raise ConfigError("--resume needs --out DIR: the folder of the study to continue")
        out = Path("studies") / f"{path.stem}-{datetime.now(UTC).strftime('%Y%m%d-%H%M%S')}"
    out = Path(out)
    if resume and not (out / STUDY_COPY).is_file():
        raise ConfigError(f"--resume {out}: not a study folder (no {STUDY_COPY})")
    if resume and (
        read_study(out / STUDY_COPY) != (base, grid) or load_toml(out / STUDY_COPY).get("tune") != tune_table
    ):
        raise ConfigError(f"--resume {out}: {path} is not the study that folder holds ({out / STUDY_COPY})")
    if not resume:
        check_out(out)
    if data_dir:
        set_key(base, "scenario.data_dir", data_dir)
    points = plan(base, grid, out, address)
    study = Study(out, points, base, address)
    if tune_table is not None:
        study = _prepare_tuning(study, tune_table, grid)
    runs = [(f"point {p.name}", out / p.name, p.cfg) for p in points]
    runs += [(f"tune point {r.name}", out / TUNING / r.name, r.cfg) for r in study.tuning]
    for what, folder, cfg in runs:
        if not (folder / FINISHED).exists():
            try:
                preflight(cfg, resume=(folder / "config.toml").is_file())
            except ConfigError as exc:
                raise ConfigError(f"study {what}: {exc}") from None
    return study


def _prepare_tuning(study: Study, table: Any, grid: dict[str, list]) -> Study:
    """``study`` with its ``[tune]`` read and its tuning runs planned; every point is also checked at every value
    its tuned methods may choose (a bad combination fails now, not after the tuning)."""
    from cluster import tuning

    try:
        base_cfg = resolve(copy.deepcopy(study.base))
    except ConfigError as exc:
        raise ConfigError(f"study [base]: {exc}") from None
    tune = tuning.read_tune(table, base_cfg, grid, {p.cfg.seed for p in study.points})
    runs = tuning.plan_tuning(tune, study.base, study.out, study.address)
    for point in study.points:
        for method, method_grid in tune.grids.items():
            for combo in itertools.product(*method_grid.values()):
                values = dict(zip(method_grid, combo))
                try:
                    point_config(study.base, {**point.values, **values}, study.out, methods=[method])
                except ConfigError as exc:
                    where = f"study point {point.name} with {method} at {point_name(values)}"
                    raise ConfigError(f"{where}: {exc}") from None
    return dataclasses.replace(study, tune=tune, tuning=tuple(runs))


def check_study(
    path: str | Path, out: str | Path | None = None, address: str = "", resume: bool = False, data_dir: str = ""
) -> str:
    """``fusion-cluster study FILE --check``: :func:`prepare` alone, and one line saying what the study would run."""
    study = prepare(path, out, address, resume, data_dir)
    points = study.points
    cfgs = [p.cfg for p in points]
    scenarios = ", ".join(sorted({c.scenario for c in cfgs}))
    methods = ", ".join(dict.fromkeys(m for c in cfgs for m in c.methods))
    tuned = ""
    if study.tune is not None:
        tuned = f"; {len(study.tuning)} tuning runs choose the settings of {', '.join(study.tune.grids)}"
    return (
        f"{path} is valid (nothing run): {len(points)} points over {', '.join(points[0].values)}; scenario "
        f"{scenarios}; methods {methods}{tuned}; it would write {study.out}/"
    )


def _column(key: str, values: list[Any], n_rows: list[int]) -> pa.Array:
    """One grid key's column: each point's value repeated over its rows (lists as text)."""
    plain = [("-".join(map(str, v)) if isinstance(v, list) else v) for v in values]
    kinds = {type(v) for v in plain}
    if kinds <= {int}:
        kind = pa.int64()
    elif kinds <= {int, float}:
        kind, plain = pa.float64(), [float(v) for v in plain]
    else:
        kind, plain = pa.string(), [str(v) for v in plain]
    return pa.array([v for v, n in zip(plain, n_rows) for _ in range(n)], kind)


def gather(points: list[Point], out: Path) -> pa.Table:
    """Every point's ``results.parquet`` rows, plus one column per grid key (``seed`` is one already)."""
    tables = [pq.read_table(out / p.name / FINISHED) for p in points]
    table = pa.concat_tables(tables)
    rows = [t.num_rows for t in tables]
    for key in points[0].values:
        if key not in table.column_names:  # ``seed`` is a results column already, with the same values
            table = table.append_column(key, _column(key, [p.values[key] for p in points], rows))
    return table


def run_study(
    path: str | Path,
    out: str | Path | None = None,
    address: str = "",
    resume: bool = False,
    log: Log = print,
    data_dir: str = "",
) -> Path:
    """Run (or with ``resume`` continue) the study in ``path``; returns its output folder. With ``[tune]`` the
    tuning runs come first (:mod:`cluster.tuning`), then every point with each method at its chosen settings."""
    from cluster import plots
    from cluster.runtime import connect, disconnect

    path = Path(path)
    study = prepare(path, out, address, resume, data_dir)
    out, points = study.out, study.points
    out.mkdir(parents=True, exist_ok=True)
    if not resume:
        write_atomic(out / STUDY_COPY, lambda tmp: shutil.copyfile(path, tmp))
    conn = connect(points[0].cfg.cluster)  # once: every run's connect() reuses the initialized Ray
    try:
        if study.tune is not None:
            tuning_points = [Point(r.name, r.values, r.cfg) for r in study.tuning]
            _run_points(tuning_points, out / TUNING, "tuning run", log)
            points = _tuned_points(study, _choose(study, log))
        _run_points(points, out, "study point", log)
    finally:
        disconnect(conn)
    table = gather(points, out)
    write_atomic(out / STUDY_PARQUET, lambda tmp: pq.write_table(table, tmp))
    metric = table["metric"][0].as_py() if table.num_rows else ""
    plots.plot_study(table, list(points[0].values), metric, out / STUDY_PNG)
    log(f"wrote {out}/ ({STUDY_PARQUET}: {len(points)} points, {table.num_rows} rows; {STUDY_PNG})")
    return out


def _run_points(points: list[Point], out: Path, what: str, log: Log) -> None:
    """Run every point into ``out / point.name`` that has no results yet (an interrupted one from its checkpoint)."""
    from cluster.pipeline import run

    for i, point in enumerate(points, 1):
        folder = out / point.name
        if (folder / FINISHED).exists():
            log(f"{what} {i}/{len(points)} {point.name}: finished already, skipped")
            continue
        again = (folder / "config.toml").is_file()
        log(f"{what} {i}/{len(points)} {point.name}" + (": continuing from its checkpoint" if again else ""))
        run(point.cfg, log=log, resume=again)


def _choose(study: Study, log: Log) -> dict[str, dict[str, Any]]:
    """Each tuned method's choice from the finished tuning runs; writes tuning.csv and tuned.toml."""
    from cluster import tuning
    from scenarios import build

    cfg = study.points[0].cfg
    lower = build(cfg.scenario, cfg.scenario_options).lower_is_better
    folder = study.out / TUNING
    score = lambda run, method: tuning.read_score(folder / run.name, method, study.tune.shots)  # noqa: E731
    chosen, rows = tuning.choose(study.tune, list(study.tuning), score, lower)
    write_atomic(study.out / tuning.TUNING_CSV, lambda tmp: tmp.write_text(tuning.tuning_csv(rows)))
    write_atomic(study.out / tuning.TUNED_TOML, lambda tmp: tmp.write_text(tuning.tuned_toml(chosen)))
    for method, values in chosen.items():
        best = min(r["score"] for r in rows if r["method"] == method and r["chosen"])
        log(f"tune: {method} at {point_name(values)} (validation {best:.4g} at {study.tune.shots} shots)")
    return chosen


def _tuned_points(study: Study, chosen: dict[str, dict[str, Any]]) -> list[Point]:
    """Every point of the study once per group of its methods that run at the same settings (the tuned methods at
    their choice, the others at ``[base]``): folder ``<point>,methods=<m1+m2>``."""
    from cluster import tuning

    points = []
    for point in study.points:
        for methods, values in tuning.settings_groups(list(point.cfg.methods), chosen):
            name = f"{point.name},methods={'+'.join(methods)}"
            cfg = point_config(study.base, {**point.values, **values}, study.out / name, study.address, methods=methods)
            points.append(Point(name, point.values, cfg))
    return points
