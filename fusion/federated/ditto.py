"""``ditto`` (Li, Hu, Beirami, Smith, ICML 2021): FedAvg for the global w, plus a personal v_i per party.

Each round a sampled party (1) trains its own v_i on L_i(v) + (λ/2)‖v − w‖², pulled toward the w it downloaded
this round (``lam`` = λ), for ``personal_epochs`` epochs (or ``personal_steps`` steps; neither set: the run's
``local_epochs`` / ``local_steps``, PFLlib's ``plocal_epochs`` = ``local_epochs``), then (2) trains w by the run's
local training from the downloaded w and uploads it (FedAvg). Both use the run's minibatches and optimizer, as
PFLlib's ``clientditto`` (``ptrain``, then ``train``). v_i starts as the w of the party's first round and stays in
its shard. λ = 0 is local training of v_i; λ → ∞ keeps v_i at w.

A novel party has no v: it fine-tunes the global w on its shots under the same pull toward w
(:class:`ProximalStart`: ``Constraint(prox=λ, anchor=w)``); at 0 shots it uses w. The pull makes the k-shot
recipe take gradient steps (:func:`fusion.training.finetune`: the residual-GP read-out refit has no place for it).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

from fusion.adapt.constraint import FREE, Constraint
from fusion.federated.base import (
    FederatedAlgorithm,
    FederatedConfig,
    LocalBatch,
    State,
    Tensors,
    own_budget,
    register,
    weighted_mean,
)
from fusion.federated.fedavg import GlobalModel
from fusion.federated.local import local_train
from fusion.lazy import torch
from fusion.models.spec import MLPSpec


@dataclass(frozen=True)
class DittoSettings:
    """``[federated.ditto]`` keys."""

    lam: float = 0.1  # λ of the proximal pull of the personal model toward the global one
    personal_epochs: int | None = None  # the personal model's budget per round (epochs, or steps); neither set:
    personal_steps: int | None = None  # federated.local_epochs / local_steps; one set: the other is 0

    def __post_init__(self) -> None:
        if self.lam < 0:
            raise ValueError(f"federated.ditto.lam must be >= 0, got {self.lam}")
        for key in ("personal_epochs", "personal_steps"):
            if getattr(self, key) is not None and getattr(self, key) < 0:
                raise ValueError(f"federated.ditto.{key} must be >= 0, got {getattr(self, key)}")
        if self.personal_epochs and self.personal_steps:
            raise ValueError("federated.ditto.personal_epochs and federated.ditto.personal_steps are both set")

    def resolve(self, cfg: FederatedConfig) -> DittoSettings:
        epochs, steps = own_budget(self.personal_epochs, self.personal_steps, cfg, "federated.ditto.personal")
        return dataclasses.replace(self, personal_epochs=epochs, personal_steps=steps)


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

    def _personal(self):
        return self.cfg.local().budget(self.opts.personal_epochs, self.opts.personal_steps)

    def party_steps(self, counts: np.ndarray) -> np.ndarray:
        return self.cfg.local().party_steps(counts) + self._personal().party_steps(counts)

    def init_personal(self, down: Tensors, batch: LocalBatch) -> Tensors:
        return {"v": down["w"].expand(len(batch), -1).clone()}

    def local_update(self, down: Tensors, personal: Tensors | None, batch: LocalBatch) -> tuple[Tensors, Tensors]:
        w = down["w"].expand(len(batch), -1)
        pull = Constraint(prox=self.opts.lam, anchor=w) if self.opts.lam > 0 else FREE
        v = local_train(personal["v"], batch, self._personal(), pull, slot="v")
        return {"w": local_train(w, batch)}, {"v": v}

    def participant_models(self, down: Tensors, personal: Tensors | None, batch: LocalBatch) -> torch.Tensor:
        return personal["v"]  # the personal model (PFLlib's evaluate_personalized)

    def aggregate(self, server: State, uploads: State, weights: np.ndarray, ids: np.ndarray) -> State:
        return {**server, "w": weighted_mean(uploads["w"], weights)}

    def novel(self, server: State, spec: MLPSpec) -> ProximalStart:
        return ProximalStart(server["w"], self.opts.lam)
