"""Quarantine: pretrained models whose parameters are not all finite are left out of fusion."""

from __future__ import annotations

import numpy as np


def finite_models(models: np.ndarray) -> np.ndarray:
    """Which rows of ``models`` (n, n_params) are usable: a bool mask (n,), False where any value is NaN or Inf."""
    return np.isfinite(np.asarray(models)).all(axis=1)
