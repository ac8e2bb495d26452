"""``matched_average``: PFNM-style matching of hidden units to global atoms, then their average (no personalization).

Units of all models are matched to global atoms with :func:`fusion.matching.pfnm.match_models` (Bayesian
nonparametric, so the global model may have more units than one party's model); the atoms are averaged
(:func:`fusion.matching.pfnm.matched_average`) and the global model is cut back to the parties' width by keeping the
most popular atoms (:func:`fusion.matching.pfnm.to_width`). Every descriptor gets the same model.
"""

from __future__ import annotations

import numpy as np

from fusion.matching.alignment import align
from fusion.matching.pfnm import PFNMConfig, match_models, matched_average, to_width
from fusion.strategies.average import Constant
from fusion.strategies.base import FitContext, Strategy, register
from fusion.warm_start import WarmStarter


@register
class MatchedAverage(Strategy):
    """``[fusion.matched_average]`` sets the matching (paper defaults sigma = sigma0 = gamma = 1, 5 sweeps);
    single hidden layer only."""

    name = "matched_average"
    settings_key, settings_class = "matched_average", PFNMConfig

    def fit(self, models, descriptors, ctx: FitContext) -> WarmStarter:
        if len(ctx.spec.hidden) != 1:  # CNNs, deep MLPs: align layer by layer, then average
            aligned = align(models, ctx.spec, ctx.config.align_iters, ctx.solve_many).aligned
            return Constant(np.asarray(aligned, np.float64).mean(axis=0))
        specs = [ctx.spec] * len(models)
        matching = match_models(list(models), specs, self.settings, ctx.solve_rect)
        fused = matched_average(list(models), specs, matching)[None]
        width = ctx.spec.widths[1]
        return Constant(to_width(fused, matching.global_spec, width, importance=matching.popularity)[0])
