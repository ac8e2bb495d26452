"""The pieces of a round that every runner shares: a shard's step, the server's step, the cost count.

:func:`run_rounds` runs a whole algorithm in one process on in-memory parties (tests, small studies); the Ray
engine calls :func:`timed_round` in each party shard and :func:`close_round` in the server actor, with the
same sampling and the same party-id order, so both give the same numbers.

Every round runs on the simulated clock of :class:`fusion.system.RoundClock` (a run without party classes has the
nominal one: speed 1, nobody drops out, no deadline): the sampled parties that are online (:func:`sample_round`)
each get their own time, drop-out and step budget in their shard (:func:`fusion.system.party_times`), and the server
keeps those the round aggregates (:func:`fusion.system.close_round`: deadline, overselection) and advances the clock.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from fusion.federated.base import (
    FederatedAlgorithm,
    FederatedConfig,
    LocalBatch,
    LossFn,
    State,
    Tensors,
    local_rng,
    sample,
)
from fusion.federated.local import OptimizerMemory, party_chunks
from fusion.lazy import torch
from fusion.models.party_scores import party_scores
from fusion.models.spec import MLPSpec, Spec
from fusion.system import PartyTimes, RoundClock


class PartyStore:
    """The personal states of the parties a shard hosts: party id -> {name: row tensor}."""

    def __init__(self) -> None:
        self.rows: dict[int, Tensors] = {}

    def stack(self, ids: np.ndarray, own: bool = False) -> Tensors | None:
        """The states of ``ids`` stacked (n, ...), or None when none of them has one yet. ``own``: the algorithm's
        personal states only, not the optimizer states kept beside them (:class:`OptimizerMemory`)."""
        if not len(ids) or int(ids[0]) not in self.rows:
            return None
        keys = [k for k in self.rows[int(ids[0])] if not (own and k.startswith(OptimizerMemory.PREFIX))]
        return {k: torch.stack([self.rows[int(i)][k] for i in ids]) for k in keys}

    def has(self, ids: np.ndarray) -> np.ndarray:
        return np.array([int(i) in self.rows for i in ids], bool)

    def update(self, ids: np.ndarray, state: Tensors) -> None:
        for row, i in enumerate(ids):
            self.rows[int(i)] = {k: v[row].clone() for k, v in state.items()}

    def export(self) -> dict[str, np.ndarray]:
        """``{"party_id": (n,), name: (n, ...)}`` in party-id order (empty dict when no party has state).

        Rows of one name that differ in their last size (parties of several architecture families) are saved
        zero-padded to the largest, with ``size.<name>`` (n,) their own sizes."""
        if not self.rows:
            return {}
        ids = np.array(sorted(self.rows), np.int64)
        out: dict[str, np.ndarray] = {"party_id": ids}
        for k in self.rows[int(ids[0])]:
            rows = [self.rows[int(i)][k].cpu().numpy() for i in ids]
            sizes = np.array([r.shape[-1] for r in rows], np.int64)
            if (sizes == sizes[0]).all():
                out[k] = np.stack(rows)
                continue
            out[k] = np.stack([np.pad(r, [(0, 0)] * (r.ndim - 1) + [(0, sizes.max() - r.shape[-1])]) for r in rows])
            out[f"size.{k}"] = sizes
        return out

    @classmethod
    def restore(cls, saved: dict[str, np.ndarray], device: torch.device | str = "cpu") -> PartyStore:
        store = cls()
        if saved:
            ids = saved["party_id"]
            for k, v in saved.items():
                if k == "party_id" or k.startswith("size."):
                    continue
                sizes = saved.get(f"size.{k}")
                for row, i in enumerate(ids):
                    value = np.array(v[row] if sizes is None else v[row][..., : int(sizes[row])])
                    store.rows.setdefault(int(i), {})[k] = torch.as_tensor(value, device=device)
        return store


def merge_exports(exports: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Several stores' :meth:`PartyStore.export` s as one, in party-id order (what :meth:`PartyStore.restore`
    reads). Rows of a name whose last size differs between the stores (shards hosting parties of different
    architecture families) are zero-padded to the largest, with ``size.<name>`` their own sizes."""
    exports = [e for e in exports if e]
    if not exports:
        return {}
    order = np.argsort(np.concatenate([e["party_id"] for e in exports]), kind="stable")
    out = {"party_id": np.concatenate([e["party_id"] for e in exports])[order]}
    names = sorted({k for e in exports for k in e if k != "party_id" and not k.startswith("size.")})
    for k in names:
        widths = [e[k].shape[-1] for e in exports]
        if len(set(widths)) == 1 and not any(f"size.{k}" in e for e in exports):
            out[k] = np.concatenate([e[k] for e in exports])[order]
            continue
        top = max(widths)
        padded = [np.pad(e[k], [(0, 0)] * (e[k].ndim - 1) + [(0, top - e[k].shape[-1])]) for e in exports]
        sizes = [e.get(f"size.{k}", np.full(len(e["party_id"]), e[k].shape[-1], np.int64)) for e in exports]
        out[k], out[f"size.{k}"] = np.concatenate(padded)[order], np.concatenate(sizes)[order]
    return out


