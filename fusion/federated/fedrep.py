"""``fedrep`` (Collins, Hassani, Mokhtari, Shakkottai, ICML 2021): a shared body, a personal head.

The head is the last layer of the MLP (its weight and bias), the body every layer below it. Each round a sampled
party puts its own head on the downloaded body, trains the head for ``head_steps`` steps with the body frozen,
then the body for ``federated.local_steps`` steps with its (new) head frozen, keeps the head and uploads the body
only; the server averages the bodies. A party's head starts as the head of the common init.

A novel party receives the global body and fits a head on its shots (:class:`HeadStart`: the run's k-shot
recipe with only the head free). Its 0-shot model needs a head the server does not have in FedRep. Default
(``share_heads`` False): the init head, i.e. the honest "FedRep has no 0-shot model" (the body's features under
a random readout). ``share_heads`` True: parties also upload their trained heads (counted in the upload bytes),
and the server keeps their weighted mean as the 0-shot head — a departure from FedRep's privacy story (the
server sees personal heads) bought for a usable 0-shot model.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fusion.adapt.constraint import Constraint
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
class FedRepSettings:
    """``[federated.fedrep]`` keys."""

    head_steps: int | None = None  # head-only steps before the body steps each round; None: federated.local_steps
    share_heads: bool = False  # upload heads too, for an averaged 0-shot head (see the module docstring)

    def __post_init__(self) -> None:
        if self.head_steps is not None and self.head_steps < 0:
            raise ValueError(f"federated.fedrep.head_steps must be >= 0, got {self.head_steps}")


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

    def __init__(self, params: np.ndarray, n_body: int) -> None:
        super().__init__(params)
        self.n_body = int(n_body)

    def constraint_for(self, start: torch.Tensor) -> Constraint:
        mask = torch.zeros(start.shape[-1], dtype=torch.bool, device=start.device)
        mask[self.n_body :] = True
        return Constraint(mask=mask)

    def export(self) -> dict:
        return {**super().export(), "n_body": self.n_body}

    @classmethod
    def restore(cls, state: dict) -> HeadStart:
        return cls(state["params"].numpy(), int(state["n_body"]))


@register
class FedRep(FederatedAlgorithm):
    name = "fedrep"
    settings = FedRepSettings
    personal = True

    def _head_steps(self) -> int:
        return self.cfg.local_steps if self.opts.head_steps is None else self.opts.head_steps

    def steps_per_round(self) -> int:
        return self._head_steps() + self.cfg.local_steps

    def init_server(self, spec: MLPSpec, init: np.ndarray, descriptors: np.ndarray, seed: int) -> State:
        body_size(spec)  # refuses an MLP without a hidden layer before any round
        return super().init_server(spec, init, descriptors, seed)

    def init_personal(self, down: Tensors, batch: LocalBatch) -> Tensors:
        return {"head": down["w"][body_size(batch.spec) :].expand(len(batch), -1).clone()}

    def local_update(self, down: Tensors, personal: Tensors | None, batch: LocalBatch) -> tuple[Tensors, Tensors]:
        spec, cfg, n_body = batch.spec, batch.train, body_size(batch.spec)
        head = head_mask(spec, batch.x.device)
        model = torch.cat([down["w"][:n_body].expand(len(batch), -1), personal["head"]], dim=1)
        heads = TrainConfig(self._head_steps(), cfg.lr, decay=False, optimizer=cfg.optimizer)
        model = train(model, spec, batch.x, batch.y, batch.loss, heads, constraint=Constraint(mask=head))
        model = train(model, spec, batch.x, batch.y, batch.loss, cfg, constraint=Constraint(mask=~head))
        uploads = {"body": model[:, :n_body]}
        if self.opts.share_heads:
            uploads["head"] = model[:, n_body:]
        return uploads, {"head": model[:, n_body:]}

    def aggregate(self, server: State, uploads: State, weights: np.ndarray, ids: np.ndarray) -> State:
        w = server["w"].copy()
        n_body = uploads["body"].shape[1]
        w[:n_body] = weighted_mean(uploads["body"], weights)
        if "head" in uploads:
            w[n_body:] = weighted_mean(uploads["head"], weights)
        return {**server, "w": w}

    def novel(self, server: State, spec: MLPSpec) -> HeadStart:
        return HeadStart(server["w"], body_size(spec))
