"""``per_fedavg`` (Fallah, Mokhtari, Ozdaglar, NeurIPS 2020): MAML's objective inside FedAvg.

A local step of party i takes two batches B1, B2 of its rows and moves w along the gradient of the loss after one
inner step:

    w' = w − α ∇L(w; B1)                       (inner step: ``inner`` = "sgd", the paper's)
    w' = w − α ∇L(w; B1) / |∇L(w; B1)|         (``inner`` = "sign": a sign step, element-wise; an option)
    g  = ∇L(w'; B2)                            (first-order: the gradient taken at w')
    g ← g − α ∇²L(w; B1) g                     (``hessian_free``: the exact MAML gradient, see below)
    w ← optimizer step along g                 (the run's local optimizer at ``beta``)

With the run's minibatches (``batch_size`` B > 0) a step takes the next two minibatches of the party's stream as
B1 and B2 (:mod:`fusion.federated.local` with two minibatches per step: ⌈epochs · n_i / 2b_i⌉ steps), as PFLlib's
``clientperavg`` splits a loader batch of 2B into its halves. With ``batch_size`` 0, B1, B2 are two disjoint random
halves of the party's rows each step (``split``; from its own generator), or both all rows (``split`` False).

Step sizes as PFLlib's: α = β = the run's ``lr`` (``alpha``, ``beta`` unset), SGD. With the SGD optimizer the last
line is the paper's w ← w − β g, and a step is PFLlib's ``clientperavg.train`` step: a temporary SGD step of α on
the first half of a loader batch of 2B, the gradient of the second half at the temporary weights, the weights
restored, and a step of β along that gradient.

``passes``: the run's local budget (``local_epochs`` or ``local_steps``) is run that many times a round, one after
the other, each pass with its own permutations of the party's rows. The default 1 is the paper's (τ local steps a
round) and gives Per-FedAvg the budget every other algorithm gets. PFLlib's server calls each selected client's
``train()`` twice a round (``serverperavg.train``), so its Per-FedAvg takes two epochs a round at ``-ls 1``:
``passes = 2`` is that procedure (``bench.pfllib_protocol`` sets it). One difference stays: PFLlib's loader drops
a last batch of fewer than 2B rows (``drop_last``), this one completes it from the next permutation, ⌈n_i / 2b_i⌉
steps a pass against PFLlib's ⌊n_i / 2B⌋.

The ``"sign"`` inner step moves every parameter by ≈ α whatever the scale of the party's loss; its Jacobian is ≈ 0
(|g| normalizes g away), so ``hessian_free`` requires ``inner = "sgd"``.

``hessian_free`` adds the Hessian-vector product of the paper's HF variant without forming a
Hessian: ∇²L(w; B1) g ≈ ‖g‖ (∇L(w + r ĝ; B1) − ∇L(w − r ĝ; B1)) / (2r), ĝ = g / ‖g‖, a central difference of
two gradients at distance r = ``fd_radius`` from w along g (error O(r²)). The Hessian is taken on B1, the batch
of the inner step, which makes g − α H g the gradient of L(w − α∇L(w; B1); B2) itself (the paper draws a third
batch for it). With ``batch_size`` 0, ``split`` False and α = 0 the SGD step is exactly FedAvg's full-batch step.

Gradient evaluations per local step: 2 (first order) or 4 (Hessian-free); :meth:`party_steps` counts them (and
the passes).

A participating party's own model (:meth:`participant_models`) is PFLlib's ``evaluate_one_step``: the global model
after one SGD step of α on one minibatch of B of the party's rows (``train_one_step``), scored on its held-out rows.

A novel party receives w and uses the run's k-shot recipe (:class:`GlobalModel` with ``finetune`` True), not
"a few α-steps": the recipe is what every other method's novel party gets (same optimizer, same step-count
selection by cross-validation on the shots, which may pick 0 steps), so the comparison measures the start w
that the meta-objective learned rather than a different adaptation rule; a :class:`FederatedStart` also has no
place to carry an adaptation rule of its own besides a constraint.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

from fusion.federated.base import (
    FederatedAlgorithm,
    FederatedConfig,
    LocalBatch,
    State,
    Tensors,
    register,
    weighted_mean,
)
from fusion.federated.fedavg import GlobalModel
from fusion.federated.local import local_train
from fusion.lazy import torch
from fusion.models.params import loss_and_grad
from fusion.models.spec import MLPSpec

INNER_STEPS = ("sgd", "sign")


@dataclass(frozen=True)
class PerFedAvgSettings:
    """``[federated.per_fedavg]`` keys."""

    alpha: float | None = None  # inner (personalization) step size; None: federated.lr (PFLlib's)
    inner: str = "sgd"  # the inner step: "sgd" (the paper's) or "sign" (a sign step of size alpha)
    beta: float | None = None  # outer step size of the run's optimizer; None: federated.lr (PFLlib's)
    hessian_free: bool = False  # add the Hessian-vector-product correction (finite difference of gradients)
    split: bool = True  # full batch: B1, B2 = disjoint random halves of the party's rows; False: both are all rows
    fd_radius: float = 1e-3  # distance of the finite-difference points from w (Hessian-free only)
    passes: int = 1  # the local budget run this many times a round (PFLlib's server trains a client twice: 2)

    def __post_init__(self) -> None:
        if self.alpha is not None and self.alpha < 0:
            raise ValueError(f"federated.per_fedavg.alpha must be >= 0 (or unset: federated.lr), got {self.alpha}")
        if self.inner not in INNER_STEPS:
            raise ValueError(f"federated.per_fedavg.inner must be one of {list(INNER_STEPS)}, got {self.inner!r}")
        if self.hessian_free and self.inner != "sgd":
            raise ValueError('federated.per_fedavg.hessian_free needs inner = "sgd" (a sign step has Jacobian ≈ 0)')
        if self.beta is not None and not self.beta > 0:
            raise ValueError(f"federated.per_fedavg.beta must be > 0 (or unset: federated.lr), got {self.beta}")
        if not self.fd_radius > 0:
            raise ValueError(f"federated.per_fedavg.fd_radius must be > 0, got {self.fd_radius}")
        if not (isinstance(self.passes, int) and self.passes >= 1):
            raise ValueError(f"federated.per_fedavg.passes must be an integer >= 1, got {self.passes!r}")

    def resolve(self, cfg: FederatedConfig) -> PerFedAvgSettings:
        alpha = cfg.lr if self.alpha is None else self.alpha
        return dataclasses.replace(self, alpha=alpha, beta=cfg.lr if self.beta is None else self.beta)


def _halves(batch: LocalBatch) -> tuple[torch.Tensor, torch.Tensor]:
    """Per party, a random permutation of its rows cut in two: index tensors (n, ⌊N/2⌋), (n, N − ⌊N/2⌋)."""
    n_rows = batch.x.shape[1]
    perm = torch.as_tensor(np.stack([rng.permutation(n_rows) for rng in batch.rngs]), device=batch.x.device)
    return perm[:, : n_rows // 2], perm[:, n_rows // 2 :]


@register
class PerFedAvg(FederatedAlgorithm):
    name = "per_fedavg"
    settings = PerFedAvgSettings

    def _group(self) -> int:
        return 2 if self.cfg.batch_size > 0 else 1

    def party_steps(self, counts: np.ndarray) -> np.ndarray:
        steps = self.cfg.local().party_steps(counts, self._group()) * self.opts.passes
        return steps * (4 if self.opts.hessian_free else 2)

    def local_update(self, down: Tensors, personal: Tensors | None, batch: LocalBatch) -> tuple[Tensors, None]:
        opts, spec = self.opts, batch.spec
        work1, work2 = {}, {}

        def meta_grad(w: torch.Tensor, parts: list, rows: torch.Tensor | None) -> torch.Tensor:
            loss = batch.loss if rows is None else batch.loss_of(batch.descriptors[rows])
            if len(parts) == 2:
                (x1, y1), (x2, y2) = parts
            elif opts.split:  # full batch: random halves of every party's rows
                (x1, y1), (x2, y2) = (batch.rows(idx) for idx in _halves(batch))
                if rows is not None:
                    x1, y1, x2, y2 = x1[rows], y1[rows], x2[rows], y2[rows]
            else:
                (x1, y1), (x2, y2) = parts[0], parts[0]
            g1 = loss_and_grad(w, spec, x1, y1, loss, work1)[1]
            inner = w - opts.alpha * (g1 if opts.inner == "sgd" else g1 / (g1.abs() + 1e-8))
            grad = loss_and_grad(inner, spec, x2, y2, loss, work2)[1]
            if opts.hessian_free:
                norm = grad.norm(dim=1, keepdim=True).clamp_min(1e-12)
                step = grad * (opts.fd_radius / norm)
                plus = loss_and_grad(w + step, spec, x1, y1, loss, work1)[1]
                minus = loss_and_grad(w - step, spec, x1, y1, loss, work1)[1]
                grad = grad - opts.alpha * (plus - minus) * (norm / (2 * opts.fd_radius))
            return grad

        outer = dataclasses.replace(batch.train, lr=opts.beta)
        w = down["w"].expand(len(batch), -1)
        return {"w": local_train(w, batch, outer, grad=meta_grad, group=self._group(), passes=opts.passes)}, None

    def participant_models(self, down: Tensors, personal: Tensors | None, batch: LocalBatch) -> torch.Tensor:
        """The global model after one SGD step of size α on one minibatch of the party's rows (PFLlib's
        evaluate_one_step; all rows with batch_size 0)."""
        w = down["w"].expand(len(batch), -1)
        one = dataclasses.replace(batch.train, epochs=0, steps=1, lr=self.opts.alpha, momentum=0.0, optimizer="sgd")
        return local_train(w, batch, one, slot="eval")

    def aggregate(self, server: State, uploads: State, weights: np.ndarray, ids: np.ndarray) -> State:
        return {**server, "w": weighted_mean(uploads["w"], weights)}

    def novel(self, server: State, spec: MLPSpec) -> GlobalModel:
        return GlobalModel(server["w"], finetune=True)
