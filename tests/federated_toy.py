"""A small personal algorithm for the engine's tests (not registered): each party keeps a personal model trained
with a proximal pull toward the global one (Ditto's shape), so a restart that lost it would show in the numbers."""

from __future__ import annotations

import numpy as np

from fusion.adapt.constraint import Constraint
from fusion.federated.base import FederatedAlgorithm, LocalBatch, State, Tensors, weighted_mean
from fusion.federated.fedavg import GlobalModel
from fusion.federated.local import local_train
from fusion.models.spec import MLPSpec


class PersonalToy(FederatedAlgorithm):
    name = "personal_toy"
    personal = True

    def init_personal(self, down: Tensors, batch: LocalBatch) -> Tensors:
        return {"v": down["w"].expand(len(batch), -1).clone()}

    def local_update(self, down: Tensors, personal: Tensors, batch: LocalBatch) -> tuple[Tensors, Tensors]:
        start = down["w"].expand(len(batch), -1)
        w = local_train(start, batch)
        pull = Constraint(prox=0.5, anchor=start.clone())
        v = local_train(personal["v"], batch, constraint=pull, slot="v")
        return {"w": w}, {"v": v}

    def aggregate(self, server: State, uploads: State, weights: np.ndarray, ids: np.ndarray) -> State:
        return {**server, "w": weighted_mean(uploads["w"], weights)}

    def novel(self, server: State, spec: MLPSpec) -> GlobalModel:
        return GlobalModel(server["w"])
