"""``average``: the plain parameter average of all pretrained models (no alignment, no personalization).

With models of different widths (:meth:`Average.fit_widths`) a plain average is not defined: ``average`` is then the
PFNM matched average cut to each party's width (:mod:`fusion.strategies.mixed_widths`). With parties of mixed
architecture families it is the average of the models of the family the party receives.
"""

from __future__ import annotations

import numpy as np

from fusion.lazy import torch
from fusion.strategies.base import FitContext, Strategy, register
from fusion.strategies.by_family import each_family
from fusion.strategies.mixed_widths import fit_width_average
from fusion.warm_start import WarmStarter


class Constant(WarmStarter):
    """The same model for every descriptor."""

    kind = "constant"

    def __init__(self, params: np.ndarray) -> None:
        self.params = np.asarray(params, dtype=np.float32)

    def predict(self, descriptors: np.ndarray) -> np.ndarray:
        return np.tile(self.params, (len(descriptors), 1))

    def export(self) -> dict:
        return {"params": torch.tensor(self.params)}

    @classmethod
    def restore(cls, state: dict) -> Constant:
        return cls(state["params"].numpy())


@register
class Average(Strategy):
    name = "average"
    mixed_widths = True
    mixed_families = True

    def fit(self, models, descriptors, ctx: FitContext) -> WarmStarter:
        return Constant(np.asarray(models, dtype=np.float64).mean(axis=0))

    def fit_widths(self, models, descriptors, ctx: FitContext) -> WarmStarter:
        """The PFNM matched average, cut to each party's width."""
        return fit_width_average(models, ctx)

    def fit_mixed(self, models, descriptors, ctx: FitContext) -> WarmStarter:
        """The average of the target family's own models."""
        return each_family(self, models, descriptors, ctx)
