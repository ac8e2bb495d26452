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

from fusion.streams import Stream, party_rng

_NAME = re.compile(r"^[A-Za-z0-9_]+$")


@dataclass(frozen=True)
class PartyClass:
    """One ``[[party_classes]]`` table. ``cpus``/``gpus`` are per party-shard actor; ``actors`` shards per class."""

    name: str
    share: float
    cpus: float = 1.0
    gpus: float = 0.0
    speed: float = 1.0  # > 0; 1 = nominal, 0.5 = takes twice as long
    drop: float = 0.0  # probability in [0, 1) that a party of this class never reports (per round, in rounds)
    actors: int = 1
    bandwidth: float = 0.0  # bytes per simulated time unit, each way (0 = transfers take no time)
    latency: float = 0.0  # simulated time units added to every round trip
    online: float = 1.0  # probability in (0, 1] that a party of this class is online in a round

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
        if self.bandwidth < 0 or self.latency < 0:
            raise ValueError(f"{where}.bandwidth and .latency must be >= 0, got {self.bandwidth}, {self.latency}")
        if not 0 < self.online <= 1:
            raise ValueError(f"{where}.online must be a probability in (0, 1], got {self.online}")


STRAGGLERS = ("drop", "partial")


@dataclass(frozen=True)
class SystemConfig:
    """``[system]`` keys: ``deadline`` in simulated time units (0 = none) of the one-shot pretraining;
    ``round_deadline`` (0 = none) of every round of the rounds methods; ``jitter`` relative (>= 0), of both;
    ``straggler``: what a round does with a party that
    misses its deadline, ``"drop"`` (FedAvg: its update is lost) or ``"partial"`` (it uploads the local steps it
    finished by the deadline, FedProx-style); ``overselect`` (>= 1): a round samples that many times the parties
    it needs and keeps the first to finish (FedScale); ``availability``: a trace file of online windows
    (:func:`read_availability`), "" = each class's ``online`` probability per round."""

    deadline: float = 0.0
    round_deadline: float = 0.0
    jitter: float = 0.0
    straggler: str = "drop"
    overselect: float = 1.0
    availability: str = ""

    def __post_init__(self) -> None:
        if self.deadline < 0:
            raise ValueError(f"system.deadline must be >= 0 (0 = no deadline), got {self.deadline}")
        if self.round_deadline < 0:
            raise ValueError(f"system.round_deadline must be >= 0 (0 = no deadline), got {self.round_deadline}")
        if self.jitter < 0:
            raise ValueError(f"system.jitter must be >= 0, got {self.jitter}")
        if self.straggler not in STRAGGLERS:
            raise ValueError(f"system.straggler must be one of {', '.join(STRAGGLERS)}, got {self.straggler!r}")
        if not self.overselect >= 1:
            raise ValueError(
                f"system.overselect must be >= 1 (1 = sample only the parties needed), got {self.overselect}"
            )


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
    if len(classes) == 1:  # nothing to draw (a run's nominal clock)
        return np.zeros(len(ids), np.int64)
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


# -- rounds on the simulated clock -----------------------------------------------------------------------------
# A party's draws of round r come from default_rng([seed, party id, SYSTEM, ROUND_TAG, r]): independent of the
# pretraining's draws, of the sharding, and of restarts (a replayed round draws the same numbers).
_ROUND_TAG = 0x2A17


def round_rng(seed: int, party_id: int, round_: int) -> np.random.Generator:
    return np.random.default_rng([int(seed), int(party_id), int(Stream.SYSTEM), _ROUND_TAG, int(round_)])


@dataclass(frozen=True)
class Availability:
    """Online windows on the simulated clock: party id or class name -> [(start, end), ...] (end exclusive).

    A party listed by id follows its own windows; otherwise its class's, if listed; otherwise it is always online.
    """

    windows: dict[str | int, tuple[tuple[float, float], ...]]

    def online(self, party_id: int, class_name: str, t: float) -> bool | None:
        """Whether the party is online at ``t`` by the trace, or None when the trace does not name it or its class."""
        spans = self.windows.get(int(party_id), self.windows.get(class_name))
        if spans is None:
            return None
        return any(start <= t < end for start, end in spans)


def read_availability(path: str) -> Availability:
    """An availability trace: a CSV with the header ``who,start,end`` and one online window per row; ``who`` is a
    party id (digits) or a class name. Raises ``ValueError`` naming the file, the row and the problem."""
    from pathlib import Path

    try:
        lines = Path(path).expanduser().read_text().splitlines()
    except OSError as exc:
        raise ValueError(f"system.availability = {path!r}: cannot read it ({exc.strerror})") from None
    rows = [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]
    if not rows or rows[0].replace(" ", "") != "who,start,end":
        raise ValueError(f"system.availability = {path!r}: the first line must be the header who,start,end")
    windows: dict[str | int, list[tuple[float, float]]] = {}
    for n, row in enumerate(rows[1:], start=2):
        parts = [c.strip() for c in row.split(",")]
        try:
            who, start, end = parts[0], float(parts[1]), float(parts[2])
        except (IndexError, ValueError):
            raise ValueError(f"system.availability = {path!r}, row {n}: expected who,start,end, got {row!r}") from None
        if len(parts) != 3 or not start < end:
            raise ValueError(f"system.availability = {path!r}, row {n}: a window needs start < end, got {row!r}")
        key: str | int = int(who) if who.isdigit() else who
        windows.setdefault(key, []).append((start, end))
    return Availability({k: tuple(sorted(v)) for k, v in windows.items()})


