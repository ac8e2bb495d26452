"""``fedrep`` (Collins, Hassani, Mokhtari, Shakkottai, ICML 2021): a shared body, a personal head.

The head is the last layer of the MLP (its weight and bias), the body every layer below it. Each round a sampled
party puts its own head on the downloaded body, trains the head with the body frozen for ``head_epochs`` epochs
(or ``head_steps`` steps; neither set: the run's ``local_epochs`` / ``local_steps``, PFLlib's ``plocal_epochs`` =
``local_epochs``), then the body with its (new) head frozen by the run's local training, keeps the head and
uploads the body only; the server averages the bodies. A party's head starts as the head of the common init.

A novel party receives the global body and fits a head on its shots (:class:`HeadStart`: the run's k-shot
recipe with only the head free; the residual-GP recipe refits the last layer only, which is the head, so it keeps
that rule). Its 0-shot model needs a head the server does not have in FedRep. Default (``share_heads`` False):
the start carries the init head and says it has no 0-shot model (``zero_shot`` False: its 0-shot row is written
as NaN, "n/a"). ``share_heads`` True: parties also upload their trained heads (counted in the upload bytes), and
the server keeps their weighted mean as the 0-shot head — a departure from FedRep's privacy story (the server
sees personal heads) bought for a usable 0-shot model.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

from fusion.adapt.constraint import Constraint
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
class FedRepSettings:
    """``[federated.fedrep]`` keys."""

    head_epochs: int | None = None  # the head's budget per round, before the body's (epochs, or steps); neither
    head_steps: int | None = None  # set: federated.local_epochs / local_steps; one set: the other is 0
    share_heads: bool = False  # upload heads too, for an averaged 0-shot head (see the module docstring)

    def __post_init__(self) -> None:
        for key in ("head_epochs", "head_steps"):
            if getattr(self, key) is not None and getattr(self, key) < 0:
                raise ValueError(f"federated.fedrep.{key} must be >= 0, got {getattr(self, key)}")
        if self.head_epochs and self.head_steps:
            raise ValueError("federated.fedrep.head_epochs and federated.fedrep.head_steps are both set")

    def resolve(self, cfg: FederatedConfig) -> FedRepSettings:
        epochs, steps = own_budget(self.head_epochs, self.head_steps, cfg, "federated.fedrep.head")
        return dataclasses.replace(self, head_epochs=epochs, head_steps=steps)


def body_size(spec: MLPSpec) -> int:
    """Parameters below the last layer: the flat layout's first ``body_size`` entries are the body."""
    if spec.n_layers < 2:
        raise ValueError(f"fedrep needs a hidden layer to split body from head, got the MLP {spec}")
    return spec.offsets[-1][0]


def head_mask(spec: MLPSpec, device: torch.device | str = "cpu") -> torch.Tensor:
    """(n_params,) bool: True on the last layer (weight and bias)."""
    mask = torch.zeros(spec.n_params, dtype=torch.bool, device=device)
    mask[body_size(spec) :] = True
    return mask


class HeadStart(GlobalModel):
    """The global body with a 0-shot head (n_params,) for every novel party; its shots fit the head only."""

    kind = "head_start"

    def __init__(self, params: np.ndarray, n_body: int, zero_shot: bool = True) -> None:
        super().__init__(params)
        self.n_body = int(n_body)
        self.zero_shot = bool(zero_shot)

    def constraint_for(self, start: torch.Tensor) -> Constraint:
        mask = torch.zeros(start.shape[-1], dtype=torch.bool, device=start.device)
        mask[self.n_body :] = True
        return Constraint(mask=mask)

    def export(self) -> dict:
        return {**super().export(), "n_body": self.n_body, "zero_shot": self.zero_shot}

    @classmethod
    def restore(cls, state: dict) -> HeadStart:
        return cls(state["params"].numpy(), int(state["n_body"]), bool(state.get("zero_shot", True)))


@register
class FedRep(FederatedAlgorithm):
    name = "fedrep"
    settings = FedRepSettings
    personal = True

    def _heads(self):
        return self.cfg.local().budget(self.opts.head_epochs, self.opts.head_steps)

    def party_steps(self, counts: np.ndarray) -> np.ndarray:
        return self._heads().party_steps(counts) + self.cfg.local().party_steps(counts)

    def init_server(self, spec: MLPSpec, init: np.ndarray, descriptors: np.ndarray, seed: int) -> State:
        body_size(spec)  # refuses an MLP without a hidden layer before any round
        return super().init_server(spec, init, descriptors, seed)

    def init_personal(self, down: Tensors, batch: LocalBatch) -> Tensors:
        return {"head": down["w"][body_size(batch.spec) :].expand(len(batch), -1).clone()}

    def local_update(self, down: Tensors, personal: Tensors | None, batch: LocalBatch) -> tuple[Tensors, Tensors]:
        spec, n_body = batch.spec, body_size(batch.spec)
        head = head_mask(spec, batch.x.device)
        model = torch.cat([down["w"][:n_body].expand(len(batch), -1), personal["head"]], dim=1)
        model = local_train(model, batch, self._heads(), Constraint(mask=head), slot="head")
        model = local_train(model, batch, constraint=Constraint(mask=~head), slot="body")
        uploads = {"body": model[:, :n_body]}
        if self.opts.share_heads:
            uploads["head"] = model[:, n_body:]
        return uploads, {"head": model[:, n_body:]}

    def participant_models(self, down: Tensors, personal: Tensors | None, batch: LocalBatch) -> torch.Tensor:
        n_body = body_size(batch.spec)  # the global body under the party's own head
        return torch.cat([down["w"][:n_body].expand(len(batch), -1), personal["head"]], dim=1)

    def aggregate(self, server: State, uploads: State, weights: np.ndarray, ids: np.ndarray) -> State:
        w = server["w"].copy()
        n_body = uploads["body"].shape[1]
        w[:n_body] = weighted_mean(uploads["body"], weights)
        if "head" in uploads:
            w[n_body:] = weighted_mean(uploads["head"], weights)
        return {**server, "w": w}

    def novel(self, server: State, spec: MLPSpec) -> HeadStart:
        return HeadStart(server["w"], body_size(spec), zero_shot=self.opts.share_heads)
