"""Federated rounds on the party shards: the driver's loop, its checkpoints and restarts.

One training run per ``training_key()`` (``fedavg`` and ``fedavg_ft`` train once). A round:

1. the driver samples the online training parties from (seed, round) on the run's simulated clock
   (:func:`fusion.federated.rounds.sample_round`) and groups them by the shard that hosts them;
2. the server actor computes ``broadcast(server)``: one object in the store, read by every sampled shard;
3. each shard with sampled parties gets ONE call (``fed_round``): each party's time, drop-out and step budget on
   the clock, then a :class:`LocalBatch` of the parties that upload, from data it drew once
   (:func:`fusion.federated.rounds.timed_round` with its :class:`PartyStore`); it returns the uploads stacked, the
   real sample counts and every sampled party's times;
4. the server actor receives the shards' result refs and runs :func:`fusion.federated.rounds.close_round`: who the
   round aggregates (deadline, overselection), in party-id order, and how far the simulated clock moves.

Every ``checkpoint_every`` rounds (and after the last) the server state, the costs so far and every party's
personal state are saved into ``checkpoint/federated-<key>.npz``. A shard or server that restarts holds no state
and answers "lost"; the driver then rolls everyone back to the last save and replays: sampling and every
party's randomness derive from (seed, round, party id), so the replay gives the same bits. ``--resume`` starts
from the same file.
"""

from __future__ import annotations

import dataclasses
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import ray

from actors import metrics
from actors.federated_server import FederatedServerActor, RoundsJob
from cluster.checkpoint import Checkpoint
from fusion.federated import ALGORITHMS, FederatedConfig, FederatedStart
from fusion.federated.base import State
from fusion.federated.htfl import HtFLAlgorithm, feature_dim
from fusion.federated.rounds import COUNTS, merge_exports, sample_round
from fusion.layout import ModelLayout
from fusion.models.spec import MLPSpec
from fusion.strategies.by_family import ByFamily
from fusion.system import RoundClock
from scenarios import Scenario, party_descriptors

Log = Callable[[str], None]
_INIT_TAG = 0xF1D  # the common init's stream: (seed, tag), no party's


def so_far(costs: dict | None) -> dict:
    """The costs a learning-curve point carries: the counts but ``rounds``, and ``sim_time`` (zeros for None)."""
    costs = costs or {}
    return {**{k: int(costs.get(k, 0)) for k in COUNTS[1:]}, "sim_time": float(costs.get("sim_time", 0.0))}


def common_init(scenario: Scenario, seed: int) -> np.ndarray:
    """The model (n_params,) every federated training starts from: the scenario's init on a stream of the run."""
    import torch

    gen = torch.Generator().manual_seed(int(np.random.default_rng([int(seed), _INIT_TAG]).integers(2**62)))
    return scenario.init_params(gen).numpy().astype(np.float32)


def jobs_of(
    methods: list[str], cfg: FederatedConfig, clock: RoundClock | None = None
) -> dict[str, tuple[RoundsJob, list[str]]]:
    """One :class:`RoundsJob` per training key of the federated ``methods`` on ``clock`` (default: the nominal one),
    with the methods it serves (the first method's settings train it)."""
    clock = clock or RoundClock()
    out: dict[str, tuple[RoundsJob, list[str]]] = {}
    for m in methods:
        cls = ALGORITHMS[m]
        key = cls.training_key()
        if key not in out:
            out[key] = (RoundsJob(key, cls, cfg, cfg.settings_of(m), clock), [])
        out[key][1].append(m)
    return out


@dataclass
class Trained:
    """One finished training run: the final server state, its costs and the wall seconds of its rounds."""

    server: State
    costs: dict[str, int]
    wall_s: float
    restarts: int = 0
    curve: list[dict] = field(default_factory=list)  # the participating parties' scores (RoundsEngine._score)