def nbytes(state: State) -> int:
    return int(sum(np.asarray(v).nbytes for v in state.values()))


def shard_round(
    algo: FederatedAlgorithm,
    down: State,
    store: PartyStore | None,
    batch: LocalBatch,
    cfg: FederatedConfig | None = None,
) -> State:
    """The local updates of one shard's sampled parties; personal states (and, with ``cfg.optimizer_state =
    "persistent"``, the optimizer states) updated in ``store``. Uploads (n, ...)."""
    device = batch.x.device
    down_t = {k: torch.as_tensor(np.asarray(v), device=device) for k, v in down.items()}
    personal = None
    if algo.personal:
        fresh = ~store.has(batch.ids)
        if fresh.any():
            sub = batch.subset(np.flatnonzero(fresh))
            store.update(sub.ids, algo.init_personal(down_t, sub))
        personal = store.stack(batch.ids, own=True)
    persistent = keeps_optimizer(cfg)
    if persistent:
        batch.memory = OptimizerMemory([store.rows.get(int(i), {}) for i in batch.ids])
    uploads, personal = algo.local_update(down_t, personal, batch)
    if algo.personal or persistent:
        store.update(batch.ids, {**(personal or {}), **(batch.memory.kept if persistent else {})})
    return {k: v.detach().cpu().numpy().astype(np.float32) for k, v in uploads.items()}


def keeps_optimizer(cfg: FederatedConfig | None) -> bool:
    """Whether the parties' optimizer states live across rounds (in the shard's :class:`PartyStore`)."""
    return cfg is not None and cfg.optimizer_state == "persistent"


def keeps_state(algo_cls: type[FederatedAlgorithm], cfg: FederatedConfig) -> bool:
    """Whether a shard keeps state for the parties of this training between rounds (personal or optimizer states),
    which a restart loses and a checkpoint saves."""
    return bool(algo_cls.personal) or keeps_optimizer(cfg)


def local_round(
    algo: FederatedAlgorithm,
    down: State,
    store: PartyStore | None,
    parties: Parties,
    ids: np.ndarray,
    spec: Spec,
    cfg: FederatedConfig,
    seed: int,
    round_: int,
    budget: tuple[np.ndarray, np.ndarray] | None = None,
) -> tuple[State, np.ndarray]:
    """The local updates of one shard's sampled parties ``ids`` (sorted): :func:`shard_round` once per architecture
    family among them (``parties.families``; ``spec`` for all when None), on ``algo.model_spec(family)``, each
    family's parties in batches of :func:`fusion.federated.local.party_chunks`. ``budget``: (done (n,), full (n,))
    steps of each party's round (None: all). Returns the uploads (n, ...) in the order of ``ids`` and the real
    sample counts (n,).
    """
    ids = np.asarray(ids, np.int64)
    groups = parties.groups(ids, spec)
    out: State = {}
    counts = np.zeros(len(ids), np.float64)
    for rows, batch in _chunked_batches(algo, parties, ids, groups, cfg, seed, round_):
        if budget is not None:
            batch.budget = (budget[0][rows], budget[1][rows])
        up = shard_round(algo, down, store, batch, cfg)
        for k, v in up.items():
            out.setdefault(k, np.zeros((len(ids), *v.shape[1:]), np.float32))[rows] = v
        counts[rows] = batch.counts.cpu().numpy()
    return out, counts


