"""The GP meta-model's hyper-parameters (``[fusion.gp]``); the model itself is :mod:`fusion.metamodel`."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class GPConfig:
    """Hyper-parameters of the GP fit (all validated, all with working defaults)."""

    max_components: int = 32  # e: GP outputs (principal components of the parameters)
    explained_variance: float = 0.999  # keep components up to this share of variance
    inducing: int = 128  # inducing descriptors (all training descriptors when fewer)
    max_steps: int = 300  # Adam steps on the bound
    lr: float = 0.05
    tol: float = 1e-4  # stop when the bound improves less than this (relative) over 20 steps

    def __post_init__(self) -> None:
        if self.max_components < 1:
            raise ValueError(f"fusion.gp.max_components must be >= 1, got {self.max_components}")
        if not 0 < self.explained_variance <= 1:
            raise ValueError(f"fusion.gp.explained_variance must be in (0, 1], got {self.explained_variance}")
        if self.inducing < 1 or self.max_steps < 1:
            raise ValueError("fusion.gp.inducing and fusion.gp.max_steps must be >= 1")
        if not self.lr > 0 or self.tol < 0:
            raise ValueError("fusion.gp.lr must be > 0 and fusion.gp.tol >= 0")