@dataclass
class RoundsEngine:
    """Runs :class:`RoundsJob` s on the party ``shards`` (hosting the training ids ``slices``) with ``server``.

    ``hook(round)`` (tests) runs after a round's shard calls are sent, before its result is awaited.
    """

    shards: list
    slices: list[np.ndarray]
    server: object
    scenario: Scenario
    seed: int
    ckpt: Checkpoint
    run_id: str = ""
    log: Log = print
    hook: Callable[[int], None] | None = None
    train_ids: np.ndarray = field(init=False)

    def __post_init__(self) -> None:
        self.slices = [np.asarray(s, np.int64) for s in self.slices]
        self.train_ids = np.sort(np.concatenate(self.slices))

    def _start(self, job: RoundsJob, init: np.ndarray, desc: np.ndarray, saved: dict | None) -> int:
        """Server and shards at the saved round (or at round 0): the start of a run, a resume, a roll-back."""
        personal = saved["personal"] if saved else {}
        ids = personal.get("party_id", np.zeros(0, np.int64))
        at = {k: saved[k] for k in ("round", "server", "costs")} if saved else None
        calls = [self.server.start.remote(job, self.scenario.spec, init, desc, self.seed, at)]
        for shard, hosted in zip(self.shards, self.slices):
            mine = np.isin(ids, hosted)
            rows = {k: v[mine] for k, v in personal.items()}
            calls.append(shard.fed_start.remote(job, saved["round"] if saved else 0, rows))
        return ray.get(calls)[0]

    def _save(self, job: RoundsJob, wall_s: float) -> dict | None:
        """Save the server state, costs and personal states; None when a shard or the server lost its state."""
        state = ray.get(self.server.state.remote(job.key))
        exports = ray.get([s.fed_export.remote(job.key) for s in self.shards]) if job.keeps_state else []
        if state is None or any("lost" in e for e in exports):
            return None
        personal = merge_exports(exports)  # party-id order; models of several families padded, with their sizes
        saved = {**state, "wall_s": wall_s, "personal": personal}
        self.ckpt.save_federated(job.key, saved)
        return saved

    def _score(self, job: RoundsJob, round_: int, down) -> list:
        """Ask every shard to score its participating parties before ``round_`` (refs; :meth:`_scored` reads them)."""
        return [shard.fed_evaluate.remote(job, round_, down) for shard in self.shards]

    @staticmethod
    def _scored(refs: list, round_: int, costs: dict) -> dict | None:
        """One learning-curve point from the shards' answers: round, party ids, metric, training loss and the costs
        so far; None when a shard lost its state (the round is replayed) or the algorithm has no per-party model."""
        parts = ray.get(refs)
        if any("lost" in p or "none" in p for p in parts):
            return None
        ids = np.concatenate([p["party_id"] for p in parts])
        order = np.argsort(ids, kind="stable")
        cat = lambda k: np.concatenate([p[k] for p in parts])[order]  # noqa: E731
        return {"round": round_, "party_id": ids[order], "value": cat("value"), "loss": cat("loss"), **costs}

    def _report(self, point: dict, methods: list[str]) -> dict:
        """``point`` (a learning-curve point), its means sent as the Ray series of each method it scores."""
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # every party NaN: the mean is NaN, not sent
            value, loss = float(np.nanmean(point["value"])), float(np.nanmean(point["loss"]))
        for method in methods:
            metrics.participating(self.run_id, method, point["round"], value, loss)
        return point

    def train(self, job: RoundsJob, methods: list[str]) -> Trained:
        """Run ``job``'s rounds (from its checkpoint, if one is saved) and return the final server state.

        Before every round of ``cfg.eval_rounds()`` and after the last, every training party's own model is scored
        on its held-out rows (the participating protocol, :meth:`_score`): the learning curve of ``Trained.curve``.
        """
        cfg, key = job.cfg, job.key
        init = common_init(self.scenario, self.seed)
        desc = party_descriptors(self.scenario, self.seed, self.train_ids)
        saved = self.ckpt.load_federated(key, cfg.rounds)
        r = self._start(job, init, desc, saved)
        wall0, t0 = (saved["wall_s"] if saved else 0.0), time.perf_counter()
        if saved:
            self.log(f"{key}: round {r}/{cfg.rounds} loaded from the checkpoint")
        every, restarts, mark, mark_r = max(1, cfg.rounds // 10), 0, time.perf_counter(), r
        scored_at, curve = set(cfg.eval_rounds()), {}
        costs = so_far((saved or {}).get("costs"))
        while r < cfg.rounds:
            chosen, needed = sample_round(
                job.clock, self.seed, r, self.train_ids, cfg.clients_per_round, costs["sim_time"]
            )
            down = self.server.broadcast.remote(key, r)
            scoring = self._score(job, r, down) if r in scored_at else None
            parts = []
            for shard, hosted in zip(self.shards, self.slices):
                mine = chosen[np.isin(chosen, hosted)]
                if len(mine):
                    parts.append(shard.fed_round.remote(job, r, down, mine))
            if self.hook is not None:
                self.hook(r)
            done = ray.get(self.server.aggregate.remote(key, r, needed, job.clock, *parts))
            if scoring is not None:
                point = self._scored(scoring, r, costs)
                if point is not None:
                    curve[r] = self._report(point, methods)
            if "lost" not in done:
                costs = so_far(done["costs"])
                r += 1
                metrics.federated_round(self.run_id, methods, r, len(chosen), done["upload_bytes"])
                if r % every == 0 or r == cfg.rounds:
                    now = time.perf_counter()
                    self.log(
                        f"{key}: round {r}/{cfg.rounds}, {len(chosen)} parties sampled, "
                        f"{(now - mark) / max(1, r - mark_r):.3f} s/round"
                    )
                    mark, mark_r = now, r
                if r % cfg.checkpoint_every and r != cfg.rounds:
                    continue
                saved_now = self._save(job, wall0 + time.perf_counter() - t0)
                if saved_now is not None:
                    saved = saved_now
                    continue
                done = {"lost": ["at the save"]}
            restarts += 1
            saved = self.ckpt.load_federated(key, cfg.rounds)
            back = saved["round"] if saved else 0
            self.log(f"{key}: state lost ({', '.join(map(str, done['lost']))} restarted); rolled back to round {back}")
            r = mark_r = self._start(job, init, desc, saved)
            costs = so_far((saved or {}).get("costs"))
            mark = time.perf_counter()
        if r in scored_at:  # after the last round
            point = self._scored(self._score(job, r, self.server.broadcast.remote(key, r)), r, costs)
            if point is not None:
                curve[r] = self._report(point, methods)
        ray.get([self.server.end.remote(key), *[s.fed_end.remote(key) for s in self.shards]])
        return Trained(saved["server"], saved["costs"], saved["wall_s"], restarts, [curve[k] for k in sorted(curve)])


@dataclass
class FederatedOutcome:
    """What the pipeline needs from the rounds: each method's novel-party start and its costs row."""

    starts: dict[str, FederatedStart]
    costs: dict[str, dict]
    restarts: int = 0
    curves: dict[str, list[dict]] = field(default_factory=dict)  # method -> its training's learning curve


def train_federated(
    methods: list[str],
    cfg: FederatedConfig,
    scenario: Scenario,
    layout: ModelLayout,
    seed: int,
    shards: list,
    slices: list[np.ndarray],
    namespace: str,
    run_id: str,
    ckpt: Checkpoint,
    n_novel: int,
    log: Log = print,
    clock: RoundClock | None = None,
) -> FederatedOutcome:
    """Train every federated method of a run (one training per key) and give each method's novel-party start.

    Costs per method: the rounds' (:class:`fusion.federated.rounds.Costs`) plus what each novel party downloads (a
    model; for the HtFL algorithms the shared head or prototypes, :attr:`fusion.federated.htfl.HtFLStart.download`);
    ``wall_s`` the rounds' wall time (replays after restarts included) plus the ``novel()`` calls of every method the
    training serves: one figure for the methods that share a training (``fedavg`` and ``fedavg_ft``), as they share
    its compute. ``clock``: the rounds' simulated clock (default: the nominal one); each row's ``sim_time`` is the
    simulated time its rounds took and ``aggregated`` the uploads that entered a server step.
    """
    if cfg.feature_dim == 0 and any(issubclass(ALGORITHMS[m], HtFLAlgorithm) for m in methods):
        cfg = dataclasses.replace(cfg, feature_dim=feature_dim(0, layout.families or (layout.spec,)))
    server = FederatedServerActor.options(name="federated-server", namespace=namespace, lifetime=None).remote(run_id)
    engine = RoundsEngine(shards, slices, server, scenario, seed, ckpt, run_id, log)
    out = FederatedOutcome({}, {})
    try:
        for job, served in jobs_of(methods, cfg, clock).values():
            trained = engine.train(job, served)
            out.restarts += trained.restarts
            clock = time.perf_counter()
            starts = {m: novel_start(ALGORITHMS[m](cfg, cfg.settings_of(m)), trained.server, layout) for m in served}
            wall = trained.wall_s + time.perf_counter() - clock
            for m, (start, download) in starts.items():
                out.starts[m] = start
                out.curves[m] = trained.curve
                row = dict(trained.costs)
                row["download_bytes"] += n_novel * download
                row["wall_s"] = wall
                out.costs[m] = row
    finally:
        ray.kill(server, no_restart=True)
    return out


def novel_start(algo, server: State, layout: ModelLayout) -> tuple[FederatedStart | ByFamily, int]:
    """What a novel party receives after the last round and its download bytes per novel party: one start, or in a
    run of mixed families one per family the novel parties receive (:class:`ByFamily`)."""
    if not layout.families:
        start = algo.novel(server, layout.spec)
        return start, getattr(start, "download", model_bytes(layout.spec))
    starts = {f.family: algo.novel(server, f) for f in layout.target_families}
    download = max(getattr(s, "download", model_bytes(s.spec)) for s in starts.values())
    return ByFamily(starts, {f: s.spec for f, s in starts.items()}), download


def model_bytes(spec: MLPSpec) -> int:
    """Bytes of one float32 model."""
    return 4 * spec.n_params
