"""The MFPL meta-model's settings (``[fusion.mfpl]``); the model itself is :mod:`fusion.metamodels.mfpl`."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class MFPLConfig:
    """``[fusion.mfpl]`` keys: sizes, schedule and sampling of the MFPL meta-model fit."""

    base_dim: int = 4  # d0: size of the base component w_0
    task_dim: int = 16  # e: GP coordinates of the task component w_i
    hidden: int = 128  # decoder hidden width
    inducing: int = 64  # m: inducing descriptors (all training descriptors when fewer)
    max_steps: int = 2000  # Adam steps on the ELBO per alternation (cap)
    lr: float = 0.005
    tol: float = 1e-3  # stop when the windowed mean ELBO improves less than this (relative)
    window: int = 100  # steps per window of the convergence check
    samples: int = 4  # reparameterized samples per step (and for the assignment costs)
    alternations: int = 3  # ELBO fit <-> per-model assignment rounds (stops early when no assignment changes)
    min_var: float = 1e-3  # floor of the decoded variance (standardized units): no collapse onto a few parameters

    def __post_init__(self) -> None:
        for key in ("base_dim", "task_dim", "hidden", "inducing", "max_steps", "window", "samples", "alternations"):
            if getattr(self, key) < 1:
                raise ValueError(f"fusion.mfpl.{key} must be >= 1, got {getattr(self, key)}")
        if not self.lr > 0:
            raise ValueError(f"fusion.mfpl.lr must be > 0, got {self.lr}")
        if self.tol < 0:
            raise ValueError(f"fusion.mfpl.tol must be >= 0, got {self.tol}")
        if not self.min_var > 0:
            raise ValueError(f"fusion.mfpl.min_var must be > 0, got {self.min_var}")
