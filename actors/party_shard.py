"""A party shard: one Ray actor hosting many parties, pretraining and evaluating them as batches.

Thin: what a party does is pure code in ``fusion/`` — pretraining (:func:`fusion.training.train`, one batch per
architecture of :class:`fusion.layout.ModelLayout`), fault injection (:mod:`fusion.faults`), evaluation
(:mod:`fusion.evaluate`), federated rounds (:func:`fusion.federated.rounds.local_round`). The shard holds its
parties, draws their data from (seed, party id), and calls those.
"""

from __future__ import annotations

import os
import time

import numpy as np
import ray
import torch

from actors import metrics
from fusion import evaluate, faults
from fusion.adapt import FinetuneConfig, TrainConfig, train
from fusion.faults import FaultConfig
from fusion.federated.rounds import Parties, PartyStore, participant_scores, timed_round
from fusion.layout import ModelLayout
from fusion.models.loss import RowLoss
from fusion.streams import Stream, party_inits
from scenarios import Scenario, model_layout, party_descriptors, training_data


def training_parties(
    scenario: Scenario,
    seed: int,
    ids: np.ndarray,
    device: torch.device | str = "cpu",
    layout: ModelLayout | None = None,
) -> Parties:
    """The private data of training parties ``ids`` as the federated rounds use it (the draw of pretraining);
    ``layout``: the run's (default: the scenario's own, :func:`scenarios.model_layout`)."""
    layout = layout or model_layout(scenario)
    desc, x, y = training_data(scenario, seed, ids)
    counts = scenario.real_rows(y).sum(axis=1)

    def loss_of(descriptors: torch.Tensor):
        return RowLoss(scenario.loss, descriptors, scenario.loss_grad)

    as_t = lambda a: torch.as_tensor(a, device=device)  # noqa: E731
    families = lambda some: layout.family_groups(seed, some)  # noqa: E731
    return Parties(np.asarray(ids, np.int64), as_t(x), as_t(y), as_t(desc), as_t(counts), loss_of, families)


