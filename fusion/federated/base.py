"""The federated-algorithm interface, its settings and its registry.

A round, whoever runs it (:func:`fusion.federated.rounds.run_rounds` in one process, the Ray engine in ``actors/``;
both call the functions below, so they compute the same numbers):

1. the server samples a fraction of the training parties from (seed, round) (:func:`sample`) and publishes
   ``algorithm.broadcast(server)`` once;
2. each shard runs ``algorithm.local_update(down, personal, batch)`` for its sampled parties as one batched
   program and returns the uploads stacked ``(n, ...)``; a party's personal state (Ditto's model, FedRep's head,
   FedALA's weights) stays in the shard that hosts it;
3. the server calls ``algorithm.aggregate(server, uploads, weights, ids)`` with every shard's uploads
   concatenated in party-id order, so the result does not depend on the sharding.

After the last round ``algorithm.novel(server)`` is what a novel party receives: a :class:`FederatedStart`, a
warm starter with its own rule for using k shots (a :class:`fusion.adapt.constraint.Constraint`, or no fine-tuning).

Adding an algorithm is one file with a subclass and ``@register``; its own settings are a frozen dataclass
(``settings``), read from ``[federated.<name>]``.
"""

from __future__ import annotations

import dataclasses
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from fusion.adapt import FREE, Constraint
from fusion.federated.local import LocalTraining, OptimizerMemory
from fusion.lazy import torch
from fusion.models.spec import MLPSpec, Spec
from fusion.warm_start import WarmStarter

State = dict[str, np.ndarray]  # server state, broadcasts and uploads: named float arrays
Tensors = dict[str, "torch.Tensor"]  # the same on a shard, as tensors with a leading party axis (n, ...)
LossFn = Callable[["torch.Tensor", "torch.Tensor"], "torch.Tensor"]  # (pred (n, N, out), y) -> (n,)

_SAMPLE, _LOCAL = 0x5A11, 0x10CA  # stream tags of the server's sampling and of a party's local randomness


OPTIMIZER_STATES = ("fresh", "persistent")
BUDGET = ("local_epochs", "local_steps")  # a round's local budget: one of the two (local_steps > 0 wins)


