"""A party shard: one Ray actor hosting many parties, pretraining and evaluating them as batches."""

from __future__ import annotations

import os
import time

import numpy as np
import ray
import torch

from actors import metrics
from actors.faults import FaultConfig
from fusion.federated.base import FederatedStart
from fusion.federated.rounds import Parties, PartyStore, local_round, participant_scores
from fusion.methods import COLD_START
from fusion.params import RowLoss, forward, init_params
from fusion.strategies.base import predict_all
from fusion.strategies.by_family import ByFamily, pack
from fusion.training import FREE, Constraint, FinetuneConfig, TrainConfig, finetune, train
from fusion.widths import embed
from scenarios import (
    Scenario,
    Stream,
    party_descriptors,
    party_rng,
    party_torch_generator,
    party_widths,
    training_data,
    with_hidden_width,
    with_spec,
)


def _stack(arrays: list[np.ndarray], device: torch.device) -> torch.Tensor:
    return torch.as_tensor(np.stack(arrays), device=device)


def training_parties(scenario: Scenario, seed: int, ids: np.ndarray, device: torch.device | str = "cpu") -> Parties:
    """The private data of training parties ``ids`` as the federated rounds use it (the draw of pretraining)."""
    desc, x, y = training_data(scenario, seed, ids)
    counts = scenario.real_rows(y).sum(axis=1)

    def loss_of(descriptors: torch.Tensor):
        return RowLoss(scenario.loss, descriptors, scenario.loss_grad)

    as_t = lambda a: torch.as_tensor(a, device=device)  # noqa: E731
    families = (lambda some: scenario.family_groups(seed, some)) if scenario.mixed else None
    return Parties(np.asarray(ids, np.int64), as_t(x), as_t(y), as_t(desc), as_t(counts), loss_of, families)


def _is_free(constraint: Constraint) -> bool:
    return constraint.mask is None and constraint.prox == 0


