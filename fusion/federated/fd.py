"""``fd`` (federated distillation, Jeong et al. 2018; HtFLlib's FD): parties share per-class mean logits.

Every party keeps its whole model (:mod:`fusion.federated.htfl`). Each round a sampled party trains it by
the run's local training on the task loss plus ``lam`` times the mean squared distance of its logits to the global
logits of each example's class (classes the server has logits for), then uploads its per-class mean logits
(classes, classes) and class counts. The server's global logits of a class are the parties' class means weighted
by their class counts (the mean logit vector of that class over all uploaders' data); a class no party of the
round holds keeps its previous global logits.

A novel party: the shared knowledge is logits per class, which a model cannot use without data; its 0-shot model
is the plain init of its family's model, and its shots train the whole model by the run's recipe.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fusion.federated.base import LocalBatch, LossFn, State, Tensors, register
from fusion.federated.htfl import HtFLAlgorithm, class_means, class_weighted_mean, pull_to
from fusion.lazy import torch
from fusion.models.params import forward
from fusion.models.spec import Spec


@dataclass(frozen=True)
class FDSettings:
    """``[federated.fd]`` keys."""

    lam: float = 1.0  # weight of the distillation term

    def __post_init__(self) -> None:
        if self.lam < 0:
            raise ValueError(f"federated.fd.lam must be >= 0, got {self.lam}")


@register
class FD(HtFLAlgorithm):
    name = "fd"
    settings = FDSettings
    body_only_shots = False

    def init_server(self, spec: Spec, init: np.ndarray, descriptors: np.ndarray, seed: int) -> State:
        c = spec.fan_out
        return {"logits": np.zeros((c, c), np.float32), "have": np.zeros(c, np.float32), "seed": np.array(seed)}

    def broadcast(self, server: State) -> State:
        return {"logits": server["logits"], "have": server["have"]}

    def local_loss(self, down: Tensors, task: LossFn):
        lam, have = self.opts.lam, down["have"] > 0
        return lambda feats, logits, y: task(logits, y) + lam * pull_to(down["logits"], have, logits, y)

    def upload(self, model, batch: LocalBatch) -> Tensors:
        with torch.no_grad():
            logits, counts = class_means(forward(model, batch.spec, batch.x), batch.y, batch.spec.fan_out)
        return {"logits": logits, "counts": counts}

    def aggregate(self, server: State, uploads: State, weights: np.ndarray, ids: np.ndarray) -> State:
        pooled, total = class_weighted_mean(uploads["logits"], uploads["counts"])
        held = total > 0
        logits = np.where(held[:, None], pooled, server["logits"]).astype(np.float32)
        return {**server, "logits": logits, "have": np.maximum(server["have"], held).astype(np.float32)}
