"""Batched training of many independent models as one tensor program.

Every party's loss depends only on its own slice of the stack, and Adam is element-wise, so
training ``P`` models together gives each one exactly the updates it would get alone.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from fusion.params import forward
from fusion.spec import MLPSpec

OPTIMIZERS = {"adam": torch.optim.Adam, "sgd": torch.optim.SGD}
LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (pred (P,N,out), y) -> (P,)


@dataclass(frozen=True)
class TrainConfig:
    """Full-batch ``optimizer`` (adam or sgd): ``steps`` steps at ``lr`` (cosine-decayed to lr/10 when ``decay``)."""

    steps: int = 1000
    lr: float = 0.01
    decay: bool = True
    optimizer: str = "adam"

    def __post_init__(self) -> None:
        if self.steps < 0:
            raise ValueError(f"steps must be >= 0, got {self.steps}")
        if not self.lr > 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {sorted(OPTIMIZERS)}, got {self.optimizer!r}")


def train(
    params: torch.Tensor,
    spec: MLPSpec,
    x: torch.Tensor,
    y: torch.Tensor,
    loss_fn: LossFn,
    cfg: TrainConfig,
) -> torch.Tensor:
    """Train a stack ``params`` (P, n_params) on ``x`` (P, N, in), ``y`` (P, N, ...); returns the new stack."""
    weights = params.detach().clone().requires_grad_(True)
    if cfg.steps == 0 or x.shape[1] == 0:
        return weights.detach()
    opt = OPTIMIZERS[cfg.optimizer]([weights], lr=cfg.lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, cfg.steps, eta_min=cfg.lr / 10) if cfg.decay else None
    for _ in range(cfg.steps):
        opt.zero_grad(set_to_none=True)
        loss_fn(forward(weights, spec, x), y).sum().backward()
        opt.step()
        if sched is not None:
            sched.step()
    return weights.detach()
