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
FINISHED = "results.parquet"
_SAFE = re.compile(r"[^A-Za-z0-9._+-]")


@dataclass(frozen=True)
class Point:
    """One run of the grid: its folder name, the grid values it takes, its validated config."""

    name: str
    values: dict[str, Any]
    cfg: RunConfig


def _flatten(table: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"scenario": {"alpha": [..]}}`` (an unquoted dotted key in TOML) -> ``{"scenario.alpha": [..]}``."""
    out = {}
    for key, value in table.items():
        if isinstance(value, dict):
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[prefix + key] = value
    return out


def _label(value: Any) -> str:
    text = "-".join(map(str, value)) if isinstance(value, list) else str(value)
    return _SAFE.sub("_", text)


def _set(tree: dict[str, Any], dotted: str, value: Any) -> None:
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
    unknown = sorted(set(tree) - {"base", "grid"})
    if unknown:
        raise ConfigError(f"{path}: unknown table(s) {', '.join(unknown)}; a study has [base] and [grid]")
    base, grid = tree.get("base", {}), tree.get("grid")
    if not isinstance(base, dict):
        raise ConfigError(f"{path}: base must be a table of run keys")
    if not isinstance(grid, dict) or not grid:
        raise ConfigError(f"{path}: [grid] must list at least one run key with its values, e.g. seed = [1, 2]")
    grid = _flatten(grid)
    for key, values in grid.items():
        if not isinstance(values, list) or not values:
            raise ConfigError(f"{path}: grid.{key} must be a non-empty list of values, got {values!r}")
        if len({repr(v) for v in values}) != len(values):
            raise ConfigError(f"{path}: grid.{key} lists a value twice: {values!r}")
    for key in ("out", "address"):
        if key in base or key in grid:
            raise ConfigError(f"{path}: {key} is set by the study command (--{key}), not in the study file")
    return base, grid


def plan(base: dict[str, Any], grid: dict[str, list], out: Path, address: str = "", data_dir: str = "") -> list[Point]:
    """Every combination of the grid values, validated as a run config (errors name the point, or ``[base]`` when
    the base keys alone give the same error). ``data_dir`` (``--data-dir``) is every point's ``scenario.data_dir``."""
    points = []
    for combo in itertools.product(*grid.values()):
        values = dict(zip(grid, combo))
        name = ",".join(f"{k}={_label(v)}" for k, v in values.items())
        tree = copy.deepcopy(base)
        for key, value in values.items():
            _set(tree, key, value)
        tree["out"] = str(out / name)
        if address:
            tree["address"] = address
        if data_dir:
            _set(tree, "scenario.data_dir", data_dir)
        try:
            cfg = resolve(tree)
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


def prepare(
    path: str | Path, out: str | Path | None = None, address: str = "", resume: bool = False, data_dir: str = ""
) -> tuple[Path, list[Point]]:
    """The study's folder and its points, every point checked as its run will check it before Ray starts
    (:func:`cluster.pipeline.preflight`; finished points are skipped). Writes nothing."""
    from cluster.pipeline import check_out, preflight

    path = Path(path)
    base, grid = read_study(path)
    if out is None:
        if resume:
            raise ConfigError("--resume needs --out DIR: the folder of the study to continue")
        out = Path("studies") / f"{path.stem}-{datetime.now(UTC).strftime('%Y%m%d-%H%M%S')}"
    out = Path(out)
    if resume and not (out / STUDY_COPY).is_file():
        raise ConfigError(f"--resume {out}: not a study folder (no {STUDY_COPY})")
    if resume and read_study(out / STUDY_COPY) != (base, grid):
        raise ConfigError(f"--resume {out}: {path} is not the study that folder holds ({out / STUDY_COPY})")
    if not resume:
        check_out(out)
    points = plan(base, grid, out, address, data_dir)
    for point in points:
        folder = out / point.name
        if not (folder / FINISHED).exists():
            try:
                preflight(point.cfg, resume=(folder / "config.toml").is_file())
            except ConfigError as exc:
                raise ConfigError(f"study point {point.name}: {exc}") from None
    return out, points


def check_study(
    path: str | Path, out: str | Path | None = None, address: str = "", resume: bool = False, data_dir: str = ""
) -> str:
    """``fusion-cluster study FILE --check``: :func:`prepare` alone, and one line saying what the study would run."""
    out, points = prepare(path, out, address, resume, data_dir)
    cfgs = [p.cfg for p in points]
    scenarios = ", ".join(sorted({c.scenario for c in cfgs}))
    methods = ", ".join(dict.fromkeys(m for c in cfgs for m in c.methods))
    return (
        f"{path} is valid (nothing run): {len(points)} points over {', '.join(points[0].values)}; scenario "
        f"{scenarios}; methods {methods}; it would write {out}/"
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
    """Run (or with ``resume`` continue) the study in ``path``; returns its output folder. ``data_dir``: every
    point's ``scenario.data_dir`` (``--data-dir``; not part of the study file, so a resumed study may name another)."""
    from cluster import plots
    from cluster.pipeline import run
    from cluster.runtime import connect

    path = Path(path)
    out, points = prepare(path, out, address, resume, data_dir)
    out.mkdir(parents=True, exist_ok=True)
    if not resume:
        write_atomic(out / STUDY_COPY, lambda tmp: shutil.copyfile(path, tmp))
    conn = connect(points[0].cfg.cluster)  # once: every run's connect() reuses the initialized Ray
    try:
        for i, point in enumerate(points, 1):
            folder = out / point.name
            if (folder / FINISHED).exists():
                log(f"study point {i}/{len(points)} {point.name}: finished already, skipped")
                continue
            again = (folder / "config.toml").is_file()
            log(f"study point {i}/{len(points)} {point.name}" + (": continuing from its checkpoint" if again else ""))
            run(point.cfg, log=log, resume=again)
    finally:
        if conn.owned:
            import ray

            ray.shutdown()
    table = gather(points, out)
    write_atomic(out / STUDY_PARQUET, lambda tmp: pq.write_table(table, tmp))
    metric = table["metric"][0].as_py() if table.num_rows else ""
    plots.plot_study(table, list(points[0].values), metric, out / STUDY_PNG)
    log(f"wrote {out}/ ({STUDY_PARQUET}: {len(points)} points, {table.num_rows} rows; {STUDY_PNG})")
    return out