@dataclass(frozen=True)
class FederatedConfig:
    """``[federated]`` keys shared by every iterative algorithm.

    The defaults are PFLlib's (``system/main.py``): every round a sampled party trains one epoch of minibatches of
    10 of its rows with SGD at lr 0.005, no momentum (:class:`fusion.federated.local.LocalTraining`). A scenario
    whose loss needs another step size or budget says so in :meth:`scenarios.Scenario.federated_defaults`, applied
    where the run's ``[federated]`` table does not set the key (:func:`with_defaults`).

    The budget is ``local_epochs`` epochs of each party's real rows, or ``local_steps`` steps when that is > 0
    (``local_epochs`` is then 0). ``optimizer_state``: ``"fresh"`` starts each party's optimizer anew every round
    (a party that starts from the model it downloads); ``"persistent"`` keeps its state (momentum, Adam's moments)
    across rounds in the shard that hosts it.
    """

    rounds: int = 100
    clients_per_round: float = 0.2  # fraction of the training parties sampled each round (at least one)
    local_epochs: int = 1
    local_steps: int = 0  # > 0: this many steps per round instead of epochs
    batch_size: int = 10  # rows per minibatch; 0: every step sees all of a party's rows
    lr: float = 0.005
    momentum: float = 0.0  # SGD's
    optimizer: str = "sgd"
    optimizer_state: str = "fresh"
    checkpoint_every: int = 10  # rounds between saves of the server and personal states (resume, restarts)
    eval_every: int = 0  # rounds between scores of the participating parties (rounds.parquet); 0: rounds / 20
    feature_dim: int = 0  # the common feature layer of the HtFL algorithms (fusion/federated/htfl.py); 0: see there
    algorithms: dict[str, Any] = field(default_factory=dict)  # name -> that algorithm's settings dataclass

    def __post_init__(self) -> None:
        if self.rounds < 1:
            raise ValueError(f"federated.rounds must be >= 1, got {self.rounds}")
        if not 0 < self.clients_per_round <= 1:
            raise ValueError(f"federated.clients_per_round must be a fraction in (0, 1], got {self.clients_per_round}")
        if self.checkpoint_every < 1:
            raise ValueError(f"federated.checkpoint_every must be >= 1, got {self.checkpoint_every}")
        if self.eval_every < 0:
            raise ValueError(f"federated.eval_every must be >= 0 (0: every rounds / 20 rounds), got {self.eval_every}")
        if self.feature_dim < 0:
            raise ValueError(f"federated.feature_dim must be >= 0 (0: the families' own), got {self.feature_dim}")
        if self.optimizer_state not in OPTIMIZER_STATES:
            raise ValueError(
                f"federated.optimizer_state must be one of {list(OPTIMIZER_STATES)}, got {self.optimizer_state!r}"
            )
        if self.local_steps > 0:
            object.__setattr__(self, "local_epochs", 0)
        self.local()  # validates the local training's keys

    def local(self) -> LocalTraining:
        """The local training of one round (:mod:`fusion.federated.local`)."""
        return LocalTraining(
            self.local_epochs, self.local_steps, self.batch_size, self.lr, self.momentum, self.optimizer
        )

    def eval_rounds(self) -> list[int]:
        """The rounds after which the participating parties are scored: 0 (the start), every ``eval_every``
        (default: a twentieth of the rounds) and the last."""
        every = self.eval_every or max(1, self.rounds // 20)
        return sorted({*range(0, self.rounds, every), self.rounds})

    def settings_of(self, name: str) -> Any:
        """The settings of algorithm ``name`` (its dataclass's defaults unless ``[federated.<name>]`` set them),
        resolved against these keys (:func:`resolved`)."""
        cls = ALGORITHMS[name].settings
        return resolved(self.algorithms.get(name) or (cls() if cls is not None else None), self)

    def for_methods(self, names) -> FederatedConfig:
        """These keys with the resolved settings of every algorithm in ``names`` (what a run's config.toml shows)."""
        algorithms = dict(self.algorithms)
        for name in sorted({*names, *self.algorithms}):
            if ALGORITHMS[name].settings is not None:
                algorithms[name] = self.settings_of(name)
        return dataclasses.replace(self, algorithms=algorithms)


def resolved(settings: Any, cfg: FederatedConfig) -> Any:
    """An algorithm's ``settings`` with the values it leaves to ``[federated]`` (None) filled from ``cfg``: its
    ``resolve(cfg)`` when it has one."""
    return settings.resolve(cfg) if hasattr(settings, "resolve") else settings


def own_budget(epochs: int | None, steps: int | None, cfg: FederatedConfig, prefix: str) -> tuple[int, int]:
    """An algorithm's own (epochs, steps) for a second model it trains: both None: ``cfg``'s budget; one set: that
    one (the other 0). Both > 0 is an error naming ``prefix`` + the keys."""
    if epochs is None and steps is None:
        return cfg.local_epochs, cfg.local_steps
    if epochs and steps:
        raise ValueError(f"{prefix}_epochs and {prefix}_steps are both set: a budget is one of them")
    return int(epochs or 0), int(steps or 0)


def with_defaults(defaults: dict, table: dict) -> dict:
    """A run's ``[federated]`` table over a scenario's ``defaults`` (both TOML trees: keys and ``[federated.<name>]``
    sub-tables, merged key by key). A table that sets ``local_epochs`` or ``local_steps`` sets the budget: the other
    one is then not taken from ``defaults``. Setting both > 0 is an error naming them."""
    table = dict(table)
    if all(isinstance(table.get(k), int) and table.get(k) > 0 for k in BUDGET):
        raise ValueError(
            f"federated.local_epochs = {table['local_epochs']} and federated.local_steps = {table['local_steps']}: "
            "a round's budget is one of them (set the other to 0 or leave it out)"
        )
    base = {k: v for k, v in defaults.items() if not (k in BUDGET and any(b in table for b in BUDGET))}
    out = {**base, **table}
    for key, value in defaults.items():
        if isinstance(value, dict) and isinstance(table.get(key), dict):
            out[key] = {**value, **table[key]}
    return out


def sample(seed: int, round_: int, ids: np.ndarray, fraction: float, k: int | None = None) -> np.ndarray:
    """The training parties of round ``round_``: ``ceil(fraction · n)`` of ``ids`` (at least 1), or ``k`` of them
    when given, sorted.

    A function of (seed, round) and the id list only: every shard and the server agree without talking.
    """
    ids = np.sort(np.asarray(ids, np.int64))
    n = max(1, int(np.ceil(fraction * len(ids) - 1e-9))) if k is None else min(int(k), len(ids))
    rng = np.random.default_rng([int(seed), int(round_), _SAMPLE])
    return np.sort(rng.choice(ids, size=n, replace=False))


def local_rng(seed: int, party_id: int, round_: int) -> np.random.Generator:
    """A party's own randomness in one round (batches, data shares): a function of (seed, party id, round)."""
    return np.random.default_rng([int(seed), int(party_id), _LOCAL, int(round_)])


@dataclass
class LocalBatch:
    """The sampled parties of one shard in one round, with everything a local update may use.

    ``x`` (n, N, fan_in), ``y`` (n, N, ...) the parties' private training data: a party's ``counts`` real rows
    first, then padding (rows of ``y`` that the loss ignores: NaN targets, label -1); ``counts`` (n,) their real
    sample counts; ``descriptors`` (n, d); ``loss_of(descriptors) -> LossFn`` binds the task loss (``loss`` is it
    bound to these parties); ``rngs`` one generator per party (:func:`local_rng`), which the minibatches draw from;
    ``train`` the local training (:meth:`FederatedConfig.local`, :func:`fusion.federated.local.local_train`);
    ``memory`` the parties' optimizer states kept across rounds (None: fresh each round); ``budget`` (done (n,),
    full (n,)) the share of its round's steps each party finishes by the deadline (None: all;
    :func:`fusion.federated.local.capped`).
    """

    spec: MLPSpec
    ids: np.ndarray
    x: torch.Tensor
    y: torch.Tensor
    loss_of: Callable[[torch.Tensor], LossFn]
    descriptors: torch.Tensor
    counts: torch.Tensor
    rngs: list[np.random.Generator]
    train: LocalTraining
    round: int = 0
    seed: int = 0  # the run seed (a party's own streams derive from (seed, party id))
    memory: OptimizerMemory | None = None
    budget: tuple[np.ndarray, np.ndarray] | None = None

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def loss(self) -> LossFn:
        """(pred (n, N, out), y (n, N, ...)) -> (n,): the task loss of these parties."""
        return self.loss_of(self.descriptors)

    def subset(self, rows: np.ndarray) -> LocalBatch:
        """The parties at positions ``rows`` of this batch."""
        r = torch.as_tensor(rows, dtype=torch.long, device=self.x.device)
        return LocalBatch(
            self.spec,
            self.ids[rows],
            self.x[r],
            self.y[r],
            self.loss_of,
            self.descriptors[r],
            self.counts[r],
            [self.rngs[i] for i in rows],
            self.train,
            self.round,
            self.seed,
            None if self.memory is None else OptimizerMemory([self.memory.rows[i] for i in rows]),
            None if self.budget is None else (self.budget[0][rows], self.budget[1][rows]),
        )

    def rows(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-party example subsets: ``idx`` (n, m) example indices -> x (n, m, in), y (n, m, ...)."""
        gather = lambda t: torch.stack([t[i, idx[i]] for i in range(len(self))])  # noqa: E731
        return gather(self.x), gather(self.y)


class FederatedStart(WarmStarter):
    """What a novel party receives from an iterative algorithm, and how it uses its k shots.

    ``predict(descriptors)`` gives the 0-shot models (m, n_params); ``constraint`` how fine-tuning on the shots
    may move them (``Constraint`` with ``anchor=None`` and ``prox`` > 0 means "toward the received model");
    ``finetune`` False: the received model is used as it is at every k (plain FedAvg). ``zero_shot`` False: the
    received model is only a start for the shots (FedRep's body under an untrained head), and its 0-shot row is
    not a score of the method (:func:`no_zero_shot`).
    """

    finetune: bool = True
    zero_shot: bool = True

    def constraint_for(self, start: torch.Tensor) -> Constraint:
        """The fine-tuning constraint for warm starts ``start`` (m, n_params) (the anchor of a proximal pull)."""
        return FREE


class FederatedAlgorithm(ABC):
    """An iterative (personalized) federated algorithm: local update, aggregation, and a novel party's model.

    Shapes: the model is a flat float32 vector of ``spec.n_params`` (layout of :mod:`fusion.models.params`); on a
    shard, stacks of the sampled parties' rows (n, ...). ``personal`` is True when parties keep state across
    rounds; that state is a :data:`Tensors` dict with one row per party.
    """

    name: ClassVar[str]
    settings: ClassVar[type | None] = None  # the algorithm's own frozen settings dataclass
    personal: ClassVar[bool] = False
    mixed_families: ClassVar[bool] = False  # trains parties of several architecture families in one run
    classification: ClassVar[bool] = False  # needs class labels (a scenario whose outputs are logits)
    training: ClassVar[str] = ""  # algorithms with the same training share one run of rounds (default: name)
    asynchronous: ClassVar[bool] = False  # the server steps as uploads arrive (aggregate_async), with no deadline

    def __init__(self, cfg: FederatedConfig, settings: Any = None) -> None:
        self.cfg = cfg
        own = settings if settings is not None else (self.settings() if self.settings is not None else None)
        self.opts = resolved(own, cfg)  # the values the settings leave to [federated] filled in

    @classmethod
    def training_key(cls) -> str:
        return cls.training or cls.name

    def party_steps(self, counts: np.ndarray) -> np.ndarray:
        """Local gradient evaluations (n,) in one round of sampled parties with ``counts`` (n,) real rows (the
        compute column of costs)."""
        return self.cfg.local().party_steps(counts)

    def download_bytes(self, down: State) -> int:
        """What one sampled party downloads in a round, in bytes (default: the whole broadcast)."""
        return int(sum(np.asarray(v).nbytes for v in down.values()))

    def upload_bytes(self, down: State) -> int:
        """What one sampled party uploads in a round, in bytes, as the simulated clock times it before the round
        (default: as much as it downloads)."""
        return self.download_bytes(down)

    def model_spec(self, spec: Spec) -> Spec:
        """The model a party of architecture ``spec`` trains in this algorithm (default: ``spec`` itself)."""
        return spec

    def init_server(self, spec: MLPSpec, init: np.ndarray, descriptors: np.ndarray, seed: int) -> State:
        """The server's state before round 0 from a common init (n_params,) and the training descriptors (n, d)."""
        return {"w": np.asarray(init, np.float32).copy()}

    def broadcast(self, server: State) -> State:
        """What every sampled party downloads (put in the object store once per round)."""
        return {"w": server["w"]}

    def init_personal(self, down: Tensors, batch: LocalBatch) -> Tensors:
        """The personal state of parties sampled for the first time (only when ``personal``)."""
        raise NotImplementedError(f"{self.name} keeps no personal state")

    @abstractmethod
    def local_update(
        self, down: Tensors, personal: Tensors | None, batch: LocalBatch
    ) -> tuple[Tensors, Tensors | None]:
        """One round of the sampled parties: (uploads (n, ...), new personal state or None)."""

    @abstractmethod
    def aggregate(self, server: State, uploads: State, weights: np.ndarray, ids: np.ndarray) -> State:
        """The server's step: ``uploads`` (n, ...) in party-id order ``ids`` (n,), ``weights`` (n,) sample counts."""

    def aggregate_async(
        self, server: State, uploads: State, weights: np.ndarray, ids: np.ndarray, arrival: np.ndarray, t: float
    ) -> tuple[State, float, int]:
        """An asynchronous server's round (``asynchronous``): ``uploads`` (n, ...) of parties ``ids`` (n,) that
        arrive at simulated times ``arrival`` (n,) after the round started at ``t``. Returns the new state, the
        simulated time the round ends and how many uploads entered a server step."""
        raise NotImplementedError(f"{self.name} is synchronous")

    def participant_models(self, down: Tensors, personal: Tensors | None, batch: LocalBatch) -> torch.Tensor | None:
        """Each party's own model (n, n_params of ``batch.spec``) as PFLlib scores a participating client after the
        broadcast ``down`` (before the round's training), or None when the algorithm has none. Default: the global
        model, FedAvg's."""
        return down["w"].expand(len(batch), -1) if "w" in down else None

    @abstractmethod
    def novel(self, server: State, spec: MLPSpec) -> FederatedStart:
        """What a novel party receives after the last round."""


def weighted_mean(uploads: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Σ n_i u_i / Σ n_i over the first axis, in float64, returned as float32 (the order of ``uploads`` fixed)."""
    w = np.asarray(weights, np.float64)
    return (np.tensordot(w / w.sum(), np.asarray(uploads, np.float64), axes=1)).astype(np.float32)


ALGORITHMS: dict[str, type[FederatedAlgorithm]] = {}


def register(cls: type[FederatedAlgorithm]) -> type[FederatedAlgorithm]:
    ALGORITHMS[cls.name] = cls
    return cls


def no_zero_shot(cols: dict[str, list], starts: dict[str, Any]) -> dict[str, list]:
    """Evaluation columns (``method``, ``shots``, ``value``, … lists) with the 0-shot values of the methods whose
    start has no 0-shot model (``zero_shot`` False, e.g. FedRep's untrained head) set to NaN: "n/a", not a score."""
    blank = {m for m, s in starts.items() if not getattr(s, "zero_shot", True)}
    if not blank:
        return cols
    value = [
        float("nan") if m in blank and k == 0 else v for m, k, v in zip(cols["method"], cols["shots"], cols["value"])
    ]
    return {**cols, "value": value}
