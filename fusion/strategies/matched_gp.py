"""``matched_gp``: PFNM matching to a global model (any widths), the GP meta-model over it, warm starts at any width.

The models are matched with :func:`fusion.pfnm.match_models` (nets of different widths allowed), expanded to the
global width in one canonical order (:func:`fusion.pfnm.expand`), and the GP meta-model regresses the expanded
parameters on the descriptors. A warm start is the GP mean decoded at the global width and cut (or padded) to the
requested width with :func:`fusion.pfnm.to_width` (most popular atoms; optional function-space refit on
``refit_x``). :func:`fit_matched_gp` is the entry point for parties of different widths; the registered strategy
is the same with every party at ``ctx.spec``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from fusion.lazy import lazy, torch
from fusion.matching.pfnm import PFNMConfig, SolveRect, expand, match_models, solve_rect_serial, to_width
from fusion.metamodels.gp_config import GPConfig
from fusion.models.spec import MLPSpec, spec_from_state, spec_state
from fusion.strategies.base import FitContext, Strategy, register
from fusion.warm_start import WarmStarter

if TYPE_CHECKING:
    from fusion.metamodels.gp import GPMetaModel

metamodel = lazy("fusion.metamodels.gp")  # gpytorch: imported when a strategy fits or restores


class MatchedGPWarmStarter(WarmStarter):
    """Descriptors (m, d) -> models at ``width`` (default: the parties' width) via the global-width GP."""

    kind = "matched_gp"

    def __init__(
        self,
        meta: GPMetaModel,
        global_spec: MLPSpec,
        popularity: np.ndarray,
        width: int,
        refit_x: np.ndarray | None = None,
    ) -> None:
        self.meta, self.global_spec, self.width = meta, global_spec, int(width)
        self.popularity = np.asarray(popularity, dtype=np.int64)
        self.refit_x = None if refit_x is None or len(refit_x) == 0 else np.asarray(refit_x, dtype=np.float64)

    def predict_global(self, descriptors: np.ndarray) -> np.ndarray:
        """The GP mean at the global width: (m, global_spec.n_params)."""
        return self.meta.predict(descriptors)

    def predict_width(self, descriptors: np.ndarray, width: int) -> np.ndarray:
        """Warm starts at hidden width ``width``: (m, n_params of [fan_in-width-fan_out]) float32."""
        return to_width(
            self.predict_global(descriptors), self.global_spec, width, self.popularity, refit_x=self.refit_x
        )

    def predict(self, descriptors: np.ndarray) -> np.ndarray:
        return self.predict_width(descriptors, self.width)

    def export(self) -> dict:
        refit = np.zeros((0, self.global_spec.widths[0])) if self.refit_x is None else self.refit_x
        return {
            "meta": self.meta.state,
            **spec_state(self.global_spec, "global_widths"),
            "popularity": torch.tensor(self.popularity),
            "width": self.width,
            "refit_x": torch.tensor(np.asarray(refit, dtype=np.float64)),
        }

    @classmethod
    def restore(cls, state: dict) -> MatchedGPWarmStarter:
        spec = spec_from_state(state, "global_widths")
        return cls(
            metamodel.GPMetaModel(state["meta"]),
            spec,
            state["popularity"].numpy(),
            state["width"],
            state["refit_x"].numpy(),
        )

    def summary(self) -> dict:
        return {"atoms": int(len(self.popularity)), "max_popularity": int(self.popularity.max(initial=0))}


def fit_matched_gp(
    models: Sequence[np.ndarray],
    specs: Sequence[MLPSpec],
    descriptors: np.ndarray,
    width: int,
    pfnm: PFNMConfig | None = None,
    gp: GPConfig | None = None,
    seed: int = 0,
    solve_rect: SolveRect = solve_rect_serial,
    refit_x: np.ndarray | None = None,
) -> MatchedGPWarmStarter:
    """Match ``models`` (flat (n_params_j,) each, ``specs[j]`` their widths), fit the GP on ``descriptors`` (n, d).

    ``width`` is the default width of :meth:`MatchedGPWarmStarter.predict`; any other via ``predict_width``.
    """
    matching = match_models(list(models), list(specs), pfnm, solve_rect)
    stack = expand(list(models), list(specs), matching)
    meta = metamodel.GPMetaModel.fit(stack, descriptors, gp or GPConfig(), seed=seed)
    return MatchedGPWarmStarter(meta, matching.global_spec, matching.popularity, width, refit_x)


@register
class MatchedGP(Strategy):
    """``[fusion.matched_gp]`` sets the matching (paper defaults); warm starts at the parties' width, cut without
    a refit (:func:`fit_matched_gp` takes ``refit_x`` for that)."""

    name = "matched_gp"
    settings_key, settings_class = "matched_gp", PFNMConfig

    def fit(self, models, descriptors, ctx: FitContext) -> WarmStarter:
        specs = [ctx.spec] * len(models)
        return fit_matched_gp(
            list(models),
            specs,
            descriptors,
            ctx.spec.widths[1],
            self.settings,
            ctx.config.gp,
            ctx.seed,
            ctx.solve_rect,
        )
