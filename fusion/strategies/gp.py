"""``gp``: align hidden units to a canonical order, then a sparse GP from descriptors to parameters."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from fusion.lazy import lazy
from fusion.matching.alignment import align
from fusion.strategies.base import FitContext, Strategy, register
from fusion.warm_start import WarmStarter

if TYPE_CHECKING:
    from fusion.metamodels.gp import GPMetaModel

metamodel = lazy("fusion.metamodels.gp")  # gpytorch: imported when a strategy fits or restores


class GPWarmStarter(WarmStarter):
    kind = "gp"

    def __init__(self, meta: GPMetaModel, align_iterations: int) -> None:
        self.meta = meta
        self.align_iterations = align_iterations

    def predict(self, descriptors: np.ndarray) -> np.ndarray:
        return self.meta.predict(descriptors)

    def export(self) -> dict:
        return {"meta": self.meta.state, "align_iterations": self.align_iterations}

    @classmethod
    def restore(cls, state: dict) -> GPWarmStarter:
        return cls(metamodel.GPMetaModel(state["meta"]), state["align_iterations"])

    def summary(self) -> dict:
        return {
            "align_iterations": self.align_iterations,
            "objective": self.meta.objective[-1],
            "gp_steps": len(self.meta.objective),
        }


@register
class GPFusion(Strategy):
    """With ``aligned=False`` this is the ``fusion_noalign`` ablation: the same GP on raw parameters."""

    name = "gp"
    alignable = True

    def fit(self, models, descriptors, ctx: FitContext) -> WarmStarter:
        iterations = 0
        if self.aligned:
            alignment = align(models, ctx.spec, ctx.config.align_iters, ctx.solve_many)
            models, iterations = alignment.aligned, alignment.iterations
        meta = metamodel.GPMetaModel.fit(models, descriptors, ctx.config.gp, seed=ctx.seed)
        return GPWarmStarter(meta, iterations)
