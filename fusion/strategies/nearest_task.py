"""``nearest_task``: copy the pretrained model whose descriptor is closest (standardized Euclidean).

With models of different widths it copies the nearest model at whatever width it has (embedded at the run's
widest spec, :mod:`fusion.models.widths`): the party fine-tunes that model, not one of its own width. With parties of
mixed architecture families it copies the nearest model of the family the party receives.
"""

from __future__ import annotations

import numpy as np

from fusion.lazy import torch
from fusion.strategies.base import FitContext, Strategy, register
from fusion.strategies.by_family import each_family
from fusion.warm_start import WarmStarter


class Lookup(WarmStarter):
    kind = "nearest_task"

    def __init__(self, models: np.ndarray, descriptors: np.ndarray) -> None:
        self.models = np.asarray(models, dtype=np.float32)
        self.descriptors = np.asarray(descriptors, dtype=np.float64)
        std = self.descriptors.std(axis=0)
        self.scale = np.where(std > 1e-12, std, 1.0)  # a constant dimension is left unscaled

    def nearest(self, descriptors: np.ndarray, other: bool = False) -> np.ndarray:
        """Index of the closest training task for each row of ``descriptors`` (m, d): (m,). ``other``: the closest
        whose descriptor differs from the row's (a training party's own is then left out)."""
        q = np.asarray(descriptors, dtype=np.float64) / self.scale
        t = self.descriptors / self.scale
        d2 = (q**2).sum(1)[:, None] + (t**2).sum(1)[None, :] - 2 * q @ t.T
        if other:
            same = np.isclose(np.asarray(descriptors, np.float64)[:, None, :], self.descriptors[None]).all(axis=2)
            d2 = np.where(same, np.inf, d2)
        return d2.argmin(axis=1)

    def predict(self, descriptors: np.ndarray) -> np.ndarray:
        return self.models[self.nearest(descriptors)]

    def predict_participating(self, descriptors: np.ndarray) -> np.ndarray:
        """The nearest model of another descriptor: a training party's own model is ``local``, not a lookup."""
        return self.models[self.nearest(descriptors, other=True)]

    def predict_widths(self, descriptors: np.ndarray, widths: np.ndarray) -> np.ndarray:
        return self.predict(descriptors)

    def export(self) -> dict:
        return {"models": torch.tensor(self.models), "descriptors": torch.tensor(self.descriptors)}

    @classmethod
    def restore(cls, state: dict) -> Lookup:
        return cls(state["models"].numpy(), state["descriptors"].numpy())


@register
class NearestTask(Strategy):
    name = "nearest_task"
    mixed_widths = True
    mixed_families = True

    def fit(self, models, descriptors, ctx: FitContext) -> WarmStarter:
        return Lookup(models, descriptors)

    def fit_widths(self, models, descriptors, ctx: FitContext) -> WarmStarter:
        """The nearest model at whatever width it has (embedded at the widest)."""
        return Lookup(models, descriptors)

    def fit_mixed(self, models, descriptors, ctx: FitContext) -> WarmStarter:
        """The nearest model of the target family."""
        return each_family(self, models, descriptors, ctx)