def online_parties(
    classes: tuple[PartyClass, ...],
    seed: int,
    ids: np.ndarray,
    round_: int,
    t: float,
    trace: Availability | None = None,
) -> np.ndarray:
    """(n,) bool: which of ``ids`` are online at the start of round ``round_`` (simulated time ``t``): by the trace
    where it names the party or its class, else with its class's ``online`` probability (drawn from (seed, party
    id, round))."""
    ids = np.asarray(ids, np.int64)
    cls = party_classes_of(classes, seed, ids)
    out = np.ones(len(ids), bool)
    for k, (pid, c) in enumerate(zip(ids, cls)):
        by_trace = trace.online(int(pid), classes[c].name, t) if trace is not None else None
        if by_trace is not None:
            out[k] = by_trace
        else:
            out[k] = round_rng(seed, pid, round_).random() < classes[c].online
    return out


@dataclass(frozen=True)
class PartyTimes:
    """One round's sampled parties as each one's own clock sees it (in the order of ``ids``): ``finish`` when it
    would upload, relative to the round's start (inf: dropped out); ``steps`` the local steps it finishes of its
    ``full`` budget (fewer for a ``partial`` straggler, 0 when left out); ``reason`` "" (uploads), "dropped" or "late".
    Each row is a function of (seed, party id, round) and the party's own budget: any split of ``ids`` gives the same
    rows (:func:`close_round` is the server's part, which needs them all)."""

    ids: np.ndarray
    class_index: np.ndarray
    finish: np.ndarray
    steps: np.ndarray
    full: np.ndarray
    reason: np.ndarray

    @staticmethod
    def concat(parts: list[PartyTimes]) -> PartyTimes:
        """Several shards' times as one, in party-id order."""
        ids = np.concatenate([p.ids for p in parts]) if parts else np.zeros(0, np.int64)
        order = np.argsort(ids, kind="stable")
        cat = lambda k, dt: (  # noqa: E731
            np.concatenate([getattr(p, k) for p in parts])[order] if parts else np.zeros(0, dt)
        )
        return PartyTimes(
            ids[order],
            cat("class_index", np.int64),
            cat("finish", float),
            cat("steps", np.int64),
            cat("full", np.int64),
            cat("reason", str),
        )


@dataclass(frozen=True)
class RoundPlan:
    """What the simulated clock says of one round's sampled parties (in the order of ``ids``).

    ``finish``: when each would upload, relative to the round's start (inf for a dropped party); ``steps``: the
    local steps each uploads (its full budget, fewer for a ``partial`` straggler, 0 when left out); ``included``:
    whose uploads the server aggregates; ``reason``: "" (included), "dropped", "late" or "surplus" (overselected and
    not among the first to finish); ``duration``: the round's simulated time.
    """

    ids: np.ndarray
    class_index: np.ndarray
    finish: np.ndarray
    steps: np.ndarray
    included: np.ndarray
    reason: np.ndarray
    duration: float


def party_times(
    classes: tuple[PartyClass, ...],
    system: SystemConfig,
    seed: int,
    round_: int,
    ids: np.ndarray,
    steps,
    down_bytes: int,
    up_bytes: int,
    deadline: bool = True,
) -> PartyTimes:
    """Each sampled party's clock in round ``round_``: ``steps`` its full local budget (an int for all, or (n,)).

    A party's time: latency + (down_bytes + up_bytes) / bandwidth + steps / speed * (1 + jitter * u), ``u`` and its
    drop-out drawn from (seed, party id, round). Past ``system.round_deadline`` (when ``deadline``; an asynchronous
    server has none) a party is "late", or with ``straggler = "partial"`` uploads the whole steps it finished by then,
    if any.
    """
    ids = np.asarray(ids, np.int64)
    n = len(ids)
    full = np.broadcast_to(np.asarray(steps, np.int64), (n,)).copy()
    cls = party_classes_of(classes, seed, ids)
    finish, done = np.full(n, np.inf), np.zeros(n, np.int64)
    reason = np.full(n, "", dtype=object)
    limit = system.round_deadline if deadline else 0.0
    for k, (pid, c) in enumerate(zip(ids, cls)):
        pc = classes[c]
        rng = round_rng(seed, pid, round_)
        rng.random()  # the online draw (online_parties)
        drop_u, jitter_u = rng.random(2)
        if drop_u < pc.drop:
            reason[k] = "dropped"
            continue
        comm = pc.latency + ((down_bytes + up_bytes) / pc.bandwidth if pc.bandwidth > 0 else 0.0)
        per_step = (1.0 + system.jitter * jitter_u) / pc.speed
        finish[k] = comm + full[k] * per_step
        done[k] = full[k]
        if limit > 0 and finish[k] > limit:
            partial = int(np.floor((limit - comm) / per_step + 1e-9)) if system.straggler == "partial" else 0
            done[k] = max(0, min(partial, full[k]))
            reason[k] = "" if done[k] > 0 else "late"
            finish[k] = limit if done[k] > 0 else finish[k]
    return PartyTimes(ids, cls, finish, done, full, reason.astype(str))