class PartyShard:
    """Hosts the parties ``train_ids`` (pretrained here) and ``test_ids`` (evaluated here).

    Every party's data, init and shots derive from (seed, party id), so any sharding of the same
    parties gives the same numbers. ``layout``: the run's population layout (default: the scenario's own,
    :func:`scenarios.model_layout`); every model travels as one row of its parameter stack.
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
        layout: ModelLayout | None = None,
    ) -> None:
        # Everything a shard holds is rebuilt from these arguments: a restarted shard (after its process
        # died) is the same shard, and its parties' data and inits come again from (seed, party id).
        self.index, self.scenario, self.seed = index, scenario, seed
        self.name = name or f"party-shard-{index}"
        self.layout = layout or model_layout(scenario)
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

    def _subset(self, ids, hosted: np.ndarray, kind: str) -> np.ndarray:
        if ids is None:
            return hosted
        ids = np.asarray(ids, np.int64)
        if not np.isin(ids, hosted).all():
            raise ValueError(f"{self.name} does not host {kind} parties {ids[~np.isin(ids, hosted)]}")
        return ids

    def pretrain(self, ids=None) -> dict:
        """Pretrain training parties ``ids`` (default: all hosted) from their own inits on their own data.

        Returns ``party_id`` (n,), ``descriptor`` (n, d) and ``params`` (n, n_params of the layout's rows) float32:
        what the parties upload ([faults] included).
        """
        start = time.perf_counter()
        ids, sc = self._subset(ids, self.train_ids, "training"), self.scenario
        desc, x, y = training_data(sc, self.seed, ids)
        corrupt = faults.corrupt_parties(self.faults, self.seed, ids)
        y = faults.training_targets(self.faults, self.seed, ids, y, sc.real_rows(y), corrupt)
        x, y, d = (torch.as_tensor(a, device=self.device) for a in (x, y, desc))

        def trained(rows: np.ndarray, spec) -> torch.Tensor:  # the parties of one architecture, as one batch
            r = torch.as_tensor(rows, device=self.device)
            init = party_inits(sc.init_at, self.seed, ids[rows], Stream.INIT, spec).to(self.device)
            return train(init, spec, x[r], y[r], RowLoss(sc.loss, d[r], sc.loss_grad), self.pretrain_cfg)

        params = self.layout.stack(self.seed, ids, trained)
        params = faults.uploads(self.faults, self.seed, ids, params, corrupt, self.layout, sc.init_at)
        if self.faults.crash_shard == self.index and not ray.get_runtime_context().was_current_actor_reconstructed:
            os._exit(1)  # fault injection: the process dies with this call's work done but not returned
        metrics.parties_pretrained(self.run, len(ids), self.index)
        return {"party_id": ids, "descriptor": desc, "params": params, "seconds": time.perf_counter() - start}

    def evaluate(self, fit: dict, methods: list[str], shots: list[int], ids=None, show=()) -> evaluate.Scores:
        """Warm start test parties ``ids`` (default: all hosted) with every method, fine-tune on k shots, evaluate
        (:func:`fusion.evaluate.evaluate`; ``fit["fitted"]``: each method's warm starter but ``cold_start``)."""
        ids = self._subset(ids, self.test_ids, "test")
        return evaluate.evaluate(
            self.scenario,
            self.layout,
            self.seed,
            fit["fitted"],
            methods,
            shots,
            ids,
            self.finetune_cfg,
            show,
            self.device,
        )

    def participating(self, fit: dict, methods: list[str], *parts: dict) -> evaluate.Scores:
        """Score every hosted training party with the one-shot ``methods``' warm starts at its own descriptor and
        with its own pretrained model (``local``) on its held-out rows (:func:`fusion.evaluate.participating`).
        ``parts``: :meth:`pretrain` answers (any shard's; the hosted parties' rows are picked out)."""
        ids = self.train_ids
        pretrained = {int(i): row for p in parts for i, row in zip(p["party_id"], p["params"])}
        own = np.stack([pretrained[int(i)] for i in ids]) if all(int(i) in pretrained for i in ids) else None
        return evaluate.participating(
            self.scenario, self.layout, self.seed, fit["fitted"], methods, ids, own, self.device
        )

    # -- federated rounds (fusion.federated; driven by cluster/rounds.py) ------------------------

    def _training_parties(self) -> Parties:
        """The hosted training parties' data, drawn on the first federated round and kept (a restart redraws it)."""
        if self._parties is None:
            self._parties = training_parties(self.scenario, self.seed, self.train_ids, self.device, self.layout)
        return self._parties

    def fed_start(self, job, round_: int, saved: dict[str, np.ndarray]) -> None:
        """Begin ``job`` (:class:`actors.federated_server.RoundsJob`) before round ``round_`` with the saved personal
        states ``saved`` (:meth:`PartyStore.export` rows of hosted parties; empty: none yet). Also a roll-back."""
        store = PartyStore.restore(saved, self.device) if job.keeps_state else None
        self._rounds[job.key] = {"algo": job.build(), "store": store, "last": round_ - 1}

    def fed_round(self, job, round_: int, down: dict | None, ids: np.ndarray) -> dict:
        """One round of the sampled hosted parties ``ids`` (one call per shard and round) on the simulated clock
        ``job.clock``: their local updates from the broadcast ``down``, personal states kept here
        (:func:`fusion.federated.rounds.timed_round`). Returns ``party_id`` (m,) of the parties that upload,
        ``uploads`` {name: (m, ...)}, ``weights`` (m,) real sample counts and ``times`` (every sampled party's
        clock); or ``{"lost": shard index}`` when this process lost the state the round needs (a restarted shard, a
        restarted server): the driver then rolls back to the last save."""
        state = self._rounds.get(job.key)
        if state is None and not job.keeps_state:  # nothing kept between rounds: a restart loses nothing
            self.fed_start(job, round_, {})
            state = self._rounds[job.key]
        if down is None or state is None or round_ <= state["last"]:
            return {"lost": self.index}
        ids = self._subset(ids, self.train_ids, "training")
        parties = self._training_parties()
        part = timed_round(
            state["algo"], down, state["store"], parties, ids, self.scenario.spec, job.cfg, self.seed, round_, job.clock
        )
        state["last"] = round_
        return part

    def _held_out(self, ids: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """The held-out rows (x (n, N, in), y (n, N, ...)) of hosted training parties ``ids``, drawn once and kept."""
        if self._held is None:
            desc = party_descriptors(self.scenario, self.seed, self.train_ids)
            evals = [self.scenario.party_eval_data(self.seed, i, d) for i, d in zip(self.train_ids, desc)]
            stack = lambda k: torch.as_tensor(np.stack([e[k] for e in evals]), device=self.device)  # noqa: E731
            self._held = (stack(0), stack(1))
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
