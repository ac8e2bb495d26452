"""The optimizer that the training loops of fusion/ share: Adam or SGD on one tensor, updated in place.

Pretraining, fine-tuning and local rounds (:func:`fusion.adapt.training.train`), the read-out refit, the HtFL
feature training and server steps, Per-FedAvg's outer step, MAML's outer loop and the GP and MFPL meta-model fits
all step an :class:`Optimizer`.
"""

from __future__ import annotations

import math

from fusion.adapt.train_config import TrainConfig
from fusion.lazy import torch
from fusion.models import kernels


class Optimizer:
    """``torch.optim.Adam`` / ``SGD`` updates (no weight decay) of one tensor ``weights``, in place, with the cosine
    schedule of ``cfg`` over ``steps`` steps (``cfg.decay``; else the constant ``cfg.lr``).

    The same arithmetic as torch.optim with ``CosineAnnealingLR``'s closed form, as a few in-place
    ops per step: torch.optim's per-step Python costs more than the update itself for these small
    stacks of models, and its first use in a process imports ``torch._dynamo`` (~1.5 s).
    ``fused``: Adam on a contiguous CPU float32 tensor takes the compiled update of :mod:`fusion.models.kernels`
    (one pass; equal to torch's ops within rounding, not bit for bit); ``fused=False`` keeps torch's ops: at a
    constant lr, bit for bit the updates of ``torch.optim.Adam`` / ``SGD``.

    >>> w = torch.zeros(3)
    >>> opt = Optimizer(TrainConfig(lr=0.1, decay=False), w, steps=1)
    >>> opt.step(torch.tensor([1.0, -2.0, 0.0]))
    >>> [round(v, 4) for v in w.tolist()]  # Adam's first step: about lr against the sign of each gradient
    [-0.1, 0.1, 0.0]
    """

    def __init__(self, cfg: TrainConfig, weights: torch.Tensor, steps: int, fused: bool = True) -> None:
        self.cfg, self.weights, self.steps, self.t = cfg, weights, steps, 0
        if cfg.optimizer == "adam":
            self.m, self.v = torch.zeros_like(weights), torch.zeros_like(weights)
            self.denom = torch.empty_like(weights)  # kept: fresh pages each step cost more than the update
        self.fused = fused and cfg.optimizer == "adam" and kernels.adam_applies(weights)

    def lr(self) -> float:
        if not (self.cfg.decay and self.steps):
            return self.cfg.lr
        low = self.cfg.lr / 10
        return low + (self.cfg.lr - low) * (1 + math.cos(math.pi * self.t / self.steps)) / 2

    def step(self, grad: torch.Tensor) -> None:
        """One update of ``weights`` along ``grad`` (its shape)."""
        lr, self.t = self.lr(), self.t + 1
        if self.cfg.optimizer == "sgd":
            self.weights.add_(grad, alpha=-lr)
            return
        beta1, beta2, eps = 0.9, 0.999, 1e-8
        if self.fused and grad.is_contiguous():
            bc2 = math.sqrt(1 - beta2**self.t)
            kernels.adam_step(self.weights, grad, self.m, self.v, lr / (1 - beta1**self.t), beta1, beta2, bc2, eps)
            return
        self.m.lerp_(grad, 1 - beta1)
        self.v.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
        # torch.optim's order. The clamp changes no result (sqrt(tiny) / the bias correction is far below half an ulp
        # of eps) but keeps exact zeros (gradients of units that are off at every shot) out of sqrt: MKL's sqrt is
        # ~7x slower on a stack with 30% zeros (k-shot fine-tuning's folds).
        v = torch.clamp_min(self.v, torch.finfo(self.v.dtype).tiny, out=self.denom)
        denom = v.sqrt_().div_(math.sqrt(1 - beta2**self.t)).add_(eps)
        self.weights.addcdiv_(self.m, denom, value=-lr / (1 - beta1**self.t))
