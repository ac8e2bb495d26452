"""Fusion strategies by name. Importing this package registers them all."""

from fusion.strategies import average, gp, matched_average, matched_gp, nearest_task  # noqa: F401  (registration)
from fusion.strategies.base import STRATEGIES, FitContext, FusionConfig, Strategy, WarmStarter, register

__all__ = ["STRATEGIES", "FitContext", "FusionConfig", "Strategy", "WarmStarter", "register"]
