"""Checkpoints of a run inside its output folder, so ``fusion-cluster run --resume DIR`` can continue it.

Layout of ``DIR`` while a run is under way (every file written atomically: temp file, then rename)::

    config.toml                              the resolved config, written before any work starts
    checkpoint/pretrained-<first>-<last>.npz one per finished pretraining call: party_id, descriptor, params
    checkpoint/fitted-<method>.pt            each method's fitted warm starter (loads with weights_only=True)
    checkpoint/quarantine.json               the training parties left out of fusion: party_id, reason (a
                                             fusion.screen.Reason name), discrepancy, neighbours
    checkpoint/federated-<key>.npz           a federated training run at its last saved round: round, costs,
                                             wall_s, server.<name> (server state), personal.<name> (party_id and
                                             the personal states of every party that has one, in party-id order)

A finished run also has ``results.parquet`` (moved in last). Nothing here is unpickled: ``.npz``
files load with ``allow_pickle=False`` and ``.pt`` files with ``torch.load(weights_only=True)``.
Whatever cannot be read, or does not belong to this run, is a :class:`ConfigError` naming the file.
"""

from __future__ import annotations

import dataclasses
import json
import pickle
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from cluster.config import ConfigError, load_toml
from fusion.federated.rounds import COUNTS
from fusion.io import load_warm_starter, save_warm_starter, write_atomic
from fusion.screening.screen import Quarantined, Reason
from fusion.warm_start import WarmStarter
from scenarios import Scenario

CONFIG = "config.toml"
FOLDER = "checkpoint"
QUARANTINE = "quarantine.json"
FINISHED_MARKER = "results.parquet"
# What torch.load(weights_only=True) and our loader raise on truncated, corrupted or non-weights files.
_UNREADABLE = (RuntimeError, ValueError, KeyError, IndexError, TypeError, EOFError, OSError, pickle.UnpicklingError)


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

    def save_quarantine(self, records: tuple[Quarantined, ...]) -> None:
        """The training parties left out of fusion and why (read back on resume)."""
        rows = [{**dataclasses.asdict(q), "reason": q.reason.name} for q in records]
        write_atomic(self.dir / QUARANTINE, lambda tmp: tmp.write_text(json.dumps(rows)))

    def load_quarantine(self) -> tuple[Quarantined, ...]:
        path = self.dir / QUARANTINE
        if not path.exists():
            return ()
        try:
            rows = json.loads(path.read_text())
            return tuple(
                Quarantined(int(r["party_id"]), Reason[r["reason"]], float(r["discrepancy"]), int(r["neighbours"]))
                for r in rows
            )
        except (ValueError, KeyError, TypeError) as exc:
            raise ConfigError(f"checkpoint {path} is corrupted: {_first_line(exc)}") from None

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

    # -- federated rounds ------------------------------------------------------------------

    def federated_path(self, key: str) -> Path:
        return self.dir / f"federated-{key}.npz"

    def save_federated(self, key: str, saved: dict) -> None:
        """``saved``: ``round`` (the next round), ``costs`` (:class:`fusion.federated.rounds.Costs` as a dict: the
        counts and ``sim_time``), ``wall_s``, ``server`` (name -> array) and ``personal`` (:meth:`PartyStore.export`,
        may be empty)."""
        c = saved["costs"]
        arrays = {
            "round": np.int64(saved["round"]),
            "costs": np.array([c[k] for k in COUNTS], np.int64),
            "sim_time": np.float64(c["sim_time"]),
            "wall_s": np.float64(saved["wall_s"]),
            **{f"server.{k}": np.asarray(v) for k, v in saved["server"].items()},
            **{f"personal.{k}": np.asarray(v) for k, v in saved["personal"].items()},
        }

        def write(tmp: Path) -> None:
            with open(tmp, "wb") as fh:
                np.savez(fh, **arrays)

        write_atomic(self.federated_path(key), write)

    def load_federated(self, key: str, rounds: int) -> dict | None:
        """The saved state of federated training ``key`` (as :meth:`save_federated` takes it), or None if none."""
        path = self.federated_path(key)
        if not path.is_file():
            return None
        try:
            with np.load(path, allow_pickle=False) as z:
                arrays = {k: np.array(z[k]) for k in z.files}
            round_, costs, wall = int(arrays.pop("round")), arrays.pop("costs"), float(arrays.pop("wall_s"))
            sim_time = float(arrays.pop("sim_time"))
        except (OSError, ValueError, KeyError, EOFError, TypeError, zipfile.BadZipFile) as exc:
            raise ConfigError(
                f"checkpoint {path} is corrupted or not a federated checkpoint: {_first_line(exc)}"
            ) from None
        personal = {k.split(".", 1)[1]: v for k, v in arrays.items() if k.startswith("personal.")}
        ids = personal.get("party_id", np.zeros(0, np.int64))
        if not 0 <= round_ <= rounds or costs.shape != (len(COUNTS),) or ((ids < 0) | (ids >= self.parties)).any():
            raise ConfigError(f"checkpoint {path}: round, costs or party ids do not belong to this run")
        return {
            "round": round_,
            "costs": {**{n: int(v) for n, v in zip(COUNTS, costs)}, "sim_time": sim_time},
            "wall_s": wall,
            "server": {k.split(".", 1)[1]: v for k, v in arrays.items() if k.startswith("server.")},
            "personal": personal,
        }
