"""``fedala`` (Zhang et al., AAAI 2023): FedAvg whose parties start each round from an adaptive local aggregation.

A sampled party keeps its last trained model θ_old and element-wise weights W ∈ [0, 1] on the top ``layers``
layers. Before training it builds its start from the downloaded w:

    θ = w + (θ_old − w) ⊙ (1 − W)        on the top layers      (= θ_old + (w − θ_old) ⊙ W)
    θ = w                                 on the layers below

written so that W = 1 gives w exactly. W is first learned: ``weight_steps`` full-batch steps on a random
``share`` of the party's rows (drawn each round from its generator), W ← clip(W − η ∂L/∂θ ⊙ (w − θ_old), 0, 1)
(η = ``weight_lr``); then θ trains by the run's local training as in FedAvg, is uploaded, and kept as the next
θ_old. A party's first round starts from θ_old = w and W = 1, so θ = w (and the W steps cannot move W: their
gradient carries the factor w − θ_old = 0; they are computed all the same and counted in the steps).

A novel party receives w and uses the run's k-shot recipe (:class:`GlobalModel` with ``finetune`` True): it has
no θ_old to aggregate with.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fusion.federated.base import FederatedAlgorithm, LocalBatch, State, Tensors, register, weighted_mean
from fusion.federated.fedavg import GlobalModel
from fusion.federated.local import local_train
from fusion.lazy import torch
from fusion.models.params import loss_and_grad
from fusion.models.spec import MLPSpec


@dataclass(frozen=True)
class FedALASettings:
    """``[federated.fedala]`` keys."""

    layers: int = 1  # top layers aggregated adaptively (1: the head); the ones below take w
    share: float = 0.8  # fraction of the party's rows that the weights W learn on
    weight_steps: int = 10  # W steps per round
    weight_lr: float = 1.0  # η of the W steps

    def __post_init__(self) -> None:
        if self.layers < 1:
            raise ValueError(f"federated.fedala.layers must be >= 1, got {self.layers}")
        if not 0 < self.share <= 1:
            raise ValueError(f"federated.fedala.share must be a fraction in (0, 1], got {self.share}")
        if self.weight_steps < 0:
            raise ValueError(f"federated.fedala.weight_steps must be >= 0, got {self.weight_steps}")
        if not self.weight_lr > 0:
            raise ValueError(f"federated.fedala.weight_lr must be > 0, got {self.weight_lr}")


@register
class FedALA(FederatedAlgorithm):
    name = "fedala"
    settings = FedALASettings
    personal = True

    def _top(self, spec: MLPSpec) -> int:
        """Start of the adaptively aggregated top layers in the flat layout."""
        if self.opts.layers > spec.n_layers:
            raise ValueError(f"federated.fedala.layers must be <= the MLP's {spec.n_layers} layers, got {spec}")
        return spec.offsets[-self.opts.layers][0]

    def party_steps(self, counts: np.ndarray) -> np.ndarray:
        return np.where(np.asarray(counts) > 0, self.opts.weight_steps, 0) + self.cfg.local().party_steps(counts)

    def init_server(self, spec: MLPSpec, init: np.ndarray, descriptors: np.ndarray, seed: int) -> State:
        self._top(spec)  # refuses too many layers before any round
        return super().init_server(spec, init, descriptors, seed)

    def init_personal(self, down: Tensors, batch: LocalBatch) -> Tensors:
        n, top = len(batch), self._top(batch.spec)
        theta = down["w"].expand(n, -1).clone()
        return {"theta": theta, "weights": torch.ones(n, theta.shape[1] - top, dtype=theta.dtype, device=theta.device)}

    def _share(self, batch: LocalBatch) -> tuple[torch.Tensor, torch.Tensor]:
        """A random ``share`` of each party's rows: x (n, m, in), y (n, m, ...)."""
        n_rows = batch.x.shape[1]
        m = max(1, int(np.ceil(self.opts.share * n_rows - 1e-9)))
        idx = np.stack([np.sort(rng.choice(n_rows, size=m, replace=False)) for rng in batch.rngs])
        return batch.rows(torch.as_tensor(idx, device=batch.x.device))

    def participant_models(self, down: Tensors, personal: Tensors | None, batch: LocalBatch) -> torch.Tensor:
        return self._adapted(down, personal, batch)[0]  # the local model after ALA, as the round starts from it

    def local_update(self, down: Tensors, personal: Tensors | None, batch: LocalBatch) -> tuple[Tensors, Tensors]:
        start, weights = self._adapted(down, personal, batch)
        theta = local_train(start, batch)
        return {"w": theta}, {"theta": theta, "weights": weights}

    def _adapted(self, down: Tensors, personal: Tensors, batch: LocalBatch) -> tuple[torch.Tensor, torch.Tensor]:
        """ALA: the weights W learned on a share of the party's rows, and the start θ_old + (w − θ_old) ⊙ W on the
        top layers (w below)."""
        spec, top = batch.spec, self._top(batch.spec)
        w = down["w"].expand(len(batch), -1)
        old, weights = personal["theta"], personal["weights"].clone()
        gap = old[:, top:] - w[:, top:]  # θ_old − w on the top layers
        start = w.clone()
        if batch.x.shape[1] > 0 and self.opts.weight_steps:
            x, y, work = *self._share(batch), {}
            for _ in range(self.opts.weight_steps):
                start[:, top:] = w[:, top:] + gap * (1 - weights)
                grad = loss_and_grad(start, spec, x, y, batch.loss, work)[1]
                weights = (weights + self.opts.weight_lr * grad[:, top:] * gap).clamp_(0, 1)  # dθ/dW = −gap
        start[:, top:] = w[:, top:] + gap * (1 - weights)
        return start, weights

    def aggregate(self, server: State, uploads: State, weights: np.ndarray, ids: np.ndarray) -> State:
        return {**server, "w": weighted_mean(uploads["w"], weights)}

    def novel(self, server: State, spec: MLPSpec) -> GlobalModel:
        return GlobalModel(server["w"], finetune=True)
