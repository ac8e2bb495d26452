"""The GP meta-model's hyper-parameters (``[fusion.gp]``); the model itself is :mod:`fusion.metamodels.gp`."""

from __future__ import annotations

from dataclasses import dataclass

KERNELS = ("rbf", "rbf+linear")


@dataclass(frozen=True)
class GPConfig:
    """Hyper-parameters of the GP fit (all validated, all with working defaults)."""

    max_components: int = 32  # e: GP outputs (principal components of the parameters)
    explained_variance: float = 0.999  # keep components up to this share of variance
    inducing: int = 128  # inducing descriptors (all training descriptors when fewer)
    max_steps: int = 300  # Adam steps on the bound
    lr: float = 0.05
    tol: float = 1e-4  # stop when the bound improves less than this (relative) over 20 steps
    kernel: str = "rbf"  # "rbf" (ARD) or "rbf+linear" (adds a linear kernel: near-linear descriptor-to-model maps)

    def __post_init__(self) -> None:
        if self.max_components < 1:
            raise ValueError(f"fusion.gp.max_components must be >= 1, got {self.max_components}")
        if not 0 < self.explained_variance <= 1:
            raise ValueError(f"fusion.gp.explained_variance must be in (0, 1], got {self.explained_variance}")
        if self.inducing < 1 or self.max_steps < 1:
            raise ValueError("fusion.gp.inducing and fusion.gp.max_steps must be >= 1")
        if self.kernel not in KERNELS:
            raise ValueError(f"fusion.gp.kernel must be one of {', '.join(KERNELS)}, got {self.kernel!r}")
        if not self.lr > 0 or self.tol < 0:
            raise ValueError("fusion.gp.lr must be > 0 and fusion.gp.tol >= 0")