def _chunked_batches(algo, parties: Parties, ids: np.ndarray, groups, cfg, seed: int, round_: int):
    """(rows of ``ids``, :class:`LocalBatch`) per architecture family in ``groups`` and chunk of its parties
    (:func:`fusion.federated.local.party_chunks`)."""
    for family_rows, family in groups:
        model = algo.model_spec(family)
        sizes = parties.counts[torch.as_tensor(np.searchsorted(parties.ids, ids[family_rows]))].cpu().numpy()
        for chunk in party_chunks(sizes, model.n_params):
            rows = family_rows[chunk]
            yield rows, parties.batch(ids[rows], model, cfg, seed, round_)


def participant_scores(
    algo: FederatedAlgorithm,
    down: State,
    store: PartyStore | None,
    parties: Parties,
    ids: np.ndarray,
    spec: Spec,
    cfg: FederatedConfig,
    seed: int,
    round_: int,
    held_out: Callable[[np.ndarray], tuple[torch.Tensor, torch.Tensor]],
    metric: Callable,
) -> tuple[np.ndarray, np.ndarray] | None:
    """PFLlib's score of participating parties ``ids`` before round ``round_``: each party's own model
    (:meth:`FederatedAlgorithm.participant_models` after the broadcast ``down``) on its held-out rows, and its training
    loss on its own training rows. ``held_out(ids) -> (x (m, N, in), y (m, N, ...))`` gives the held-out rows;
    ``metric(pred, y, descriptors) -> (m,)``. Returns (metric (n,), training loss (n,)) in the order of ``ids``, or
    None when the algorithm has no per-party model. Nothing in ``store`` changes: a party without a personal state
    yet is scored with the one it would start with.
    """
    ids = np.asarray(ids, np.int64)
    groups = parties.groups(ids, spec)
    values, losses = np.full(len(ids), np.nan), np.full(len(ids), np.nan)
    for rows, batch in _chunked_batches(algo, parties, ids, groups, cfg, seed, round_):
        device = batch.x.device
        down_t = {k: torch.as_tensor(np.asarray(v), device=device) for k, v in down.items()}
        personal = None
        if algo.personal:  # the kept states; a party without one yet: the state it would start with
            have = store.has(batch.ids)
            if have.all():
                personal = store.stack(batch.ids, own=True)
            else:
                personal = {k: v.clone() for k, v in algo.init_personal(down_t, batch).items()}
                if have.any():
                    at = torch.as_tensor(np.flatnonzero(have), device=device)
                    for k, v in store.stack(batch.ids[have], own=True).items():
                        personal[k][at] = v.to(personal[k].dtype)
        models = algo.participant_models(down_t, personal, batch)
        if models is None:
            return None
        x, y = held_out(batch.ids)
        values[rows] = party_scores(metric, models, batch.spec, x, y, batch.descriptors).cpu().numpy()
        loss = lambda pred, y, d, loss_of=batch.loss_of: loss_of(d)(pred, y)  # noqa: E731
        losses[rows] = party_scores(loss, models, batch.spec, batch.x, batch.y, batch.descriptors).cpu().numpy()
    return values, losses


def server_round(algo: FederatedAlgorithm, server: State, parts: list[tuple[np.ndarray, State, np.ndarray]]) -> State:
    """Aggregate the shards' ``parts`` [(ids (n_s,), uploads (n_s, ...), weights (n_s,))] in party-id order (a round
    without uploads leaves ``server`` as it is)."""
    parts = [p for p in parts if len(p[0])]
    if not parts:
        return server
    ids = np.concatenate([p[0] for p in parts])
    order = np.argsort(ids, kind="stable")
    uploads = {k: np.concatenate([p[1][k] for p in parts])[order] for k in parts[0][1]}
    weights = np.concatenate([p[2] for p in parts])[order]
    return algo.aggregate(server, uploads, weights, ids[order])


