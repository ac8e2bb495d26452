"""``ditto`` (Li, Hu, Beirami, Smith, ICML 2021): FedAvg for the global w, plus a personal v_i per party.

Each round a sampled party (1) trains w for ``federated.local_steps`` steps from the downloaded w and uploads it
(FedAvg), and (2) trains its own v_i for ``personal_steps`` steps on L_i(v) + (λ/2)‖v − w‖², pulled toward the
w it downloaded this round (``lam`` = λ). v_i starts as the w of the party's first round and stays in its shard.
λ = 0 is local training of v_i; λ → ∞ keeps v_i at w.

A novel party has no v: it fine-tunes the global w on its shots under the same pull toward w
(:class:`ProximalStart`: ``Constraint(prox=λ, anchor=w)``); at 0 shots it uses w.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fusion.adapt.constraint import FREE, Constraint
from fusion.adapt.train_config import TrainConfig
from fusion.adapt.training import train
from fusion.federated.base import (
    FederatedAlgorithm,
    LocalBatch,
    State,
    Tensors,
    register,
    weighted_mean,
)
from fusion.federated.fedavg import GlobalModel
from fusion.lazy import torch
from fusion.models.spec import MLPSpec


@dataclass(frozen=True)
class DittoSettings:
    """``[federated.ditto]`` keys."""

    lam: float = 0.1  # λ of the proximal pull of the personal model toward the global one
    personal_steps: int | None = None  # steps on the personal model per round; None: federated.local_steps

    def __post_init__(self) -> None:
        if self.lam < 0:
            raise ValueError(f"federated.ditto.lam must be >= 0, got {self.lam}")
        if self.personal_steps is not None and self.personal_steps < 0:
            raise ValueError(f"federated.ditto.personal_steps must be >= 0, got {self.personal_steps}")


class ProximalStart(GlobalModel):
    """One model (n_params,) for every novel party, fine-tuned under a pull λ/2 ‖v − start‖² toward it."""

    kind = "proximal_start"

    def __init__(self, params: np.ndarray, lam: float) -> None:
        super().__init__(params)
        self.lam = float(lam)

    def constraint_for(self, start: torch.Tensor) -> Constraint:
        return Constraint(prox=self.lam, anchor=start) if self.lam > 0 else FREE

    def export(self) -> dict:
        return {**super().export(), "lam": self.lam}

    @classmethod
    def restore(cls, state: dict) -> ProximalStart:
        return cls(state["params"].numpy(), float(state["lam"]))


@register
class Ditto(FederatedAlgorithm):
    name = "ditto"
    settings = DittoSettings
    personal = True

    def _personal_steps(self) -> int:
        steps = self.opts.personal_steps
        return self.cfg.local_steps if steps is None else steps

    def steps_per_round(self) -> int:
        return self.cfg.local_steps + self._personal_steps()

    def init_personal(self, down: Tensors, batch: LocalBatch) -> Tensors:
        return {"v": down["w"].expand(len(batch), -1).clone()}

    def local_update(self, down: Tensors, personal: Tensors | None, batch: LocalBatch) -> tuple[Tensors, Tensors]:
        w = down["w"].expand(len(batch), -1)
        cfg = batch.train
        own = TrainConfig(self._personal_steps(), cfg.lr, decay=False, optimizer=cfg.optimizer)
        pull = Constraint(prox=self.opts.lam, anchor=w) if self.opts.lam > 0 else FREE
        v = train(personal["v"], batch.spec, batch.x, batch.y, batch.loss, own, constraint=pull)
        return {"w": train(w, batch.spec, batch.x, batch.y, batch.loss, cfg)}, {"v": v}

    def aggregate(self, server: State, uploads: State, weights: np.ndarray, ids: np.ndarray) -> State:
        return {**server, "w": weighted_mean(uploads["w"], weights)}

    def novel(self, server: State, spec: MLPSpec) -> ProximalStart:
        return ProximalStart(server["w"], self.opts.lam)
