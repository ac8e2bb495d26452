"""``fusion-cluster fuse``: fuse models that already exist and write one warm start per target descriptor.

Inputs: a folder of ``<party_id>.pt`` state dicts of ``torch.nn.Sequential(Linear, ReLU, Linear, ...)`` or of
a CNN (:mod:`fusion.models.state_dicts`; read with ``weights_only=True``), a descriptors table (CSV or Parquet:
``party_id`` plus descriptor columns, in the table's order) and a targets table with the same descriptor
columns; for strategies that refit on unlabeled inputs (``gp_refit``) a probe file (``.npy`` or CSV,
(N, fan_in)). The files are loaded and validated by Ray tasks, one per chunk of files; the fusion actor fits
the strategy. Output (staged in a temp folder, renamed at the end): ``OUT/warm_starts/<party_id>.pt`` and
``OUT/fusion_model.pt``, in the models' layout, or with ``--target-arch`` in that family's (the function-space
refit of ``gp_refit``).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import torch

from cluster import results
from cluster.config import ClusterConfig, ConfigError
from fusion.io import save_warm_starter
from fusion.layout import ModelLayout
from fusion.models.spec import CNN_FAMILIES, MLPSpec, Spec, spec_for_family
from fusion.models.state_dicts import infer_cnn_spec, load_model_file, load_state_file, state_from_flat
from fusion.strategies import STRATEGIES, FusionConfig
from fusion.strategies.base import OUTPUT_KINDS

Log = Callable[[str], None]
ID = "party_id"
DEFAULT_STRATEGY = "gp_refit"  # with a probe; bench/foreign.py measures it on models trained elsewhere


@dataclass(frozen=True)
class FuseConfig:
    """The ``fuse`` command's inputs; paths are checked here, file contents while loading."""

    models: str
    descriptors: str
    targets: str
    out: str
    arch: str = ""  # "" -> inferred from the state dicts; 1-100-1 or a family name (cnn-s, cnn-m)
    target_arch: str = ""  # "" -> warm starts of the models' architecture; else a family (gp_refit + probe)
    seed: int = 0
    strategy: str = ""  # "" -> gp_refit (function space: works on models trained anywhere); needs --probe
    address: str = ""
    probe: str = ""  # .npy or CSV of unlabeled inputs (N, fan_in), for strategies that need them
    outputs: str = "values"  # "logits": classifiers over all outputs (refits combine class probabilities)

    def __post_init__(self) -> None:
        if not self.strategy:
            if not self.probe:
                raise ConfigError(
                    "fuse needs --probe FILE: unlabeled inputs where the targets' tasks live (a .npy or CSV, one row "
                    "of fan_in values per input, e.g. 256 points spread over the input range; no labels), so the "
                    "default strategy gp_refit can fuse the models' functions; or name a parameter-space strategy "
                    "with --fusion (e.g. gp), which suits only models aligned and trained alike"
                )
            object.__setattr__(self, "strategy", DEFAULT_STRATEGY)
        if not Path(self.models).is_dir():
            raise ConfigError(f"--models {self.models}: not a folder")
        for flag, path in (("--descriptors", self.descriptors), ("--targets", self.targets)):
            if not Path(path).is_file():
                raise ConfigError(f"{flag} {path}: no such file")
        if self.strategy not in STRATEGIES:
            raise ConfigError(f"unknown fusion strategy {self.strategy!r}; known: {', '.join(sorted(STRATEGIES))}")
        if self.seed < 0:
            raise ConfigError(f"--seed must be >= 0, got {self.seed}")
        if self.outputs not in OUTPUT_KINDS:
            raise ConfigError(f"--outputs must be one of {', '.join(OUTPUT_KINDS)}, got {self.outputs!r}")
        needs_probe = STRATEGIES[self.strategy].needs_probe
        if needs_probe and not self.probe:
            raise ConfigError(
                f"--fusion {self.strategy} needs probe inputs: pass --probe FILE (a .npy or CSV of unlabeled "
                "inputs, one row of fan_in values per input)"
            )
        if self.probe and not needs_probe:
            raise ConfigError(
                f"--probe is only used by strategies that refit on inputs; --fusion {self.strategy} does not"
            )
        if self.outputs != "values" and not needs_probe:
            raise ConfigError(
                f"--outputs {self.outputs} is only used by strategies that refit on inputs; "
                f"--fusion {self.strategy} does not"
            )
        if self.probe and not Path(self.probe).is_file():
            raise ConfigError(f"--probe {self.probe}: no such file")
        if self.arch and self.arch not in CNN_FAMILIES:
            try:
                MLPSpec.parse(self.arch)
            except ValueError as exc:
                raise ConfigError(f"--arch: {exc} or one of {', '.join(CNN_FAMILIES)}") from None
        if self.target_arch:
            try:
                spec_for_family(self.target_arch, 784, 10)
            except ValueError as exc:
                raise ConfigError(f"--target-arch: {exc}") from None
            if not STRATEGIES[self.strategy].cross_family:
                cross = sorted(n for n, s in STRATEGIES.items() if s.cross_family)
                raise ConfigError(
                    f"--target-arch needs a strategy that fuses across architectures ({', '.join(cross)}), "
                    f"not --fusion {self.strategy}"
                )
        out = Path(self.out)
        if out.exists() and (not out.is_dir() or any(out.iterdir())):
            raise ConfigError(f"output folder {out} already exists and is not empty; choose another --out")


