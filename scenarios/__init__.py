"""Task families: descriptors, each party's private data, the model, the loss and the metric."""

from scenarios.base import (
    Scenario,
    Stream,
    model_layout,
    party_descriptors,
    party_families,
    party_rng,
    party_torch_generator,
    party_widths,
    training_data,
    with_hidden_width,
    with_spec,
)
from scenarios.registry import SCENARIOS, build, canonical_name, make_options

__all__ = [
    "SCENARIOS",
    "Scenario",
    "Stream",
    "build",
    "canonical_name",
    "make_options",
    "party_descriptors",
    "model_layout",
    "party_families",
    "party_rng",
    "party_torch_generator",
    "party_widths",
    "training_data",
    "with_hidden_width",
    "with_spec",
]
