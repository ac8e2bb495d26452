"""``fedtgp`` (Zhang et al., AAAI 2024): trainable global prototypes with an adaptive-margin contrastive loss.

Parties train as in :mod:`fusion.federated.fedproto` (task loss plus ``lam`` times the squared distance of each
example's features to its class's global prototype) and upload their class prototypes and class counts. The
server does not average them: it owns a prototype generator — one learned embedding (feature_dim,) per class
through ``Linear(feature_dim, hidden) -> ReLU -> Linear(hidden, feature_dim)`` — and trains it each round,
``server_steps`` full-batch Adam steps at ``server_lr``, on every uploaded (party, class) prototype ``p`` of class
``c`` with the loss

    cross-entropy over classes j of the scores  -(|p - P_j| + δ·[j = c]),    P_j = generator(class j)

(Euclidean distances; the margin δ added to the true class's distance pushes the prototypes of different classes
apart). δ adapts: the largest, over the classes of the round, of a class's distance to its nearest other class
among the count-weighted mean uploaded prototypes, capped at ``margin_cap``. The generated prototypes of the
classes seen so far are broadcast.

A novel party: the nearest-prototype classifier of the global prototypes as its head
(:func:`fusion.federated.htfl.prototype_head`) on the plain init of its family's body; its shots train the body.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fusion.federated.base import State, register
from fusion.federated.fedgh import prototype_examples
from fusion.federated.htfl import SharedPrototypes, class_weighted_mean, prototype_head, server_train
from fusion.lazy import torch
from fusion.models.params import init_params
from fusion.models.spec import MLPSpec, Spec

_GEN = 0x7C9


@dataclass(frozen=True)
class TGPSettings:
    """``[federated.fedtgp]`` keys."""

    lam: float = 1.0  # weight of the prototype term in the parties' loss
    hidden: int = 512  # the generator's hidden width
    server_steps: int = 100  # generator steps per round
    server_lr: float = 0.01
    margin_cap: float = 100.0  # the adaptive margin's upper bound

    def __post_init__(self) -> None:
        for key, ok, allowed in (
            ("lam", self.lam >= 0, ">= 0"),
            ("hidden", self.hidden >= 1, ">= 1"),
            ("server_steps", self.server_steps >= 0, ">= 0"),
            ("server_lr", self.server_lr > 0, "> 0"),
            ("margin_cap", self.margin_cap >= 0, ">= 0"),
        ):
            if not ok:
                raise ValueError(f"federated.fedtgp.{key} must be {allowed}, got {getattr(self, key)}")


def generator_sizes(n_classes: int, dim: int, hidden: int) -> list[tuple[int, ...]]:
    """Shapes of the generator's parameters in its flat vector: embeddings, W1, b1, W2, b2."""
    return [(n_classes, dim), (hidden, dim), (hidden,), (dim, hidden), (dim,)]


def generate(flat: torch.Tensor, n_classes: int, dim: int, hidden: int) -> torch.Tensor:
    """The prototypes (classes, dim) of a generator ``flat``."""
    parts, pos = [], 0
    for shape in generator_sizes(n_classes, dim, hidden):
        size = int(np.prod(shape))
        parts.append(flat[pos : pos + size].view(shape))
        pos += size
    emb, w1, b1, w2, b2 = parts
    return torch.relu(emb @ w1.T + b1) @ w2.T + b2


def adaptive_margin(means: np.ndarray, held: np.ndarray, cap: float) -> float:
    """The largest nearest-other-class distance among the held classes' mean prototypes (classes, D), capped."""
    idx = np.flatnonzero(held)
    if len(idx) < 2:
        return 0.0
    m = np.asarray(means, np.float64)[idx]
    dist = np.sqrt(((m[:, None] - m[None]) ** 2).sum(-1))
    np.fill_diagonal(dist, np.inf)
    return float(min(dist.min(1).max(), cap))


@register
class FedTGP(SharedPrototypes):
    name = "fedtgp"
    settings = TGPSettings

    def init_server(self, spec: Spec, init: np.ndarray, descriptors: np.ndarray, seed: int) -> State:
        c, d, h = spec.fan_out, self.cfg.feature_dim, self.opts.hidden
        gen = torch.Generator().manual_seed(int(np.random.default_rng([seed, _GEN]).integers(2**62)))
        # embeddings ~ N(0, 1) (torch.nn.Embedding's init), the two Linear layers with Linear's init
        emb = torch.randn(c * d, generator=gen)
        mlp = init_params(MLPSpec((d, h, d)), gen)
        flat = torch.cat([emb, mlp[: h * d], mlp[h * d : h * d + h], mlp[h * d + h : h * d + h + d * h], mlp[-d:]])
        with torch.no_grad():
            protos = generate(flat, c, d, h).numpy()
        return {
            "generator": flat.numpy(),
            "protos": protos.astype(np.float32),
            "have": np.zeros(c, np.float32),
            "margin": np.array(0.0),
            "seed": np.array(seed),
        }

    def aggregate(self, server: State, uploads: State, weights: np.ndarray, ids: np.ndarray) -> State:
        c, d, h = len(server["have"]), self.cfg.feature_dim, self.opts.hidden
        means, total = class_weighted_mean(uploads["protos"], uploads["counts"])
        held = total > 0
        margin = adaptive_margin(means, held, self.opts.margin_cap)
        x, y = prototype_examples(uploads)
        onehot = torch.nn.functional.one_hot(y, c).float()

        def loss(flat: torch.Tensor) -> torch.Tensor:
            protos = generate(flat, c, d, h)
            dist = torch.cdist(x, protos)  # (m, classes) Euclidean
            return torch.nn.functional.cross_entropy(-(dist + margin * onehot), y)

        flat = server_train(server["generator"], loss, self.opts.server_steps, self.opts.server_lr)
        with torch.no_grad():
            protos = generate(torch.as_tensor(flat), c, d, h).numpy().astype(np.float32)
        have = np.maximum(server["have"], held).astype(np.float32)
        return {**server, "generator": flat, "protos": protos, "have": have, "margin": np.array(margin)}

    def novel_head(self, server: dict, spec: Spec) -> np.ndarray:
        return prototype_head(server["protos"], server["have"] > 0)