@dataclass(frozen=True)
class Table:
    """A descriptors table: ``ids`` (n,) int64 or str, ``values`` (n, d) float64, ``columns`` d names."""

    ids: np.ndarray
    columns: list[str]
    values: np.ndarray


def read_table(path: str | Path, columns: list[str] | None = None) -> Table:
    """Read a CSV / Parquet table of ``party_id`` plus descriptor columns (``columns``: require exactly these)."""
    path = Path(path)
    suffix = path.suffix.lower()
    try:
        if suffix == ".csv":
            table = pacsv.read_csv(path)
        elif suffix in (".parquet", ".pq"):
            table = pq.read_table(path)
        else:
            raise ConfigError(f"{path}: unknown table format {suffix!r}; use .csv or .parquet")
    except (pa.ArrowInvalid, OSError) as exc:
        raise ConfigError(f"{path}: cannot read the table: {str(exc).splitlines()[0]}") from None
    if table.num_rows == 0:
        raise ConfigError(f"{path}: the table has no rows")
    names = table.column_names
    if ID not in names:
        raise ConfigError(f"{path}: no {ID!r} column (columns: {', '.join(names)})")
    desc_cols = [c for c in names if c != ID]
    if columns is not None and sorted(desc_cols) != sorted(columns):
        raise ConfigError(f"{path}: descriptor columns {desc_cols} differ from the descriptors table's {columns}")
    desc_cols = columns if columns is not None else desc_cols
    if not desc_cols:
        raise ConfigError(f"{path}: no descriptor columns besides {ID!r}")
    id_col = table[ID]
    if id_col.null_count:
        raise ConfigError(f"{path}: {id_col.null_count} row(s) without a {ID}")
    ids = np.asarray(id_col.to_pylist())
    ids = ids.astype(np.int64) if pa.types.is_integer(id_col.type) else ids.astype(str)
    uniq, counts = np.unique(ids, return_counts=True)
    if (counts > 1).any():
        raise ConfigError(f"{path}: {ID} {uniq[counts > 1][0]} appears more than once")
    for pid in ids.tolist():
        text = str(pid)
        if not text or text.startswith(".") or "/" in text or "\\" in text:
            raise ConfigError(f"{path}: {ID} {text!r} cannot name a file")
    values = np.empty((len(ids), len(desc_cols)))
    for j, col in enumerate(desc_cols):
        column = table[col]
        if not (pa.types.is_integer(column.type) or pa.types.is_floating(column.type) or pa.types.is_null(column.type)):
            raise ConfigError(f"{path}: descriptor column {col!r} is {column.type}, not numeric")
        vals = np.array([np.nan if v is None else v for v in column.to_pylist()], dtype=np.float64)
        bad = ~np.isfinite(vals)
        if bad.any():
            raise ConfigError(f"{path}: missing or non-finite descriptor {col!r} for {ID} {ids[bad.argmax()]}")
        values[:, j] = vals
    return Table(ids, desc_cols, values)


def _read_probe_rows(path: Path) -> np.ndarray:
    """A .npy array (no pickles) or a CSV of numbers (an optional header line is skipped)."""
    if path.suffix.lower() == ".npy":
        return np.load(path, allow_pickle=False)
    if path.suffix.lower() != ".csv":
        raise ValueError(f"unknown format {path.suffix!r}; use .npy or .csv")
    with open(path) as fh:
        first = fh.readline()
    try:
        [float(cell) for cell in first.split(",")]
        skip = 0
    except ValueError:
        skip = 1  # a header line
    return np.loadtxt(path, delimiter=",", ndmin=2, skiprows=skip)


def read_probe(path: str | Path, fan_in: int) -> np.ndarray:
    """Probe inputs (N, fan_in) float32 from ``path``; every problem is a :class:`ConfigError` naming the file."""
    path = Path(path)
    try:
        rows = _read_probe_rows(path)
    except (ValueError, OSError, EOFError) as exc:
        raise ConfigError(f"{path}: cannot read probe inputs: {str(exc).splitlines()[0]}") from None
    if rows.dtype.kind not in "iuf":
        raise ConfigError(f"{path}: probe inputs must be numbers, got dtype {rows.dtype}")
    rows = rows.reshape(-1, 1) if rows.ndim == 1 and fan_in == 1 else rows
    if rows.ndim != 2 or rows.shape[1] != fan_in or len(rows) == 0:
        raise ConfigError(f"{path}: probe inputs must have shape (N, {fan_in}) with N >= 1, got {rows.shape}")
    if not np.isfinite(rows).all():
        raise ConfigError(f"{path}: probe inputs contain NaN or Inf (row {int((~np.isfinite(rows)).any(1).argmax())})")
    return rows.astype(np.float32)


