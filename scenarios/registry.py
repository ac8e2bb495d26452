"""Scenarios by name: adding one is one file and one line here."""

from __future__ import annotations

from dataclasses import fields
from typing import Any

from scenarios.base import Scenario
from scenarios.digits import DigitsOptions, DigitsScenario
from scenarios.digits_split import DigitsSplitOptions, DigitsSplitScenario
from scenarios.movielens import MovieLensOptions, MovieLensScenario
from scenarios.sine import SineDomains, SineOptions, SineUniform

# name -> (scenario class, options dataclass, default option overrides)
SCENARIOS: dict[str, tuple[type[Scenario], type, dict[str, Any]]] = {
    "sine-domains": (SineDomains, SineOptions, {}),
    "sine-uniform": (SineUniform, SineOptions, {"train_range": 5.0}),
    "digits": (DigitsScenario, DigitsOptions, {}),
    "digits-split": (DigitsSplitScenario, DigitsSplitOptions, {}),
    "movielens": (MovieLensScenario, MovieLensOptions, {}),
}
ALIASES = {"sine": "sine-domains"}


def canonical_name(name: str) -> str:
    name = ALIASES.get(name, name)
    if name not in SCENARIOS:
        known = sorted([*SCENARIOS, *ALIASES])
        raise ValueError(f"unknown scenario {name!r}; known scenarios: {', '.join(known)}")
    return name


def make_options(name: str, values: dict[str, Any]):
    """The scenario's options dataclass from a ``[scenario]`` table; unknown keys are an error."""
    _, options_cls, defaults = SCENARIOS[canonical_name(name)]
    allowed = {f.name for f in fields(options_cls)}
    unknown = sorted(set(values) - allowed)
    if unknown:
        raise ValueError(
            f"unknown key(s) scenario.{', scenario.'.join(unknown)}; allowed: {', '.join(sorted(allowed))}"
        )
    return options_cls(**{**defaults, **values})


def build(name: str, options) -> Scenario:
    cls, _, _ = SCENARIOS[canonical_name(name)]
    return cls(options)
