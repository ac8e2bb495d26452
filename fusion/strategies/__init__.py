"""Fusion strategies by name. Importing this package registers them all."""

from fusion.strategies import (  # noqa: F401  (registration)
    average,
    by_family,
    gp,
    gp_refit,
    maml,
    matched_average,
    matched_gp,
    mfpl,
    mfpl_refit,
    nearest_task,
)
from fusion.strategies.base import STRATEGIES, FitContext, FusionConfig, Strategy, register

__all__ = ["STRATEGIES", "FitContext", "FusionConfig", "Strategy", "register"]