def model_files(folder: str | Path, table: Table, table_path: str) -> list[Path]:
    """``folder/<party_id>.pt`` for every row of ``table``; every ``.pt`` file must have a row."""
    folder = Path(folder)
    files = {p.stem: p for p in folder.glob("*.pt")}
    wanted = [str(i) for i in table.ids.tolist()]
    missing = [w for w in wanted if w not in files]
    if missing:
        raise ConfigError(f"{folder / (missing[0] + '.pt')}: no model file for {ID} {missing[0]} of {table_path}")
    extra = sorted(set(files) - set(wanted))
    if extra:
        raise ConfigError(f"{files[extra[0]]}: no descriptor for {ID} {extra[0]} in {table_path}")
    return [files[w] for w in wanted]


def model_spec(arch: str, first: Path) -> tuple[Spec, str]:
    """The models' architecture and where it came from: ``--arch`` (``1-100-1``; a CNN family is matched against
    the first file for its image size), else inferred from the first file; every other file must match it."""
    try:
        if arch in CNN_FAMILIES:
            return infer_cnn_spec(load_state_file(first), str(first), arch), f"--arch, image size from {first}"
        if arch:
            return MLPSpec.parse(arch), "--arch"
        return load_model_file(first)[1], f"inferred from {first}"
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


def fuse(cfg: FuseConfig, log: Log = print) -> Path:
    """Load, validate and fuse the models; write the warm starts and the fitted fusion model. Returns OUT."""
    import ray

    from actors.fusion import FusionActor
    from actors.model_loader import load_chunk
    from cluster.runtime import connect, disconnect

    parties = read_table(cfg.descriptors)
    targets = read_table(cfg.targets, parties.columns)
    paths = model_files(cfg.models, parties, cfg.descriptors)
    spec, origin = model_spec(cfg.arch, paths[0])
    probe = read_probe(cfg.probe, spec.fan_in) if cfg.probe else None
    target = spec
    if cfg.target_arch:
        try:
            target = spec_for_family(cfg.target_arch, spec.fan_in, spec.fan_out)
        except ValueError as exc:
            raise ConfigError(f"--target-arch: {exc}") from None
    conn = connect(ClusterConfig(address=cfg.address))
    try:
        clock = time.perf_counter()
        n_cpus = max(1, int(ray.cluster_resources().get("CPU", 1)))
        bounds = np.linspace(0, len(paths), min(len(paths), n_cpus) + 1).astype(int)
        desc32 = parties.values.astype(np.float32)
        pairs = [
            load_chunk.remote([str(p) for p in paths[a:b]], parties.ids[a:b], desc32[a:b], spec)
            for a, b in zip(bounds[:-1], bounds[1:])
        ]
        for report in ray.get([meta for _, meta in pairs]):
            if report["error"]:
                raise ConfigError(report["error"] + (f" ({origin})" if report["architecture"] else ""))
        log(
            f"loaded {len(paths)} models ({spec}, {origin}) in {len(pairs)} chunks ({time.perf_counter() - clock:.1f}s)"
        )
        clock = time.perf_counter()
        layout = ModelLayout(spec, target)
        fusion = FusionActor.remote(
            layout, FusionConfig(strategy=cfg.strategy), cfg.seed, n_cpus, probe=probe, outputs=cfg.outputs
        )
        try:
            fitted = ray.get(fusion.fit.remote(["fusion"], *[shard for shard, _ in pairs]))["fitted"]["fusion"]
        finally:
            ray.kill(fusion, no_restart=True)
        log(f"fusion ({cfg.strategy}): fitted in {time.perf_counter() - clock:.1f}s")
    finally:
        disconnect(conn)
    warm = fitted.predict(targets.values.astype(np.float32))
    if not np.isfinite(warm).all():
        raise ConfigError("the fitted fusion model produced non-finite warm starts; nothing written")
    out = Path(cfg.out)
    with results.staged_dir(out) as tmp:
        (tmp / "warm_starts").mkdir()
        for pid, flat in zip(targets.ids.tolist(), warm):
            torch.save(state_from_flat(flat, target), tmp / "warm_starts" / f"{pid}.pt")
        save_warm_starter(fitted, target, tmp / "fusion_model.pt")
    log(f"wrote {out}/ (warm_starts/ with {len(warm)} models, fusion_model.pt)")
    return out
