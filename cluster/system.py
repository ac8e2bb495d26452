"""System heterogeneity: resource classes of parties, stragglers and dropouts on a simulated clock.

``[[party_classes]]`` tables give each class a share of the parties, the resources of the party-shard actors
that host it (``cpus``, ``gpus``, ``actors``), a ``speed`` factor and a ``drop`` probability. ``[system]``
sets the fusion ``deadline``. Everything here is a function of (run seed, party id): which class a party
belongs to, its simulated completion time and whether it drops out do not depend on the sharding, the
machine or the wall clock.

Simulated clock: one time unit is one pretraining step of a nominal party (speed 1), so a party finishes at
``steps / speed * (1 + jitter * u)`` with ``u ~ U[0, 1)`` from its own stream. Fusion waits for the parties
that finish by ``deadline`` (0 = no deadline); a dropped party never reports.

    >>> classes = (PartyClass("fast", 0.5), PartyClass("slow", 0.5, speed=0.5, drop=0.1))
    >>> plan = schedule(classes, SystemConfig(deadline=3000), seed=0, ids=np.arange(4), steps=2000)
    >>> plan.left_out_reason.shape
    (4,)
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from scenarios import Stream, party_rng

_NAME = re.compile(r"^[A-Za-z0-9_]+$")


@dataclass(frozen=True)
class PartyClass:
    """One ``[[party_classes]]`` table. ``cpus``/``gpus`` are per party-shard actor; ``actors`` shards per class."""

    name: str
    share: float
    cpus: float = 1.0
    gpus: float = 0.0
    speed: float = 1.0  # > 0; 1 = nominal, 0.5 = takes twice as long
    drop: float = 0.0  # probability in [0, 1) that a party of this class never reports
    actors: int = 1

    def __post_init__(self) -> None:
        where = f"party_classes[{self.name!r}]"
        if not _NAME.match(self.name):
            raise ValueError(f"party_classes: name must be letters, digits or _ (it names actors), got {self.name!r}")
        if not 0 < self.share <= 1:
            raise ValueError(f"{where}.share must be in (0, 1], got {self.share}")
        if not self.cpus > 0:
            raise ValueError(f"{where}.cpus must be > 0, got {self.cpus}")
        if self.gpus < 0 or (self.gpus > 1 and self.gpus != int(self.gpus)):
            raise ValueError(f"{where}.gpus must be >= 0 (a fraction, or a whole number above 1), got {self.gpus}")
        if not self.speed > 0:
            raise ValueError(f"{where}.speed must be > 0 (1 = nominal), got {self.speed}")
        if not 0 <= self.drop < 1:
            raise ValueError(f"{where}.drop must be a probability in [0, 1), got {self.drop}")
        if self.actors < 1:
            raise ValueError(f"{where}.actors must be >= 1, got {self.actors}")


@dataclass(frozen=True)
class SystemConfig:
    """``[system]`` keys: ``deadline`` in simulated time units (0 = none), ``jitter`` relative (>= 0)."""

    deadline: float = 0.0
    jitter: float = 0.0

    def __post_init__(self) -> None:
        if self.deadline < 0:
            raise ValueError(f"system.deadline must be >= 0 (0 = no deadline), got {self.deadline}")
        if self.jitter < 0:
            raise ValueError(f"system.jitter must be >= 0, got {self.jitter}")


def check_classes(classes: tuple[PartyClass, ...]) -> None:
    """Names distinct, shares summing to 1 (not normalised: a typo should not silently reweight classes)."""
    names = [c.name for c in classes]
    if len(set(names)) != len(names):
        raise ValueError(f"party_classes: names must be distinct, got {names}")
    total = sum(c.share for c in classes)
    if classes and abs(total - 1.0) > 1e-6:
        raise ValueError(f"party_classes: shares must sum to 1, got {total:g} ({', '.join(map(str, names))})")


@dataclass(frozen=True)
class Schedule:
    """Per party (in the order of ``ids``): class index, simulated completion time, and why it is left out."""

    ids: np.ndarray  # (n,) int64
    class_index: np.ndarray  # (n,) int64 into the classes
    time: np.ndarray  # (n,) float64, simulated completion time of pretraining
    left_out_reason: np.ndarray  # (n,) str: "" (reports in time), "dropped" or "late"

    @property
    def reporting(self) -> np.ndarray:
        """Ids of the parties whose models reach fusion: (k,) int64."""
        return self.ids[self.left_out_reason == ""]


def party_classes_of(classes: tuple[PartyClass, ...], seed: int, ids: np.ndarray) -> np.ndarray:
    """Class index of every party in ``ids``: (n,) int64, drawn by share from the party's own stream."""
    edges = np.cumsum([c.share for c in classes])
    u = np.array([party_rng(seed, i, Stream.SYSTEM).random() for i in ids])
    return np.minimum(np.searchsorted(edges, u * edges[-1], side="right"), len(classes) - 1).astype(np.int64)


def schedule(classes: tuple[PartyClass, ...], system: SystemConfig, seed: int, ids: np.ndarray, steps: int) -> Schedule:
    """Who reports in time: each party's class, simulated completion time and dropout, from (seed, party id)."""
    ids = np.asarray(ids, np.int64)
    cls = party_classes_of(classes, seed, ids)
    time, reason = np.zeros(len(ids)), np.full(len(ids), "", dtype=object)
    for k, (pid, c) in enumerate(zip(ids, cls)):
        rng = party_rng(seed, pid, Stream.SYSTEM)
        _, jitter_u, drop_u = rng.random(3)  # the first draw chose the class
        pc = classes[c]
        time[k] = steps / pc.speed * (1.0 + system.jitter * jitter_u)
        if drop_u < pc.drop:
            reason[k] = "dropped"
        elif system.deadline > 0 and time[k] > system.deadline:
            reason[k] = "late"
    return Schedule(ids, cls, time, reason.astype(str))


def left_out_csv(plan: Schedule, classes: tuple[PartyClass, ...]) -> str:
    """``left_out.csv``: party_id, class, reason (dropped | late), simulated time — one row per left-out party."""
    rows = ["party_id,class,reason,simulated_time"]
    for pid, c, t, why in zip(plan.ids, plan.class_index, plan.time, plan.left_out_reason):
        if why:
            rows.append(f"{pid},{classes[c].name},{why},{t:.6g}")
    return "\n".join(rows) + "\n"
