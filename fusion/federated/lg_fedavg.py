"""``lg_fedavg`` (Liang et al. 2020, "Think locally, act globally"; HtFLlib's heterogeneous form): local bodies, one
global head.

Every party keeps its whole model (:mod:`fusion.federated.htfl`: its family's model with a common feature layer
of ``feature_dim`` units and the head ``Linear(feature_dim, classes)``). Each round a sampled party puts the
downloaded global head on its own body, trains the whole model by the run's local training on its data, keeps it and
uploads its head; the server's global head is the sample-weighted mean of the uploaded heads. The server's first
head is ``Linear``'s init from the run seed.

A novel party: the plain init of its family's body under the global head (0 shots); its shots train the body.
"""

from __future__ import annotations

import numpy as np

from fusion.federated.base import LocalBatch, State, Tensors, register, weighted_mean
from fusion.federated.htfl import SharedHead
from fusion.models.spec import Spec, n_body

_HEAD = 0x1C


@register
class LGFedAvg(SharedHead):
    name = "lg_fedavg"
    head_tag = _HEAD

    def upload(self, model, batch: LocalBatch) -> Tensors:
        return {"head": model[:, n_body(batch.spec) :]}

    def aggregate(self, server: State, uploads: State, weights: np.ndarray, ids: np.ndarray) -> State:
        return {**server, "head": weighted_mean(uploads["head"], weights)}

    def novel_head(self, server: dict, spec: Spec) -> np.ndarray:
        return np.asarray(server["head"], np.float32)
