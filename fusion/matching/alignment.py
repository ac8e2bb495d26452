"""Neuron matching: per-model linear sum assignments of hidden units to a canonical template.

Independently trained nets compute the same function with their hidden units in any order, so
before anything is averaged or regressed, each model's units are permuted to line up with a
shared template. Each model's assignment is an independent problem: :func:`align` takes a
``solve_many`` callable so a caller (the fusion actor) can spread them over processes.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from fusion.lazy import lazy
from fusion.models.params import permute, unit_features
from fusion.models.spec import MLPSpec

optimize = lazy("scipy.optimize")

SolveMany = Callable[[np.ndarray, np.ndarray], np.ndarray]


def solve_assignment(cost: np.ndarray) -> np.ndarray:
    """Minimum-cost assignment of a square cost (slots, units): ``perm[slot] = unit``."""
    rows, cols = optimize.linear_sum_assignment(cost)
    perm = np.empty(cost.shape[0], dtype=np.int64)
    perm[rows] = cols
    return perm


def unit_costs(units: np.ndarray, template: np.ndarray) -> np.ndarray:
    """Squared distances between template slots and model units.

    ``units`` (P, H, d), ``template`` (H, d) or (P, H, d) -> costs (P, H slots, H units).
    """
    costs = np.matmul(template, units.transpose(0, 2, 1))  # (P, H, H) cross terms, one BLAS product per model
    costs *= -2
    costs += (template**2).sum(-1)[..., :, None]
    costs += (units**2).sum(-1)[:, None, :]
    return costs


def solve_many_serial(units: np.ndarray, template: np.ndarray) -> np.ndarray:
    """Assign each model's units to the template, one model after the other: (P, H) perms."""
    costs = unit_costs(units, template)
    return np.stack([solve_assignment(c) for c in costs]) if len(costs) else np.zeros((0, units.shape[1]), np.int64)


@dataclass(frozen=True)
class Alignment:
    """``perms[l]`` (P, H_l) per hidden layer; ``aligned`` (P, n_params) = the permuted models."""

    perms: list[np.ndarray]
    aligned: np.ndarray
    iterations: int


def identity_perms(n: int, spec: MLPSpec) -> list[np.ndarray]:
    return [np.tile(np.arange(h), (n, 1)) for h in spec.hidden]


def compose(first: np.ndarray, then: np.ndarray) -> np.ndarray:
    """The permutation that applies ``first`` and then ``then``, both (P, H)."""
    return np.take_along_axis(first, then, axis=1)


def align_to(
    models: np.ndarray,
    spec: MLPSpec,
    template: np.ndarray,
    perms: list[np.ndarray] | None = None,
    solve_many: SolveMany = solve_many_serial,
) -> list[np.ndarray]:
    """One pass over the hidden layers: permute each model towards ``template`` (n_params,) or (P, n_params).

    Layer by layer, so a layer's incoming weights are compared in the canonical order of the
    layer below. Returns the new ``perms`` (relative to the original ``models``).
    """
    perms = identity_perms(len(models), spec) if perms is None else [p.copy() for p in perms]
    template = np.asarray(template, dtype=np.float32)
    template = template[None] if template.ndim == 1 else template
    for layer in range(len(spec.hidden)):
        current = permute(models, spec, perms)
        units = unit_features(current, spec, layer)
        target = unit_features(template, spec, layer)
        step = solve_many(units, target[0] if len(target) == 1 else target)
        perms[layer] = compose(perms[layer], step)
    return perms


def align(
    models: np.ndarray,
    spec: MLPSpec,
    max_iters: int = 20,
    solve_many: SolveMany = solve_many_serial,
    init: int | None = None,
) -> Alignment:
    """Align ``models`` (P, n_params) to their own mean, iterated until no assignment changes.

    The first template is the model with the median parameter norm (a choice that does not
    depend on the order of the parties), then the mean of the aligned models.
    """
    models = np.asarray(models, dtype=np.float32)
    n = len(models)
    if n == 0 or not spec.hidden:
        return Alignment(identity_perms(n, spec), models.copy(), 0)
    if init is None:
        norms = np.linalg.norm(models, axis=1)
        init = int(np.argsort(norms, kind="stable")[n // 2])
    template = models[init]
    perms = identity_perms(n, spec)
    it = 0
    for it in range(1, max_iters + 1):
        new = align_to(models, spec, template, perms, solve_many)
        changed = any((a != b).any() for a, b in zip(new, perms))
        perms = new
        template = permute(models, spec, perms).mean(axis=0)
        if not changed and it > 1:
            break
    return Alignment(perms, permute(models, spec, perms), it)