def close_round(times: PartyTimes, system: SystemConfig, needed: int | None = None, deadline: bool = True) -> RoundPlan:
    """The server's side of a synchronous round from every sampled party's :class:`PartyTimes`: who is aggregated
    and how long the round lasts. The round lasts until the deadline when anyone is late or dropped out (the server
    cannot tell the two apart), else until the last upload; without a deadline a drop-out declines the round and
    nobody waits for it. ``needed``: with overselection, keep only the first ``needed`` parties to finish (the round
    ends at the last of them)."""
    reason, finish, done = times.reason.astype(object), times.finish, times.steps.copy()
    included = reason == ""
    if needed is not None and included.sum() > needed:
        order = np.flatnonzero(included)[np.argsort(finish[included], kind="stable")]
        reason[order[needed:]] = "surplus"
        included = reason == ""
    done[~included] = 0
    arrived = finish[included]
    last = float(arrived.max()) if len(arrived) else 0.0
    limit = system.round_deadline if deadline else 0.0
    if (needed is not None and included.sum() >= needed) or not limit:
        duration = last  # enough uploads arrived (overselection), or no deadline: nobody is waited for past them
    elif (reason != "").any() or (done[included] < times.full[included]).any():
        duration = float(limit)  # a drop-out or a straggler: the server waits until the deadline
    else:
        duration = last
    return RoundPlan(times.ids, times.class_index, finish, done, included, reason.astype(str), duration)


def round_plan(
    classes: tuple[PartyClass, ...],
    system: SystemConfig,
    seed: int,
    round_: int,
    ids: np.ndarray,
    steps,
    down_bytes: int,
    up_bytes: int,
    needed: int | None = None,
) -> RoundPlan:
    """The clock of one synchronous round for the sampled parties ``ids``, each running ``steps`` local steps:
    :func:`party_times` (each party's own) then :func:`close_round` (the server's)."""
    times = party_times(classes, system, seed, round_, ids, steps, down_bytes, up_bytes)
    return close_round(times, system, needed)


NOMINAL = (PartyClass("all", 1.0),)


@dataclass(frozen=True)
class RoundClock:
    """The simulated clock of a run's rounds: its party classes, ``[system]`` keys and availability trace. A run
    without ``[[party_classes]]`` has one nominal class (speed 1, no drop-outs, transfers free): its clock counts
    local steps. Small and frozen: it travels with every shard call."""

    classes: tuple[PartyClass, ...] = NOMINAL
    system: SystemConfig = SystemConfig()
    trace: Availability | None = None

    def needed(self, n_ids: int, fraction: float) -> tuple[int, int]:
        """(parties a round needs, parties it samples) of ``n_ids`` training parties: ``ceil(fraction · n)`` (at
        least 1), and that times ``overselect`` (at most ``n_ids``)."""
        needed = max(1, int(np.ceil(fraction * n_ids - 1e-9)))
        return needed, min(n_ids, int(np.ceil(needed * self.system.overselect - 1e-9)))

    def online(self, seed: int, round_: int, ids: np.ndarray, t: float) -> np.ndarray:
        """(n,) bool: which of ``ids`` are online at the start of round ``round_`` (at simulated time ``t``)."""
        if self.trace is None and all(c.online >= 1 for c in self.classes):
            return np.ones(len(ids), bool)
        return online_parties(self.classes, seed, ids, round_, t, self.trace)

    def times(self, seed, round_, ids, steps, down_bytes, up_bytes, deadline=True) -> PartyTimes:
        return party_times(self.classes, self.system, seed, round_, ids, steps, down_bytes, up_bytes, deadline)

    def close(self, times: PartyTimes, needed: int | None, deadline: bool = True) -> RoundPlan:
        return close_round(times, self.system, needed, deadline)

    def upload_time(self, seed: int, ids: np.ndarray, up_bytes: int) -> float:
        """The longest time one upload of ``up_bytes`` takes among ``ids`` (latency + bytes / bandwidth)."""
        cls = party_classes_of(self.classes, seed, np.asarray(ids, np.int64))
        if not len(cls):
            return 0.0
        each = [
            self.classes[c].latency + (up_bytes / self.classes[c].bandwidth if self.classes[c].bandwidth else 0.0)
            for c in np.unique(cls)
        ]
        return float(max(each))
