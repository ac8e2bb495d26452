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

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from fusion.adapt.constraint import FREE, Constraint
from fusion.adapt.train_config import TrainConfig
from fusion.lazy import torch
from fusion.models.spec import MLPSpec, Spec
from fusion.warm_start import WarmStarter

State = dict[str, np.ndarray]  # server state, broadcasts and uploads: named float arrays
Tensors = dict[str, "torch.Tensor"]  # the same on a shard, as tensors with a leading party axis (n, ...)
LossFn = Callable[["torch.Tensor", "torch.Tensor"], "torch.Tensor"]  # (pred (n, N, out), y) -> (n,)

_SAMPLE, _LOCAL = 0x5A11, 0x10CA  # stream tags of the server's sampling and of a party's local randomness


@dataclass(frozen=True)
class FederatedConfig:
    """``[federated]`` keys shared by every iterative algorithm.

    The default budget gives every training party, on average, the local optimizer steps of the one-shot
    pipeline's pretraining (``[pretrain] steps = 2000``): rounds · clients_per_round · local_steps =
    100 · 0.2 · 100 = 2,000. Local training is full-batch ``optimizer`` at ``lr`` (no decay), its state fresh
    each round, like a party that starts from the model it downloads.
    """

    rounds: int = 100
    clients_per_round: float = 0.2  # fraction of the training parties sampled each round (at least one)
    local_steps: int = 100
    lr: float = 0.01
    optimizer: str = "adam"
    checkpoint_every: int = 10  # rounds between saves of the server and personal states (resume, restarts)
    feature_dim: int = 0  # the common feature layer of the HtFL algorithms (fusion/federated/htfl.py); 0: see there
    algorithms: dict[str, Any] = field(default_factory=dict)  # name -> that algorithm's settings dataclass

    def __post_init__(self) -> None:
        if self.rounds < 1:
            raise ValueError(f"federated.rounds must be >= 1, got {self.rounds}")
        if not 0 < self.clients_per_round <= 1:
            raise ValueError(f"federated.clients_per_round must be a fraction in (0, 1], got {self.clients_per_round}")
        if self.local_steps < 0:
            raise ValueError(f"federated.local_steps must be >= 0, got {self.local_steps}")
        if self.checkpoint_every < 1:
            raise ValueError(f"federated.checkpoint_every must be >= 1, got {self.checkpoint_every}")
        if self.feature_dim < 0:
            raise ValueError(f"federated.feature_dim must be >= 0 (0: the families' own), got {self.feature_dim}")
        TrainConfig(steps=self.local_steps, lr=self.lr, optimizer=self.optimizer)  # validates lr and optimizer

    def local(self, steps: int | None = None) -> TrainConfig:
        """The local optimizer of one round (``steps`` defaults to ``local_steps``)."""
        return TrainConfig(
            steps=self.local_steps if steps is None else steps, lr=self.lr, decay=False, optimizer=self.optimizer
        )

    def settings_of(self, name: str) -> Any:
        """The settings of algorithm ``name`` (its dataclass's defaults unless ``[federated.<name>]`` set them)."""
        cls = ALGORITHMS[name].settings
        return self.algorithms.get(name) or (cls() if cls is not None else None)


def sample(seed: int, round_: int, ids: np.ndarray, fraction: float) -> np.ndarray:
    """The training parties of round ``round_``: ``ceil(fraction · n)`` of ``ids`` (at least 1), sorted.

    A function of (seed, round) and the id list only: every shard and the server agree without talking.
    """
    ids = np.sort(np.asarray(ids, np.int64))
    n = max(1, int(np.ceil(fraction * len(ids) - 1e-9)))
    rng = np.random.default_rng([int(seed), int(round_), _SAMPLE])
    return np.sort(rng.choice(ids, size=n, replace=False))


def local_rng(seed: int, party_id: int, round_: int) -> np.random.Generator:
    """A party's own randomness in one round (batches, data shares): a function of (seed, party id, round)."""
    return np.random.default_rng([int(seed), int(party_id), _LOCAL, int(round_)])


@dataclass
class LocalBatch:
    """The sampled parties of one shard in one round, with everything a local update may use.

    ``x`` (n, N, fan_in), ``y`` (n, N, ...) the parties' private training data (rows of ``y`` that are NaN are
    padding that the loss ignores); ``counts`` (n,) their real sample counts; ``descriptors`` (n, d);
    ``loss_of(descriptors) -> LossFn`` binds the task loss (``loss`` is it bound to these parties); ``rngs`` one
    generator per party (:func:`local_rng`); ``train`` the local optimizer (:meth:`FederatedConfig.local`).
    """

    spec: MLPSpec
    ids: np.ndarray
    x: torch.Tensor
    y: torch.Tensor
    loss_of: Callable[[torch.Tensor], LossFn]
    descriptors: torch.Tensor
    counts: torch.Tensor
    rngs: list[np.random.Generator]
    train: TrainConfig
    round: int = 0
    seed: int = 0  # the run seed (a party's own streams derive from (seed, party id))

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
        )

    def rows(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-party example subsets: ``idx`` (n, m) example indices -> x (n, m, in), y (n, m, ...)."""
        gather = lambda t: torch.stack([t[i, idx[i]] for i in range(len(self))])  # noqa: E731
        return gather(self.x), gather(self.y)


class FederatedStart(WarmStarter):
    """What a novel party receives from an iterative algorithm, and how it uses its k shots.

    ``predict(descriptors)`` gives the 0-shot models (m, n_params); ``constraint`` how fine-tuning on the shots
    may move them (``Constraint`` with ``anchor=None`` and ``prox`` > 0 means "toward the received model");
    ``finetune`` False: the received model is used as it is at every k (plain FedAvg).
    """

    finetune: bool = True

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

    def __init__(self, cfg: FederatedConfig, settings: Any = None) -> None:
        self.cfg = cfg
        self.opts = settings if settings is not None else (self.settings() if self.settings is not None else None)

    @classmethod
    def training_key(cls) -> str:
        return cls.training or cls.name

    def steps_per_round(self) -> int:
        """Local gradient evaluations of one sampled party in one round (the compute column of costs)."""
        return self.cfg.local_steps

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
