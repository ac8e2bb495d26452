"""Checkpoints of a run inside its output folder, so ``fusion-cluster run --resume DIR`` can continue it.

Layout of ``DIR`` while a run is under way (every file written atomically: temp file, then rename)::

    config.toml                              the resolved config, written before any work starts
    checkpoint/pretrained-<first>-<last>.npz one per finished pretraining call: party_id, descriptor, params
    checkpoint/fitted-<method>.pt            each method's fitted warm starter (loads with weights_only=True)

A finished run also has ``results.parquet`` (moved in last). Nothing here is unpickled: ``.npz``
files load with ``allow_pickle=False`` and ``.pt`` files with ``torch.load(weights_only=True)``.
Whatever cannot be read, or does not belong to this run, is a :class:`ConfigError` naming the file.
"""

from __future__ import annotations

import os
import pickle
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from cluster.config import ConfigError, load_toml
from fusion.io import load_warm_starter, save_warm_starter
from fusion.strategies import WarmStarter
from scenarios import Scenario

CONFIG = "config.toml"
FOLDER = "checkpoint"
FINISHED_MARKER = "results.parquet"
# What torch.load(weights_only=True) and our loader raise on truncated, corrupted or non-weights files.
_UNREADABLE = (RuntimeError, ValueError, KeyError, IndexError, TypeError, EOFError, OSError, pickle.UnpicklingError)


def write_atomic(path: Path, write) -> None:
    """Call ``write(tmp_path)`` on a temp file beside ``path``, then rename it to ``path``."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(Path(tmp))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def resume_tree(folder: str | Path) -> dict[str, Any]:
    """The config tree of the interrupted run in ``folder`` (its ``config.toml``), with ``out`` set to it."""
    folder = Path(folder)
    if not (folder / CONFIG).is_file():
        raise ConfigError(f"--resume {folder}: not a fusion-cluster run folder (no {CONFIG})")
    if (folder / FINISHED_MARKER).exists():
        raise ConfigError(f"--resume {folder}: this run already finished ({FINISHED_MARKER} exists)")
    tree = load_toml(folder / CONFIG)
    tree["out"] = str(folder)
    return tree


def _first_line(exc: BaseException) -> str:
    """The first sentence of an exception's message (torch's run on for several lines)."""
    if isinstance(exc, pickle.UnpicklingError):  # torch's text suggests weights_only=False: never do that here
        return "it holds pickled Python objects, not only weights"
    text = str(exc).strip().splitlines()
    return text[0].split(". ")[0] if text else type(exc).__name__


class Checkpoint:
    """Saves and loads one run's finished work in ``out``; checks what it loads against the run's scenario."""

    def __init__(self, out: Path, scenario: Scenario, seed: int, parties: int) -> None:
        self.out, self.dir = Path(out), Path(out) / FOLDER
        self.scenario, self.seed, self.parties = scenario, seed, parties

    def start(self, config_text: str) -> None:
        """Create the folder and write the config: from here on the folder is a resumable run."""
        self.dir.mkdir(parents=True, exist_ok=True)
        write_atomic(self.out / CONFIG, lambda p: p.write_text(config_text))

    # -- pretrained parameters -------------------------------------------------------------

    def save_pretrained(self, part: dict) -> None:
        ids = np.asarray(part["party_id"])
        path = self.dir / f"pretrained-{int(ids.min()):06d}-{int(ids.max()):06d}.npz"

        def write(tmp: Path) -> None:
            with open(tmp, "wb") as fh:
                np.savez(fh, party_id=ids, descriptor=part["descriptor"], params=part["params"])

        write_atomic(path, write)

    def load_pretrained(self) -> list[dict]:
        """Every saved pretraining result, checked: shapes, party ids, and descriptors equal to this run's."""
        parts, seen = [], set()
        for path in sorted(self.dir.glob("pretrained-*.npz")):
            part = self._read_npz(path)
            dup = seen.intersection(part["party_id"].tolist())
            if dup:
                raise ConfigError(f"checkpoint {path}: parties {sorted(dup)[:5]} are saved twice")
            seen.update(part["party_id"].tolist())
            parts.append(part)
        return parts

    def _read_npz(self, path: Path) -> dict:
        try:
            with np.load(path, allow_pickle=False) as z:
                part = {k: np.array(z[k]) for k in ("party_id", "descriptor", "params")}
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as exc:
            msg = f"checkpoint {path} is corrupted or not a pretraining checkpoint: {_first_line(exc)}"
            raise ConfigError(msg) from None
        ids, desc, params = part["party_id"], part["descriptor"], part["params"]
        n, spec = len(ids), self.scenario.spec
        if ids.ndim != 1 or not np.issubdtype(ids.dtype, np.integer) or ((ids < 0) | (ids >= self.parties)).any():
            raise ConfigError(f"checkpoint {path}: party ids must be integers in [0, {self.parties})")
        if params.shape != (n, spec.n_params):
            raise ConfigError(
                f"checkpoint {path}: parameters of shape {params.shape}; model {spec} needs ({n}, {spec.n_params})"
            )
        expected = np.stack([self.scenario.party_descriptor(self.seed, i) for i in ids])
        if desc.ndim != 2 or desc.shape[1] != expected.shape[1]:
            width = desc.shape[1] if desc.ndim == 2 else desc.shape
            raise ConfigError(
                f"checkpoint {path}: descriptor width {width} does not match the scenario's {expected.shape[1]}"
            )
        if not np.allclose(desc, expected.astype(np.float32), rtol=1e-6, atol=0):
            raise ConfigError(f"checkpoint {path}: descriptors differ from this run's (another seed or scenario?)")
        part["params"] = params.astype(np.float32, copy=False)
        part["descriptor"] = desc.astype(np.float32, copy=False)
        part["party_id"] = ids.astype(np.int64, copy=False)
        return part

    # -- fitted warm starters --------------------------------------------------------------

    def save_fitted(self, fitted: dict[str, WarmStarter]) -> None:
        for method, starter in fitted.items():
            save_warm_starter(starter, self.scenario.target_spec, self.dir / f"fitted-{method}.pt")

    def load_fitted(self, methods: list[str]) -> dict[str, WarmStarter] | None:
        """The fitted warm starters of ``methods`` if every one is saved, else None (fit again)."""
        paths = {m: self.dir / f"fitted-{m}.pt" for m in methods}
        if not paths or not all(p.is_file() for p in paths.values()):
            return None
        fitted = {}
        for method, path in paths.items():
            try:
                starter, spec = load_warm_starter(path)
            except _UNREADABLE as exc:
                raise ConfigError(
                    f"checkpoint {path} is corrupted or not a fusion-cluster model (refused): {_first_line(exc)}"
                ) from None
            if spec != self.scenario.target_spec:
                raise ConfigError(
                    f"checkpoint {path}: model {spec} does not match the scenario's {self.scenario.target_spec}"
                )
            fitted[method] = starter
        return fitted
