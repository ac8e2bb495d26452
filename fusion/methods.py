"""The methods compared in a run: a fusion strategy (or ``cold_start``, a random init), or a federated algorithm.

``fusion`` is the configured strategy, ``fusion_noalign`` the same strategy with alignment off;
the baselines are strategies of their own name. "One-shot" methods warm start from the pretrained models;
federated methods (:data:`fusion.federated.ALGORITHMS`, e.g. ``fedavg_ft``) train in rounds on the same parties.
"""

from __future__ import annotations

from fusion.federated import ALGORITHMS
from fusion.strategies import STRATEGIES, FusionConfig, Strategy

DEFAULT_METHODS = ("fusion", "fusion_noalign", "nearest_task", "average", "cold_start")
COLD_START = "cold_start"


def known_methods() -> list[str]:
    return sorted({"fusion", "fusion_noalign", COLD_START, *STRATEGIES, *ALGORITHMS})


def is_federated(method: str) -> bool:
    """Whether ``method`` is an iterative federated algorithm (trained in rounds, not fused from pretraining)."""
    return method in ALGORITHMS


def alignable_strategies() -> list[str]:
    return sorted(name for name, cls in STRATEGIES.items() if cls.alignable)


def default_methods(strategy: str) -> tuple[str, ...]:
    """The methods a run compares when none are named: ``fusion_noalign`` only where the strategy aligns."""
    if STRATEGIES[strategy].alignable:
        return DEFAULT_METHODS
    return tuple(m for m in DEFAULT_METHODS if m != "fusion_noalign")


def make_strategy(name: str, cfg: FusionConfig, aligned: bool = True) -> Strategy:
    """The one way to build a strategy: its own settings from ``cfg.settings[<settings_key>]``, and
    ``aligned=False`` only for strategies that align (:attr:`Strategy.alignable`)."""
    cls = STRATEGIES[name]
    if not aligned and not cls.alignable:
        raise ValueError(
            f"method fusion_noalign needs a fusion strategy that aligns ({', '.join(alignable_strategies())}); "
            f"strategy {name!r} does not: drop fusion_noalign from the methods"
        )
    return cls(cfg.settings.get(cls.settings_key) if cls.settings_key else None, aligned=aligned)


def strategy_for(method: str, cfg: FusionConfig) -> Strategy | None:
    """The strategy that produces ``method``'s warm starts (None for ``cold_start`` and federated methods)."""
    if method == COLD_START or is_federated(method):
        return None
    if method in ("fusion", "fusion_noalign"):
        return make_strategy(cfg.strategy, cfg, aligned=method == "fusion")
    if method in STRATEGIES:
        return make_strategy(method, cfg)
    raise ValueError(f"unknown method {method!r}; known: {', '.join(known_methods())}")
