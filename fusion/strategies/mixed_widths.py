"""Fusion of parties of different hidden widths: the warm starters of ``gp_refit`` and ``average`` for them.

In a run with ``widths`` every model arrives embedded at the widest spec (:mod:`fusion.models.widths`) next to its own
width (``FitContext.widths``). Matching uses PFNM (:mod:`fusion.matching.pfnm`, ``FusionConfig.pfnm``) on the models at
their own widths, once per fit (shared through ``FitContext.cache``).

- ``gp_refit``: :func:`fit_width_gp`, the GP over the PFNM-expanded parameters (the global model, one canonical
  order) of ``matched_gp`` (:class:`fusion.strategies.matched_gp.MatchedGPWarmStarter`), gives the init, cut to the
  width the party asks for (:func:`fusion.matching.pfnm.to_width`, most popular atoms, outgoing weights refit by least
  squares to the uncut model's outputs on the probe inputs); ``gp_refit``'s
  ``RefitWarmStarter`` trains it at that width to the output GP's function, as for one width. Without alignment
  (``fusion_noalign``) the parameter GP regresses the embedded models as they are.
- ``average``: the PFNM matched average (:func:`fusion.matching.pfnm.matched_average`) cut to the party's width, its
  outgoing weights refit by least squares to the global average's outputs on the probe inputs.
- ``nearest_task`` needs nothing new: the nearest model is copied at whatever width it has.
"""

from __future__ import annotations

import numpy as np

from fusion.lazy import lazy, torch
from fusion.matching.pfnm import Matching, expand, match_models, matched_average
from fusion.models.spec import MLPSpec, spec_from_state, spec_state
from fusion.models.widths import at_width, own_width
from fusion.strategies.base import FitContext
from fusion.strategies.matched_gp import MatchedGPWarmStarter, cut_to_widths
from fusion.warm_start import WarmStarter

metamodel = lazy("fusion.metamodels.gp")  # gpytorch: imported when a strategy fits or restores


def matched(models: np.ndarray, ctx: FitContext) -> tuple[list[np.ndarray], list[MLPSpec], Matching]:
    """The models at their own widths, their specs and their PFNM matching (computed once per fit)."""
    if ctx.widths is None:
        raise ValueError("matched() needs FitContext.widths")
    if "pfnm" not in ctx.cache:
        specs = [at_width(ctx.spec, w) for w in ctx.widths]
        own = [own_width(m[None], ctx.spec, w)[0] for m, w in zip(models, ctx.widths)]
        ctx.cache["pfnm"] = (own, specs, match_models(own, specs, ctx.config.pfnm, ctx.solve_rect))
    return ctx.cache["pfnm"]


def fit_width_gp(models: np.ndarray, descriptors: np.ndarray, ctx: FitContext, aligned: bool) -> MatchedGPWarmStarter:
    """The init of ``gp_refit`` for models (n, ctx.spec.n_params) of widths ``ctx.widths`` (n,): the GP over the PFNM
    global model (without alignment: over the models as they are embedded at ``ctx.spec``), cut to each party's
    width with its outgoing weights refit on the probe inputs."""
    if aligned:
        own, specs, matching = matched(models, ctx)
        stack, param_spec, popularity = expand(own, specs, matching), matching.global_spec, matching.popularity
    else:
        stack, param_spec, popularity = models, ctx.spec, None
    param_gp = metamodel.GPMetaModel.fit(stack, descriptors, ctx.config.gp, seed=ctx.seed)
    probe = np.array(ctx.probe, np.float32)
    return MatchedGPWarmStarter(param_gp, param_spec, popularity, ctx.spec.widths[1], probe)


class WidthAverage(WarmStarter):
    """One global model at ``global_spec``, cut to the width each party asks for and embedded at ``spec``."""

    kind = "width_average"

    def __init__(
        self, params: np.ndarray, global_spec: MLPSpec, popularity: np.ndarray, spec: MLPSpec, refit_x: np.ndarray
    ) -> None:
        self.params, self.global_spec, self.spec = np.asarray(params, np.float32), global_spec, spec
        self.popularity = np.asarray(popularity, np.int64)
        self.refit_x = None if refit_x is None or len(refit_x) == 0 else np.asarray(refit_x, np.float64)

    def predict_widths(self, descriptors: np.ndarray, widths: np.ndarray) -> np.ndarray:
        asked, which = np.unique(np.asarray(widths, np.int64), return_inverse=True)  # one cut per width
        one_each = np.repeat(self.params[None], len(asked), axis=0)
        return cut_to_widths(one_each, self.global_spec, asked, self.popularity, self.spec, self.refit_x)[which]

    def predict(self, descriptors: np.ndarray) -> np.ndarray:
        return self.predict_widths(descriptors, np.full(len(descriptors), self.spec.widths[1]))

    def export(self) -> dict:
        refit = np.zeros((0, self.spec.widths[0])) if self.refit_x is None else self.refit_x
        return {
            "params": torch.tensor(self.params),
            "global_spec": spec_state(self.global_spec),
            "popularity": torch.tensor(self.popularity),
            "spec": spec_state(self.spec),
            "refit_x": torch.tensor(np.asarray(refit, np.float64)),
        }

    @classmethod
    def restore(cls, state: dict) -> WidthAverage:
        return cls(
            state["params"].numpy(),
            spec_from_state(state["global_spec"]),
            state["popularity"].numpy(),
            spec_from_state(state["spec"]),
            state["refit_x"].numpy(),
        )


def fit_width_average(models: np.ndarray, ctx: FitContext) -> WarmStarter:
    """``average`` for models (n, ctx.spec.n_params) of widths ``ctx.widths`` (n,): the matched average."""
    own, specs, matching = matched(models, ctx)
    fused = matched_average(own, specs, matching)
    return WidthAverage(fused, matching.global_spec, matching.popularity, ctx.spec, ctx.probe)