def sample_round(
    clock: RoundClock, seed: int, round_: int, ids: np.ndarray, fraction: float, t: float
) -> tuple[np.ndarray, int]:
    """The parties of round ``round_`` starting at simulated time ``t``, and how many the round needs: of the online
    ``ids`` (:meth:`RoundClock.online`), ``ceil(fraction · n)`` times ``overselect`` (:meth:`RoundClock.needed`),
    sorted. With every party online and no overselection this is :func:`sample`."""
    ids = np.sort(np.asarray(ids, np.int64))
    needed, k = clock.needed(len(ids), fraction)
    online = ids[clock.online(seed, round_, ids, t)]
    return sample(seed, round_, online, fraction, min(k, len(online))), needed


def timed_round(
    algo: FederatedAlgorithm,
    down: State,
    store: PartyStore | None,
    parties: Parties,
    ids: np.ndarray,
    spec: Spec,
    cfg: FederatedConfig,
    seed: int,
    round_: int,
    clock: RoundClock,
) -> dict:
    """One shard's part of a round on the simulated clock: each sampled party's :class:`PartyTimes` (from (seed,
    party id, round) and its own step budget), then the local updates of those that upload (a ``partial`` straggler
    its share of the steps); a dropped or late party does nothing. Returns ``party_id`` (m,) of the uploading parties,
    their ``uploads`` {name: (m, ...)} and ``weights`` (m,) real sample counts, and ``times`` of all ``ids``."""
    ids = np.asarray(ids, np.int64)
    counts = parties.counts[torch.as_tensor(np.searchsorted(parties.ids, ids))].cpu().numpy()
    times = clock.times(
        seed,
        round_,
        ids,
        algo.party_steps(counts),
        algo.download_bytes(down),
        algo.upload_bytes(down),
        deadline=not algo.asynchronous,
    )
    go = times.reason == ""
    uploads, weights = {}, np.zeros(0, np.float64)
    if go.any():
        budget = (times.steps[go], times.full[go])
        uploads, weights = local_round(algo, down, store, parties, ids[go], spec, cfg, seed, round_, budget)
    return {"party_id": ids[go], "uploads": uploads, "weights": weights, "times": times}


def close_round(
    algo: FederatedAlgorithm, server: State, parts: list[dict], clock: RoundClock, needed: int, t: float
) -> tuple[State, dict]:
    """The server's step on the shards' :func:`timed_round` ``parts`` of a round that starts at simulated time ``t``.

    Synchronous algorithms: :meth:`RoundClock.close` says whose uploads the round aggregates (deadline,
    overselection) and how long it lasts; those uploads are aggregated in party-id order. An asynchronous algorithm
    (``algo.asynchronous``) gets every upload with its arrival time (:meth:`FederatedAlgorithm.aggregate_async`).
    Returns the new server state and the round's ``{"sampled", "duration", "aggregated", "upload_bytes",
    "party_steps", "plan"}``."""
    times = PartyTimes.concat([p["times"] for p in parts])
    sent = times.reason == ""
    steps = int(times.steps[sent].sum())
    upload_bytes = sum(nbytes(p["uploads"]) for p in parts)
    if algo.asynchronous:
        ids = np.concatenate([p["party_id"] for p in parts]) if parts else np.zeros(0, np.int64)
        order = np.argsort(ids, kind="stable")
        keys = next((p["uploads"].keys() for p in parts if len(p["party_id"])), ())
        uploads = {k: np.concatenate([p["uploads"][k] for p in parts if len(p["party_id"])])[order] for k in keys}
        weights = np.concatenate([p["weights"] for p in parts])[order] if parts else np.zeros(0)
        arrival = t + times.finish[np.isin(times.ids, ids[order])]
        server, end, aggregated = algo.aggregate_async(server, uploads, weights, ids[order], arrival, t)
        duration, plan = end - t, None
    else:
        plan = clock.close(times, needed)
        keep = set(plan.ids[plan.included].tolist())
        kept = []
        for p in parts:
            rows = np.array([int(i) in keep for i in p["party_id"]], bool)
            kept.append((p["party_id"][rows], {k: v[rows] for k, v in p["uploads"].items()}, p["weights"][rows]))
        server = server_round(algo, server, kept)
        duration, aggregated = plan.duration, int(plan.included.sum())
    return server, {
        "sampled": len(times.ids),
        "duration": float(duration),
        "aggregated": int(aggregated),
        "upload_bytes": int(upload_bytes),
        "party_steps": steps,
        "plan": plan,
    }


