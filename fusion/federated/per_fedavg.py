"""``per_fedavg`` (Fallah, Mokhtari, Ozdaglar, NeurIPS 2020): MAML's objective inside FedAvg.

A local step of party i draws two disjoint random halves B1, B2 of its rows (``split``; from its own generator)
and moves w along the gradient of the loss after one inner step:

    w' = w − α ∇L(w; B1)                       (inner step: ``inner`` = "sgd", the paper's)
    w' = w − α ∇L(w; B1) / |∇L(w; B1)|         (``inner`` = "adam": Adam's first step, element-wise)
    g  = ∇L(w'; B2)                            (first-order: the gradient taken at w')
    g ← g − α ∇²L(w; B1) g                     (``hessian_free``: the exact MAML gradient, see below)
    w ← optimizer step along g                 (the run's local optimizer at ``beta``, default federated.lr)

With ``federated.optimizer = "sgd"`` the last line is the paper's w ← w − β g; with Adam it is Adam on the
meta-gradient.

Why an Adam inner step (the default): the paper's SGD step is unstable on losses whose curvature differs by
orders of magnitude between parties. On sine-domains (loss relative to the amplitude², a ∈ [0.1, 5]) the top
Hessian eigenvalue at the common init ranges from ~250 to ~6·10⁴ across parties, so α·λ_max < 2 needs α ≲ 3·10⁻⁵:
in 10 rounds α = 10⁻⁵ already diverged (0-shot nRMSE 11 against FedAvg's 0.68), and α ≤ 10⁻⁶ is FedAvg. Adam's
first step moves every parameter by ≈ α whatever the scale, and it is the first step of the k-shot recipe a novel
party runs (Adam at ``FinetuneConfig.lr``): with α equal to that lr, w is meta-trained for the adaptation it gets.
The Adam step's Jacobian is ≈ I (|g| normalizes g away), so its exact meta-gradient is the first-order one and
``hessian_free`` requires ``inner = "sgd"``.

``hessian_free`` adds the Hessian-vector product of the paper's HF variant without forming a
Hessian: ∇²L(w; B1) g ≈ ‖g‖ (∇L(w + r ĝ; B1) − ∇L(w − r ĝ; B1)) / (2r), ĝ = g / ‖g‖, a central difference of
two gradients at distance r = ``fd_radius`` from w along g (error O(r²)). The Hessian is taken on B1, the batch
of the inner step, which makes g − α H g the gradient of L(w − α∇L(w; B1); B2) itself (the paper draws a third
batch for it). ``split`` False uses all rows for both batches: the deterministic MAML step, and with α = 0 and
SGD exactly FedAvg's local training.

Gradient evaluations per local step: 2 (first order) or 4 (Hessian-free); :meth:`steps_per_round` counts them.

A novel party receives w and uses the run's k-shot recipe (:class:`GlobalModel` with ``finetune`` True), not
"a few α-steps": the recipe is what every other method's novel party gets (same optimizer, same step-count
selection by cross-validation on the shots, which may pick 0 steps), so the comparison measures the start w
that the meta-objective learned rather than a different adaptation rule; a :class:`FederatedStart` also has no
place to carry an adaptation rule of its own besides a constraint. With ``inner = "adam"`` and α = the recipe's
lr the recipe's first step is the inner step w was trained for; with ``inner = "sgd"`` a mismatch is left (w
trained to be good after one SGD α-step, then adapted by Adam), the price of the common protocol.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fusion.adapt.optimizer import Optimizer
from fusion.adapt.train_config import TrainConfig
from fusion.federated.base import FederatedAlgorithm, LocalBatch, State, Tensors, register, weighted_mean
from fusion.federated.fedavg import GlobalModel
from fusion.lazy import torch
from fusion.models.params import loss_and_grad
from fusion.models.spec import MLPSpec

INNER_STEPS = ("sgd", "adam")


@dataclass(frozen=True)
class PerFedAvgSettings:
    """``[federated.per_fedavg]`` keys."""

    alpha: float = 0.01  # inner (personalization) step size
    inner: str = "adam"  # the inner step: "sgd" (the paper's) or "adam" (Adam's first step, scale-free)
    beta: float | None = None  # outer step size of the run's optimizer; None: federated.lr
    hessian_free: bool = False  # add the Hessian-vector-product correction (finite difference of gradients)
    split: bool = True  # B1, B2 = disjoint random halves of the party's rows; False: both are all rows
    fd_radius: float = 1e-3  # distance of the finite-difference points from w (Hessian-free only)

    def __post_init__(self) -> None:
        if self.alpha < 0:
            raise ValueError(f"federated.per_fedavg.alpha must be >= 0, got {self.alpha}")
        if self.inner not in INNER_STEPS:
            raise ValueError(f"federated.per_fedavg.inner must be one of {list(INNER_STEPS)}, got {self.inner!r}")
        if self.hessian_free and self.inner != "sgd":
            raise ValueError('federated.per_fedavg.hessian_free needs inner = "sgd" (an Adam step has Jacobian ≈ I)')
        if self.beta is not None and not self.beta > 0:
            raise ValueError(f"federated.per_fedavg.beta must be > 0 (or unset: federated.lr), got {self.beta}")
        if not self.fd_radius > 0:
            raise ValueError(f"federated.per_fedavg.fd_radius must be > 0, got {self.fd_radius}")


def _halves(batch: LocalBatch) -> tuple[torch.Tensor, torch.Tensor]:
    """Per party, a random permutation of its rows cut in two: index tensors (n, ⌊N/2⌋), (n, N − ⌊N/2⌋)."""
    n_rows = batch.x.shape[1]
    perm = torch.as_tensor(np.stack([rng.permutation(n_rows) for rng in batch.rngs]), device=batch.x.device)
    return perm[:, : n_rows // 2], perm[:, n_rows // 2 :]


@register
class PerFedAvg(FederatedAlgorithm):
    name = "per_fedavg"
    settings = PerFedAvgSettings

    def steps_per_round(self) -> int:
        return self.cfg.local_steps * (4 if self.opts.hessian_free else 2)

    def local_update(self, down: Tensors, personal: Tensors | None, batch: LocalBatch) -> tuple[Tensors, None]:
        opts, spec, loss = self.opts, batch.spec, batch.loss
        cfg = batch.train
        outer = TrainConfig(cfg.steps, opts.beta or cfg.lr, decay=False, optimizer=cfg.optimizer)
        w = down["w"].expand(len(batch), -1).clone()
        steps = outer.steps if batch.x.shape[1] > 0 else 0
        opt, work1, work2 = Optimizer(outer, w, steps), {}, {}
        for _ in range(steps):
            if opts.split:
                (x1, y1), (x2, y2) = (batch.rows(idx) for idx in _halves(batch))
            else:
                (x1, y1), (x2, y2) = (batch.x, batch.y), (batch.x, batch.y)
            g1 = loss_and_grad(w, spec, x1, y1, loss, work1)[1]
            inner = w - opts.alpha * (g1 if opts.inner == "sgd" else g1 / (g1.abs() + 1e-8))
            grad = loss_and_grad(inner, spec, x2, y2, loss, work2)[1]
            if opts.hessian_free:
                norm = grad.norm(dim=1, keepdim=True).clamp_min(1e-12)
                step = grad * (opts.fd_radius / norm)
                plus = loss_and_grad(w + step, spec, x1, y1, loss, work1)[1]
                minus = loss_and_grad(w - step, spec, x1, y1, loss, work1)[1]
                grad = grad - opts.alpha * (plus - minus) * (norm / (2 * opts.fd_radius))
            opt.step(grad)
        return {"w": w}, None

    def aggregate(self, server: State, uploads: State, weights: np.ndarray, ids: np.ndarray) -> State:
        return {**server, "w": weighted_mean(uploads["w"], weights)}

    def novel(self, server: State, spec: MLPSpec) -> GlobalModel:
        return GlobalModel(server["w"], finetune=True)
