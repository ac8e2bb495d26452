"""``fedgh`` (Yi et al., ACM MM 2023): a global head trained by the server on the parties' class prototypes.

Every party keeps its whole model (:mod:`fusion.federated.htfl`). Each round a sampled party puts the downloaded
global head on its own body, trains the whole model by the run's local training on the task loss, keeps it and uploads
its class prototypes (mean features per class, (classes, feature_dim)) and class counts. The server trains the
global head ``Linear(feature_dim, classes)`` on the uploaded prototypes — each (party, class) prototype one
example of its class, cross-entropy — for ``server_steps`` full-batch Adam steps at ``server_lr``, from where it
was (``Linear``'s init from the run seed before the first round).

A novel party: the plain init of its family's body under the global head (0 shots); its shots train the body.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fusion.federated.base import State, register
from fusion.federated.htfl import SharedHead, server_train
from fusion.lazy import torch
from fusion.models.spec import Spec

_HEAD = 0x6B


@dataclass(frozen=True)
class FedGHSettings:
    """``[federated.fedgh]`` keys."""

    server_steps: int = 100  # the server's head-training steps per round
    server_lr: float = 0.01

    def __post_init__(self) -> None:
        if self.server_steps < 0 or not self.server_lr > 0:
            raise ValueError("federated.fedgh.server_steps must be >= 0 and federated.fedgh.server_lr > 0")


def prototype_examples(uploads: State) -> tuple[torch.Tensor, torch.Tensor]:
    """Every uploaded (party, class) prototype whose class the party holds: x (m, D), class (m,), in party-id order."""
    protos, counts = np.asarray(uploads["protos"]), np.asarray(uploads["counts"])
    party, cls = np.nonzero(counts > 0)
    return torch.as_tensor(protos[party, cls], dtype=torch.float32), torch.as_tensor(cls, dtype=torch.long)


@register
class FedGH(SharedHead):
    name = "fedgh"
    head_tag = _HEAD
    settings = FedGHSettings

    def aggregate(self, server: State, uploads: State, weights: np.ndarray, ids: np.ndarray) -> State:
        x, y = prototype_examples(uploads)
        c, d = len(uploads["counts"][0]), x.shape[1]

        def loss(head: torch.Tensor) -> torch.Tensor:
            logits = x @ head[: c * d].view(c, d).T + head[c * d :]
            return torch.nn.functional.cross_entropy(logits, y)

        head = server_train(server["head"], loss, self.opts.server_steps, self.opts.server_lr)
        return {**server, "head": head}

    def novel_head(self, server: dict, spec: Spec) -> np.ndarray:
        return np.asarray(server["head"], np.float32)