COUNTS = ("rounds", "upload_bytes", "download_bytes", "party_steps", "aggregated")  # Costs' integer fields


@dataclass
class Costs:
    """Communication and compute of one algorithm's rounds (bytes of float32 payloads; local gradient steps), the
    uploads the server aggregated and the simulated time the rounds took (:class:`fusion.system.RoundClock`)."""

    rounds: int = 0
    upload_bytes: int = 0
    download_bytes: int = 0
    party_steps: int = 0
    aggregated: int = 0
    sim_time: float = 0.0

    def add(self, download: int, outcome: dict) -> None:
        """One round: its ``outcome`` (:func:`close_round`), each sampled party downloading ``download`` bytes."""
        self.rounds += 1
        self.download_bytes += outcome["sampled"] * download
        self.upload_bytes += outcome["upload_bytes"]
        self.party_steps += outcome["party_steps"]
        self.aggregated += outcome["aggregated"]
        self.sim_time += outcome["duration"]


@dataclass
class Parties:
    """Training parties held in one process: ``ids`` (n,), ``x`` (n, N, in), ``y`` (n, N, ...), ``descriptors``
    (n, d), ``counts`` (n,) real samples; ``loss_of(descriptors (m, d)) -> LossFn`` binds the task loss;
    ``families(ids)``, in a run of mixed architecture families, each family's (rows of ``ids``, spec)."""

    ids: np.ndarray
    x: torch.Tensor
    y: torch.Tensor
    descriptors: torch.Tensor
    counts: torch.Tensor
    loss_of: Callable[[torch.Tensor], LossFn]
    families: Callable[[np.ndarray], list[tuple[np.ndarray, Spec]]] | None = None  # ids -> (rows, spec) per family

    def groups(self, ids: np.ndarray, spec: Spec) -> list[tuple[np.ndarray, Spec]]:
        """(rows of ``ids``, spec) per architecture family among ``ids``; one group of ``spec`` without families."""
        return self.families(ids) if self.families is not None else [(np.arange(len(ids)), spec)]

    def batch(self, ids: np.ndarray, spec: Spec, cfg: FederatedConfig, seed: int, round_: int) -> LocalBatch:
        rows = torch.as_tensor(np.searchsorted(self.ids, ids))
        return LocalBatch(
            spec,
            np.asarray(ids, np.int64),
            self.x[rows],
            self.y[rows],
            self.loss_of,
            self.descriptors[rows],
            self.counts[rows],
            [local_rng(seed, i, round_) for i in ids],
            cfg.local(),
            round_,
            seed,
        )


@dataclass
class RoundsResult:
    server: State
    store: PartyStore
    costs: Costs


def run_rounds(
    algo: FederatedAlgorithm,
    spec: MLPSpec,
    parties: Parties,
    init: np.ndarray,
    seed: int,
    rounds: int | None = None,
    shards: int = 1,
    clock: RoundClock | None = None,
) -> RoundsResult:
    """Run ``algo`` for ``rounds`` (default ``cfg.rounds``) in this process, the parties split into ``shards``
    contiguous groups as a Ray run would split them (the result must not depend on ``shards``), on ``clock``
    (default: the nominal one)."""
    cfg, clock = algo.cfg, clock or RoundClock()
    ids = np.sort(parties.ids)
    server = algo.init_server(spec, init, parties.descriptors.cpu().numpy(), seed)
    groups = np.array_split(ids, shards)
    stores = [PartyStore() for _ in groups]
    costs = Costs()
    for r in range(cfg.rounds if rounds is None else rounds):
        chosen, needed = sample_round(clock, seed, r, ids, cfg.clients_per_round, costs.sim_time)
        down = algo.broadcast(server)
        parts = []
        for group, store in zip(groups, stores):
            mine = chosen[np.isin(chosen, group)]
            if len(mine):
                parts.append(timed_round(algo, down, store, parties, mine, spec, cfg, seed, r, clock))
        server, outcome = close_round(algo, server, parts, clock, needed, costs.sim_time)
        costs.add(algo.download_bytes(down), outcome)
    merged = PartyStore()
    for store in stores:
        merged.rows.update(store.rows)
    return RoundsResult(server, merged, costs)
