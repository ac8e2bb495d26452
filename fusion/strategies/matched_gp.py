"""``matched_gp``: PFNM matching to a global model (any widths), the GP meta-model over it, warm starts at any width.

The models are matched with :func:`fusion.matching.pfnm.match_models` (nets of different widths allowed), expanded to
the global width in one canonical order (:func:`fusion.matching.pfnm.expand`), and the GP meta-model regresses the
expanded parameters on the descriptors. A warm start is the GP mean decoded at the global width and cut (or padded)
to the requested width with :func:`fusion.matching.pfnm.to_width` (most popular atoms; optional function-space refit
on ``refit_x``). :func:`fit_matched_gp` is the entry point for parties of different widths; the registered strategy
is the same with every party at ``ctx.spec``, and ``gp_refit``'s init in runs of mixed widths is this warm starter
too (:func:`fusion.strategies.mixed_widths.fit_width_gp`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from fusion.lazy import lazy, torch
from fusion.matching.pfnm import PFNMConfig, SolveRect, expand, match_models, solve_rect_serial, to_width
from fusion.metamodels.gp_config import GPConfig
from fusion.models.spec import MLPSpec, spec_from_state, spec_state
from fusion.models.widths import at_width, embed
from fusion.strategies.base import FitContext, Strategy, register
from fusion.warm_start import WarmStarter

if TYPE_CHECKING:
    from fusion.metamodels.gp import GPMetaModel

metamodel = lazy("fusion.metamodels.gp")  # gpytorch: imported when a strategy fits or restores


def cut_to_widths(
    models: np.ndarray, global_spec: MLPSpec, widths: np.ndarray, popularity, spec: MLPSpec, probe
) -> np.ndarray:
    """Models (m, global_spec.n_params) cut to ``widths`` (m,) and embedded at ``spec``: (m, spec.n_params).

    :func:`fusion.matching.pfnm.to_width` keeps the most popular atoms and least-squares fits their outgoing weights
    to the uncut model's outputs on ``probe`` (without that fit, narrow warm starts cut from a wide global model
    lose much of its function).
    """
    out = np.zeros((len(widths), spec.n_params), np.float32)
    for w in np.unique(widths):
        rows = np.flatnonzero(widths == w)
        cut = to_width(models[rows], global_spec, int(w), popularity, refit_x=probe)
        out[rows] = embed(cut, at_width(spec, w), spec.widths[1])
    return out


class MatchedGPWarmStarter(WarmStarter):
    """Descriptors (m, d) -> models cut from the GP's prediction at ``global_spec`` (the PFNM global model; in the
    no-alignment ablation of mixed widths, the run's widest spec with the models as they are embedded in it).

    :meth:`predict` gives models at ``width`` (default: the parties' width), :meth:`predict_width` at any width, and
    :meth:`predict_widths` each party's width embedded at ``width`` (runs of mixed widths, ``width`` the widest).
    Cuts keep the most popular atoms (``popularity``; None: each model's most important units) and, with
    ``refit_x`` (N, fan_in), refit the outgoing weights to the uncut model's outputs there.
    """

    kind = "matched_gp"

    def __init__(
        self,
        meta: GPMetaModel,
        global_spec: MLPSpec,
        popularity: np.ndarray | None,
        width: int,
        refit_x: np.ndarray | None = None,
    ) -> None:
        self.meta, self.global_spec, self.width = meta, global_spec, int(width)
        self.popularity = None if popularity is None or len(popularity) == 0 else np.asarray(popularity, np.int64)
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

    def predict_widths(self, descriptors: np.ndarray, widths: np.ndarray) -> np.ndarray:
        spec = at_width(self.global_spec, self.width)
        models = self.predict_global(descriptors)
        return cut_to_widths(models, self.global_spec, np.asarray(widths), self.popularity, spec, self.refit_x)

    def export(self) -> dict:
        refit = np.zeros((0, self.global_spec.widths[0])) if self.refit_x is None else self.refit_x
        popularity = np.zeros(0, np.int64) if self.popularity is None else self.popularity
        return {
            "meta": self.meta.state,
            **spec_state(self.global_spec, "global_widths"),
            "popularity": torch.tensor(popularity),
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
        popularity = np.zeros(0, np.int64) if self.popularity is None else self.popularity
        return {
            "atoms": len(popularity),
            "max_popularity": int(popularity.max(initial=0)),
            "objective": self.meta.objective[-1],
        }


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
