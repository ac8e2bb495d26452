"""Models' outputs on probe inputs: what compares models by their functions, whatever their architectures."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from fusion.lazy import torch
from fusion.models.params import forward
from fusion.models.spec import Spec


def probe_outputs(
    models: np.ndarray, families: Spec | Sequence[tuple[Spec, np.ndarray]], probe: np.ndarray, chunk: int = 64
) -> torch.Tensor:
    """Every model's outputs on ``probe`` (N, fan_in): (n, N, fan_out) float32, computed without gradients.

    ``models`` (n, width) float32: a stack of one architecture ``families``; or a packed stack of several
    (:func:`fusion.strategies.by_family.pack`: each row its family's flat vector, zero-padded), ``families`` then
    giving each family's spec and the positions of its rows, each family through its own forward pass.
    ``chunk``: models per forward pass.
    """
    groups = [(families, np.arange(len(models)))] if isinstance(families, Spec) else families
    x = torch.as_tensor(np.asarray(probe, np.float32))
    out = None
    with torch.no_grad():
        for spec, rows in groups:
            own = np.ascontiguousarray(np.asarray(models)[rows, : spec.n_params], dtype=np.float32)
            pred = torch.cat([forward(torch.as_tensor(own[i : i + chunk]), spec, x) for i in range(0, len(own), chunk)])
            if out is None:
                out = torch.zeros(len(models), *pred.shape[1:])
            out[torch.as_tensor(rows, dtype=torch.long)] = pred
    return out
