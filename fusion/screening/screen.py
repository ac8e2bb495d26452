"""Screening: which pretrained models enter fusion, and a typed record of each one left out.

One rule, applied before any strategy fits: a model whose parameters are not all finite is quarantined; fewer
than two finite models is an error (:class:`TooFewModels`); then, when the run has probe inputs and
``[fusion.outliers]`` is on, a model whose function on the probe disagrees with its tasks' neighbours
(:mod:`fusion.outliers`) is quarantined too, unless that would leave fewer than two (the detector then has nothing
to compare with, and nothing is flagged). Each model's function is computed by its own architecture
(:meth:`fusion.layout.ModelLayout.family_groups`).

    >>> import numpy as np
    >>> from fusion.layout import ModelLayout
    >>> from fusion.spec import MLPSpec
    >>> models = np.zeros((3, MLPSpec((1, 2, 1)).n_params), np.float32)
    >>> models[1, 0] = np.nan
    >>> out = screen(np.array([4, 5, 6]), models, np.zeros((3, 1)), ModelLayout(MLPSpec((1, 2, 1))), seed=0)
    >>> out.kept.tolist(), [str(q) for q in out.quarantined]
    ([0, 2], ['non-finite parameters'])
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import Enum

import numpy as np

from fusion.layout import ModelLayout
from fusion.lazy import torch
from fusion.models.probe import probe_outputs
from fusion.screening.outliers import OutlierConfig, outliers_of
from fusion.screening.quarantine import finite_models


class Reason(Enum):
    """Why a model is left out of fusion (the value is the text of ``quarantined.csv``)."""

    NON_FINITE = "non-finite parameters"
    OUTLIER = "function-space outlier"


@dataclass(frozen=True)
class Quarantined:
    """One training party left out of fusion. ``discrepancy`` and ``neighbours`` (outliers only): its function's
    distance to the median of its ``neighbours`` nearest tasks' functions (:func:`fusion.outliers.discrepancies`)."""

    party_id: int
    reason: Reason
    discrepancy: float = math.nan
    neighbours: int = 0

    def __str__(self) -> str:
        if self.reason is Reason.OUTLIER:
            return f"{self.reason.value} (discrepancy {self.discrepancy:.3g} from its {self.neighbours} nearest tasks)"
        return self.reason.value


class TooFewModels(ValueError):
    """Fewer than two pretrained models are finite: there is nothing to fuse."""


@dataclass(frozen=True)
class Screened:
    """``kept``: positions (k,) of the models that enter fusion, in their input order; ``quarantined``: the others'
    records in party-id order."""

    kept: np.ndarray
    quarantined: tuple[Quarantined, ...]


def function_values(models: np.ndarray, groups, probe: np.ndarray, outputs: str) -> np.ndarray:
    """Every row of ``models`` (n, D) evaluated on ``probe`` (N, fan_in) by its own architecture (``groups``:
    (rows, spec) pairs, :meth:`ModelLayout.family_groups`): (n, N, fan_out) float64, class probabilities for
    logits."""
    out = None
    for rows, spec in groups:
        funcs = probe_outputs(np.ascontiguousarray(models[rows][:, : spec.n_params]), spec, probe, chunk=256).double()
        funcs = (torch.softmax(funcs, -1) if outputs == "logits" else funcs).numpy()
        if out is None:
            out = np.zeros((len(models), *funcs.shape[1:]))
        out[rows] = funcs
    return out


def screen(
    ids: np.ndarray,
    models: np.ndarray,
    descriptors: np.ndarray,
    layout: ModelLayout,
    seed: int,
    probe: np.ndarray | None = None,
    outputs: str = "values",
    cfg: OutlierConfig | None = None,
) -> Screened:
    """Screen the pretrained ``models`` (n, layout.spec.n_params) of training parties ``ids`` (n,) with
    ``descriptors`` (n, d). ``probe`` None: no function-space check. Raises :class:`TooFewModels`."""
    cfg = cfg or OutlierConfig()
    ids = np.asarray(ids, np.int64)
    finite = finite_models(models)
    if finite.sum() < 2:
        raise TooFewModels(f"only {int(finite.sum())} of {len(ids)} pretrained models are finite; fusion needs 2")
    records = [Quarantined(int(i), Reason.NON_FINITE) for i in ids[~finite]]
    kept = np.flatnonzero(finite)
    if probe is not None and cfg.enabled:
        funcs = function_values(models[kept], layout.family_groups(seed, ids[kept]), probe, outputs)
        bad, score = outliers_of(funcs, descriptors[kept], outputs, cfg)
        if len(kept) - bad.sum() < 2:
            bad[:] = False
        records += [
            Quarantined(int(i), Reason.OUTLIER, float(s), cfg.neighbours) for i, s in zip(ids[kept][bad], score[bad])
        ]
        kept = kept[~bad]
    return Screened(kept, tuple(sorted(records, key=lambda q: q.party_id)))
