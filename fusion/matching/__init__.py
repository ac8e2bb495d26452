"""Neuron matching: permutations of hidden units to a canonical template (:mod:`~fusion.matching.alignment`, one
width) and Bayesian nonparametric matching of nets of different widths (:mod:`~fusion.matching.pfnm`)."""

from fusion.matching.alignment import Alignment, SolveMany, align, align_to, solve_assignment, solve_many_serial
from fusion.matching.pfnm import (
    Matching,
    PFNMConfig,
    SolveRect,
    expand,
    match_models,
    matched_average,
    solve_rect_serial,
    to_width,
)

__all__ = [
    "Alignment",
    "Matching",
    "PFNMConfig",
    "SolveMany",
    "SolveRect",
    "align",
    "align_to",
    "expand",
    "match_models",
    "matched_average",
    "solve_assignment",
    "solve_many_serial",
    "solve_rect_serial",
    "to_width",
]
