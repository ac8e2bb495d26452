"""Garbage among the parties: models whose function disagrees with what their task's neighbours compute.

A party can upload finite garbage (random weights, weights scaled ×100, sign-flipped weights, a model trained
on shuffled targets). Parameters alone cannot tell: independently trained nets differ in every coordinate.
Functions can. Each model's outputs on the unlabeled probe inputs are compared with the element-wise median
of the outputs of the models whose descriptors are nearest to its own (itself left out): a task's neighbours
compute similar functions, and a median of several is not moved by a few bad ones. A model is an outlier when
its discrepancy is far above the run's typical one on a log scale (median + ``threshold`` robust standard
deviations of log(discrepancy + its median)) and above an absolute floor. When the typical discrepancy is itself
above the floor, neighbours do not compute similar functions (too few parties for the spread of their tasks)
and nothing is flagged.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fusion.lazy import lazy, torch
from fusion.models.probe import probe_outputs
from fusion.models.spec import MLPSpec

spatial = lazy("scipy.spatial")


@dataclass(frozen=True)
class OutlierConfig:
    """``[fusion.outliers]`` keys: ``enabled``; ``neighbours`` compared with; ``threshold`` in robust standard
    deviations of log-discrepancy; ``floor``: discrepancies below it are never outliers (relative squared error
    for values, mean total-variation distance for class probabilities)."""

    enabled: bool = True
    neighbours: int = 10
    threshold: float = 4.0
    floor: float = 0.25

    def __post_init__(self) -> None:
        if self.neighbours < 1:
            raise ValueError(f"fusion.outliers.neighbours must be >= 1, got {self.neighbours}")
        if not self.threshold > 0:
            raise ValueError(f"fusion.outliers.threshold must be > 0, got {self.threshold}")
        if self.floor < 0:
            raise ValueError(f"fusion.outliers.floor must be >= 0, got {self.floor}")


def discrepancies(funcs: np.ndarray, descriptors: np.ndarray, neighbours: int, outputs: str) -> np.ndarray:
    """(n,) each function's distance to the median of its ``neighbours`` nearest (by standardized descriptor)."""
    n = len(funcs)
    d = np.asarray(descriptors, np.float64)
    d = (d - d.mean(0)) / np.where(d.std(0) > 0, d.std(0), 1.0)
    k = min(neighbours, n - 1)
    _, near = spatial.cKDTree(d).query(d, k=k + 1)  # no (n, n) distance matrix: thousands of parties stay cheap
    near = np.stack([row[row != i][:k] for i, row in enumerate(np.atleast_2d(near.reshape(n, -1)))])
    out = np.empty(n)
    for i in range(n):
        ref = np.median(funcs[near[i]], axis=0)
        if outputs == "logits":  # mean total-variation distance between class distributions
            out[i] = 0.5 * np.abs(funcs[i] - ref).sum(-1).mean()
        else:  # squared error relative to the reference's power
            out[i] = ((funcs[i] - ref) ** 2).mean() / max((ref**2).mean(), 1e-12)
    return out


def function_outliers(
    models: np.ndarray,
    spec: MLPSpec,
    probe: np.ndarray,
    descriptors: np.ndarray,
    outputs: str = "values",
    cfg: OutlierConfig | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """(bad (n,) bool, discrepancy (n,)) for ``models`` (n, n_params) with ``descriptors`` (n, d)."""
    cfg = cfg or OutlierConfig()
    if len(models) < 3 or not cfg.enabled:
        return np.zeros(len(models), bool), np.zeros(len(models))
    funcs = probe_outputs(models, spec, probe, chunk=256).double()
    funcs = torch.softmax(funcs, -1) if outputs == "logits" else funcs
    return outliers_of(funcs.numpy(), descriptors, outputs, cfg)


def outliers_of(
    funcs: np.ndarray, descriptors: np.ndarray, outputs: str = "values", cfg: OutlierConfig | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """:func:`function_outliers` from the models' outputs ``funcs`` (n, N, out) on the probe (class probabilities
    for logits), however they were computed (models of several families each through its own forward pass)."""
    cfg = cfg or OutlierConfig()
    n = len(funcs)
    if n < 3 or not cfg.enabled:
        return np.zeros(n, bool), np.zeros(n)
    score = discrepancies(funcs, descriptors, cfg.neighbours, outputs)
    finite = np.isfinite(score)
    typical = np.median(score[finite]) if finite.any() else 0.0
    if typical > cfg.floor:  # neighbours do not typically agree (too few parties for their tasks): no basis
        return ~finite, score
    log = np.log(score + max(typical, 1e-12))  # the typical discrepancy added: tiny ones do not spread the scale
    med = np.median(log[finite]) if finite.any() else 0.0
    mad = 1.4826 * np.median(np.abs(log[finite] - med)) if finite.any() else 0.0
    bad = ~finite | ((log > med + cfg.threshold * max(mad, 1e-6)) & (score > cfg.floor))
    return bad, score
