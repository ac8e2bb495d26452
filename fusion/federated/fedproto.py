"""``fedproto`` (Tan et al., AAAI 2022): parties share class prototypes, the mean feature of each class.

Every party keeps its whole model (:mod:`fusion.federated.htfl`: features are the common feature layer's
``feature_dim`` activations). Each round a sampled party trains by the run's local training on the task loss plus
``lam`` times the mean squared distance of each example's features to the global prototype of its class
(classes the server has one for), then uploads its class prototypes (classes, feature_dim) and class counts.
The server's global prototype of a class is the parties' class prototypes weighted by their class counts — the
mean feature of that class over all uploaders' data; a class no party of the round holds keeps its previous one.

A novel party: FedProto classifies by the nearest global prototype, which is a linear head
(:func:`fusion.federated.htfl.prototype_head`) on the plain init of its family's body (0 shots); its shots train
the body toward the prototypes' classifier.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fusion.federated.base import State, register
from fusion.federated.htfl import SharedPrototypes, class_weighted_mean, prototype_head
from fusion.models.spec import Spec


@dataclass(frozen=True)
class ProtoSettings:
    """``[federated.fedproto]`` keys."""

    lam: float = 1.0  # weight of the prototype term

    def __post_init__(self) -> None:
        if self.lam < 0:
            raise ValueError(f"federated.fedproto.lam must be >= 0, got {self.lam}")


@register
class FedProto(SharedPrototypes):
    name = "fedproto"
    settings = ProtoSettings

    def init_server(self, spec: Spec, init: np.ndarray, descriptors: np.ndarray, seed: int) -> State:
        c, d = spec.fan_out, self.cfg.feature_dim
        return {"protos": np.zeros((c, d), np.float32), "have": np.zeros(c, np.float32), "seed": np.array(seed)}

    def aggregate(self, server: State, uploads: State, weights: np.ndarray, ids: np.ndarray) -> State:
        pooled, total = class_weighted_mean(uploads["protos"], uploads["counts"])
        held = total > 0
        protos = np.where(held[:, None], pooled, server["protos"]).astype(np.float32)
        return {**server, "protos": protos, "have": np.maximum(server["have"], held).astype(np.float32)}

    def novel_head(self, server: dict, spec: Spec) -> np.ndarray:
        return prototype_head(server["protos"], server["have"] > 0)