class PartyShard:
    """Hosts the parties ``train_ids`` (pretrained here) and ``test_ids`` (evaluated here).

    Every party's data, init and shots derive from (seed, party id), so any sharding of the same
    parties gives the same numbers. ``widths``: a run that mixes hidden widths (each party's drawn from
    (seed, party id)); the scenario's spec is then the widest and every model travels embedded in it
    (:mod:`fusion.widths`).
    """

    def __init__(
        self,
        index: int,
        scenario: Scenario,
        seed: int,
        train_ids,
        test_ids,
        pretrain: TrainConfig,
        finetune: FinetuneConfig,
        run: str = "",
        faults: FaultConfig | None = None,
        name: str = "",
        widths: tuple[int, ...] = (),
    ) -> None:
        # Everything a shard holds is rebuilt from these arguments: a restarted shard (after its process
        # died) is the same shard, and its parties' data and inits come again from (seed, party id).
        self.index, self.scenario, self.seed = index, scenario, seed
        self.name = name or f"party-shard-{index}"
        self.widths = tuple(widths)
        self.run, self.faults = run, faults or FaultConfig()
        self.train_ids, self.test_ids = np.asarray(train_ids, np.int64), np.asarray(test_ids, np.int64)
        self.pretrain_cfg, self.finetune_cfg = pretrain, finetune
        gpu_ids = ray.get_gpu_ids() if ray.is_initialized() else []
        self.device = torch.device("cuda" if gpu_ids and torch.cuda.is_available() else "cpu")
        self.gpu_ids = [str(g) for g in gpu_ids]
        torch.set_num_threads(max(1, int(os.environ.get("OMP_NUM_THREADS", "1"))))
        self._parties: Parties | None = None  # the training parties' data, drawn on the first federated round
        self._held: tuple | None = None  # the training parties' held-out rows, drawn on the first score
        self._rounds: dict[str, dict] = {}  # federated training key -> {"algo", "store", "last" round run here}

    def __repr__(self) -> str:
        return f"PartyShard({self.name}, {len(self.train_ids)} train, {len(self.test_ids)} test)"

    def info(self) -> dict:
        return {
            "index": self.index,
            "name": self.name,
            "resources": ray.get_runtime_context().get_assigned_resources() if ray.is_initialized() else {},
            "device": str(self.device),
            "gpu_ids": self.gpu_ids,
            "pid": os.getpid(),
            "node_id": ray.get_runtime_context().get_node_id() if ray.is_initialized() else None,
            "restarted": bool(ray.is_initialized() and ray.get_runtime_context().was_current_actor_reconstructed),
        }

    def descriptors(self, ids: np.ndarray) -> np.ndarray:
        return party_descriptors(self.scenario, self.seed, ids)

    def _inits(self, ids: np.ndarray, stream: Stream, scenario: Scenario | None = None) -> torch.Tensor:
        sc = scenario or self.scenario
        gens = [party_torch_generator(self.seed, i, stream) for i in ids]
        return torch.stack([sc.init_params(g) for g in gens]).to(self.device)

    def _width_groups(self, ids: np.ndarray):
        """(rows, scenario at that width) per hidden width of the parties ``ids`` (one group without widths); in a
        run of mixed architecture families, per family of the parties (their own, drawn from (seed, party id))."""
        if self.scenario.mixed:
            groups = self.scenario.family_groups(self.seed, ids)
            return [(rows, with_spec(self.scenario, spec)) for rows, spec in groups]
        if not self.widths:
            return [(np.arange(len(ids)), self.scenario)]
        w_of = party_widths(self.seed, ids, self.widths)
        return [(np.flatnonzero(w_of == w), with_hidden_width(self.scenario, int(w))) for w in np.unique(w_of)]

    def _embedded(self, params: torch.Tensor, scenario: Scenario) -> np.ndarray:
        """(n, scenario.spec.n_params) -> (n, n_params of the shard's spec) float32 (unchanged without widths or
        mixed families; with mixed families packed, :func:`fusion.strategies.by_family.pack`)."""
        params = params.cpu().numpy().astype(np.float32)
        if self.scenario.mixed:
            return pack(params, self.scenario.spec.n_params)
        return embed(params, scenario.spec, self.scenario.spec.widths[1]) if self.widths else params

    def _loss(self, descriptors: torch.Tensor):
        return RowLoss(self.scenario.loss, descriptors, self.scenario.loss_grad)

    def _subset(self, ids, hosted: np.ndarray, kind: str) -> np.ndarray:
        if ids is None:
            return hosted
        ids = np.asarray(ids, np.int64)
        if not np.isin(ids, hosted).all():
            raise ValueError(f"{self.name} does not host {kind} parties {ids[~np.isin(ids, hosted)]}")
        return ids

    def pretrain(self, ids=None) -> dict:
        """Pretrain training parties ``ids`` (default: all hosted) from their own inits on their own data.

        Returns ``party_id`` (n,), ``descriptor`` (n, d) and ``params`` (n, n_params) float32.
        """
        start = time.perf_counter()
        ids, sc = self._subset(ids, self.train_ids, "training"), self.scenario
        desc, x, y = training_data(sc, self.seed, ids)
        corrupt = self._corrupt(ids)
        if self.faults.corrupt_kind == "shuffled":  # fault injection: these parties learn shuffled targets
            y = self._shuffled_targets(ids, y, corrupt)
        x, y = torch.as_tensor(x, device=self.device), torch.as_tensor(y, device=self.device)
        d_t = torch.as_tensor(desc, device=self.device)
        params = np.zeros((len(ids), sc.spec.n_params), np.float32)
        for rows, sub in self._width_groups(ids):  # parties of one width train as one batch
            r = torch.as_tensor(rows, device=self.device)
            init = self._inits(ids[rows], Stream.INIT, sub)
            trained = train(init, sub.spec, x[r], y[r], self._loss(d_t[r]), self.pretrain_cfg)
            params[rows] = self._embedded(trained, sub)
        params[np.isin(ids, self.faults.nan_parties)] = np.nan  # fault injection (off by default)
        if corrupt.any() and self.faults.corrupt_kind != "shuffled":
            params[corrupt] = self._garbage(ids[corrupt], params[corrupt])
        if self.faults.crash_shard == self.index and not ray.get_runtime_context().was_current_actor_reconstructed:
            os._exit(1)  # fault injection: the process dies with this call's work done but not returned
        metrics.parties_pretrained(self.run, len(ids), self.index)
        return {"party_id": ids, "descriptor": desc, "params": params, "seconds": time.perf_counter() - start}

    def _corrupt(self, ids: np.ndarray) -> np.ndarray:
        """Which of ``ids`` upload garbage ([faults] corrupt_share; a draw from (seed, party id)): (n,) bool."""
        if not self.faults.corrupt_share:
            return np.zeros(len(ids), bool)
        return self.faults.corrupt(np.array([party_rng(self.seed, i, Stream.FAULTS).random() for i in ids]))

    def _shuffled_targets(self, ids: np.ndarray, y: np.ndarray, corrupt: np.ndarray) -> np.ndarray:
        y, real = y.copy(), self.scenario.real_rows(y)
        for row in np.flatnonzero(corrupt):
            rng = party_rng(self.seed, ids[row], Stream.FAULTS)
            rng.random()  # the draw that chose this party
            keep = np.flatnonzero(real[row])
            y[row, keep] = y[row, rng.permutation(keep)]
        return y

    def _garbage(self, ids: np.ndarray, params: np.ndarray) -> np.ndarray:
        """The uploads of corrupt parties ``ids`` whose honest models would be ``params`` (n, n_params)."""
        kind = self.faults.corrupt_kind
        if kind == "scaled":
            return params * 100
        if kind == "flipped":
            return -params
        out = params.copy()  # random: an untrained model of the party's own width
        for rows, sub in self._width_groups(ids):
            out[rows] = self._embedded(self._inits(ids[rows], Stream.FAULTS, sub), sub)
        return out

    def evaluate(self, fit: dict, methods: list[str], shots: list[int], ids=None, show=()) -> dict:
        """Warm start test parties ``ids`` (default: all hosted) with every method, fine-tune on k shots, evaluate.

        Returns long-form columns: method, shots, party_id, value; and ``shown``: for the parties of ``ids`` in
        ``show``, each method's 0-shot model as ``{method: (spec, party ids (m,), params (m, n_params))}`` (for
        plots: the driver need not compute a warm start again).
        """
        ids = self._subset(ids, self.test_ids, "test")
        cols: dict = {"method": [], "shots": [], "party_id": [], "value": [], "shown": {}}
        if not self.scenario.mixed:
            self._evaluate(fit, methods, shots, ids, show, self.scenario, cols)
            return cols
        for rows, spec in self.scenario.target_groups(self.seed, ids):  # each family the novel parties receive
            fitted = {m: f.for_family(spec) if isinstance(f, ByFamily) else f for m, f in fit["fitted"].items()}
            self._evaluate({"fitted": fitted}, methods, shots, ids[rows], show, with_spec(self.scenario, spec), cols)
        return cols

    def _evaluate(self, fit: dict, methods: list[str], shots: list[int], ids, show, sc: Scenario, cols: dict) -> None:
        """:meth:`evaluate` of novel parties ``ids`` that all receive models of ``sc``'s spec; appends to ``cols``."""
        rows_shown = np.flatnonzero(np.isin(ids, np.asarray(show, np.int64)))
        if len(ids) == 0:
            return
        desc = self.descriptors(ids)
        evals = [sc.party_eval_data(self.seed, i, d) for i, d in zip(ids, desc)]
        ex, ey = _stack([e[0] for e in evals], self.device), _stack([e[1] for e in evals], self.device)
        k_max = max(shots)
        shot_sets = [sc.party_shot_data(self.seed, i, d, k_max) for i, d in zip(ids, desc)]
        # The fitted methods' warm starts in one call: starters that share work (the refits of gp_refit's fusion and
        # fusion_noalign) run it as one batch.
        plain = [m for m in methods if m != COLD_START and m in fit["fitted"]] if not self.widths else []
        predicted = dict(zip(plain, predict_all([fit["fitted"][m] for m in plain], desc), strict=True))
        # Methods whose warm starts share an architecture and a fine-tuning rule are fine-tuned as one batch;
        # a federated method with its own constraint (a head only, a pull to an anchor) or none is a group of its own.
        groups: dict = {}
        for method in methods:
            rule = None  # None: the run's free fine-tuning; else (constraint, finetune) of a federated method
            if method == COLD_START and sc.target_spec != sc.spec:  # novel parties of another family
                spec = sc.target_spec
                start = torch.stack(
                    [init_params(spec, party_torch_generator(self.seed, i, Stream.COLD_START)) for i in ids]
                )
                start = start.to(self.device)
            elif method == COLD_START and sc is not self.scenario:  # the novel parties of one family (mixed families)
                spec, start = sc.spec, self._inits(ids, Stream.COLD_START, sc)
            elif method == COLD_START:
                spec, start = sc.spec, torch.zeros(len(ids), sc.spec.n_params)
                for rows, sub in self._width_groups(ids):
                    start[rows] = torch.as_tensor(self._embedded(self._inits(ids[rows], Stream.COLD_START, sub), sub))
                start = start.to(self.device)
            elif self.widths:  # every party asks for a warm start at its own width, embedded at the widest
                widths = party_widths(self.seed, ids, self.widths)
                spec, start = sc.spec, torch.as_tensor(fit["fitted"][method].predict_widths(desc, widths))
                start = start.to(self.device)
            else:
                fitted = fit["fitted"][method]
                spec = getattr(fitted, "spec", sc.spec)
                start = torch.as_tensor(predicted[method], device=self.device)
                if isinstance(fitted, FederatedStart):
                    constraint = fitted.constraint_for(start) if fitted.finetune else FREE
                    if not (fitted.finetune and _is_free(constraint)):
                        rule = (constraint, fitted.finetune)
            if len(rows_shown):
                cols["shown"][method] = (spec, ids[rows_shown], start[rows_shown].cpu().numpy())
            key = (spec, None if rule is None else method)
            groups.setdefault(key, (rule or (FREE, True), []))[1].append((method, start))
        for (spec, _), (rule, members) in groups.items():
            self._finetune_and_score(spec, members, ids, desc, ex, ey, shot_sets, shots, cols, *rule)

    def _finetune_and_score(
        self, spec, members, ids, desc, ex, ey, shot_sets, shots, cols, constraint=FREE, tune=True
    ) -> None:
        """Fine-tune the warm starts of ``members`` [(method, (parties, n_params))] on k shots and score them.

        ``constraint``: how fine-tuning may move them (one method's own rule); ``tune`` False: the warm starts are
        scored as they are at every k.
        """
        sc = self.scenario
        n_m, n_p = len(members), len(ids)
        ft_cfg, probe = sc.shot_recipe(self.finetune_cfg)
        warm = torch.cat([start for _, start in members])  # (methods * parties, n_params), method-major
        d_all = torch.as_tensor(np.tile(desc, (n_m, 1)), device=self.device)
        rep = lambda t: t.repeat(n_m, *([1] * (t.dim() - 1)))  # noqa: E731
        for k in shots:
            if k == 0 or not tune:
                tuned = warm
            else:
                n = sc.shot_examples(k)
                sx = rep(_stack([s[0][:n] for s in shot_sets], self.device))
                sy = rep(_stack([s[1][:n] for s in shot_sets], self.device))
                tuned = finetune(warm, spec, sx, sy, sc.loss, d_all, ft_cfg, constraint, probe)
            with torch.no_grad():
                values = sc.metric(forward(tuned, spec, rep(ex)), rep(ey), d_all).cpu().numpy()
            cols["method"] += [m for m, _ in members for _ in range(n_p)]
            cols["shots"] += [k] * (n_m * n_p)
            cols["party_id"] += list(ids) * n_m
            cols["value"] += values.tolist()

    # -- federated rounds (fusion.federated; driven by cluster/rounds.py) ------------------------

    def _training_parties(self) -> Parties:
        """The hosted training parties' data, drawn on the first federated round and kept (a restart redraws it)."""
        if self._parties is None:
            self._parties = training_parties(self.scenario, self.seed, self.train_ids, self.device)
        return self._parties

    def fed_start(self, job, round_: int, saved: dict[str, np.ndarray]) -> None:
        """Begin ``job`` (:class:`actors.federated_server.RoundsJob`) before round ``round_`` with the saved personal
        states ``saved`` (:meth:`PartyStore.export` rows of hosted parties; empty: none yet). Also a roll-back."""
        store = PartyStore.restore(saved, self.device) if job.keeps_state else None
        self._rounds[job.key] = {"algo": job.build(), "store": store, "last": round_ - 1}

    def fed_round(self, job, round_: int, down: dict | None, ids: np.ndarray) -> dict:
        """One round of the sampled hosted parties ``ids`` (one call per shard and round): their local updates from
        the broadcast ``down``, personal states kept here. Returns ``party_id`` (n,), ``uploads`` {name: (n, ...)},
        ``weights`` (n,) real sample counts; or ``{"lost": shard index}`` when this process lost the state the
        round needs (a restarted shard, a restarted server): the driver then rolls back to the last save."""
        state = self._rounds.get(job.key)
        if state is None and not job.keeps_state:  # nothing kept between rounds: a restart loses nothing
            self.fed_start(job, round_, {})
            state = self._rounds[job.key]
        if down is None or state is None or round_ <= state["last"]:
            return {"lost": self.index}
        ids = self._subset(ids, self.train_ids, "training")
        parties = self._training_parties()
        uploads, counts = local_round(
            state["algo"], down, state["store"], parties, ids, self.scenario.spec, job.cfg, self.seed, round_
        )
        state["last"] = round_
        return {"party_id": ids, "uploads": uploads, "weights": counts}

    def _held_out(self, ids: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """The held-out rows (x (n, N, in), y (n, N, ...)) of hosted training parties ``ids``, drawn once and kept."""
        if self._held is None:
            desc = party_descriptors(self.scenario, self.seed, self.train_ids)
            evals = [self.scenario.party_eval_data(self.seed, i, d) for i, d in zip(self.train_ids, desc)]
            self._held = (_stack([e[0] for e in evals], self.device), _stack([e[1] for e in evals], self.device))
        rows = torch.as_tensor(np.searchsorted(self.train_ids, ids), device=self.device)
        return self._held[0][rows], self._held[1][rows]

    def fed_evaluate(self, job, round_: int, down: dict | None) -> dict:
        """Score every hosted training party's own model before round ``round_`` (PFLlib's evaluation of the
        participating clients, :func:`fusion.federated.rounds.participant_scores`): ``party_id`` (n,), ``value``
        (n,) the metric on its held-out rows, ``loss`` (n,) its training loss; ``{"none": True}`` when the algorithm
        has no per-party model, ``{"lost": index}`` after a restart (the round's own call then rolls back)."""
        state = self._rounds.get(job.key)
        if state is None and not job.keeps_state:
            self.fed_start(job, round_, {})
            state = self._rounds[job.key]
        if down is None or state is None or round_ <= state["last"]:
            return {"lost": self.index}
        sc = self.scenario
        scores = participant_scores(
            state["algo"],
            down,
            state["store"],
            self._training_parties(),
            self.train_ids,
            sc.spec,
            job.cfg,
            self.seed,
            round_,
            self._held_out,
            sc.metric,
        )
        if scores is None:
            return {"none": True}
        return {"party_id": self.train_ids, "value": scores[0], "loss": scores[1]}

    def fed_export(self, key: str) -> dict:
        """The personal states of hosted parties (``PartyStore.export``), or ``{"lost": index}`` after a restart."""
        state = self._rounds.get(key)
        if state is None:
            return {"lost": self.index}
        return state["store"].export() if state["store"] is not None else {}

    def fed_end(self, key: str) -> None:
        """Forget ``key``'s personal states (the rounds are over and saved)."""
        self._rounds.pop(key, None)


PartyShardActor = ray.remote(max_restarts=-1, max_task_retries=-1)(PartyShard)
