"""``fedavg`` and ``fedavg_ft`` (McMahan et al. 2017): local training from the global model, weighted averaging.

A sampled party trains the downloaded w by the run's local training (:mod:`fusion.federated.local`: epochs of
minibatches of its own rows, or steps) and uploads it; the server takes the sample-weighted mean.

A novel party receives the global model: ``fedavg`` uses it as it is at every k, ``fedavg_ft`` fine-tunes it on
its k shots by the run's recipe. Both are one training run.
"""

from __future__ import annotations

import numpy as np

from fusion.federated.base import (
    FederatedAlgorithm,
    FederatedStart,
    LocalBatch,
    State,
    Tensors,
    register,
    weighted_mean,
)
from fusion.federated.local import local_train
from fusion.models.spec import MLPSpec
from fusion.strategies.average import Constant


class GlobalModel(Constant, FederatedStart):
    """One model (n_params,) for every novel party (:class:`Constant`); fine-tuned freely on its shots when
    ``finetune``."""

    kind = "global_model"

    def __init__(self, params: np.ndarray, finetune: bool = True) -> None:
        super().__init__(params)
        self.finetune = bool(finetune)

    def export(self) -> dict:
        return {**super().export(), "finetune": self.finetune}

    @classmethod
    def restore(cls, state: dict) -> GlobalModel:
        return cls(state["params"].numpy(), bool(state["finetune"]))


@register
class FedAvg(FederatedAlgorithm):
    name = "fedavg"
    finetune_novel = False

    def local_update(self, down: Tensors, personal: Tensors | None, batch: LocalBatch) -> tuple[Tensors, None]:
        return {"w": local_train(down["w"].expand(len(batch), -1), batch)}, None

    def aggregate(self, server: State, uploads: State, weights: np.ndarray, ids: np.ndarray) -> State:
        return {**server, "w": weighted_mean(uploads["w"], weights)}

    def novel(self, server: State, spec: MLPSpec) -> GlobalModel:
        return GlobalModel(server["w"], finetune=self.finetune_novel)


@register
class FedAvgFT(FedAvg):
    name = "fedavg_ft"
    training = "fedavg"
    finetune_novel = True
