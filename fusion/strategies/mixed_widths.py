"""Fusion of parties of different hidden widths: the warm starters of ``gp_refit`` and ``average`` for them.

In a run with ``widths`` every model arrives embedded at the widest spec (:mod:`fusion.widths`) next to its own
width (``FitContext.widths``). Matching uses PFNM (:mod:`fusion.pfnm`, ``FusionConfig.pfnm``) on the models at
their own widths, once per fit (shared through ``FitContext.cache``).

- ``gp_refit``: a GP over the PFNM-expanded parameters (the global model, one canonical order) gives the init,
  cut to the width the party asks for (:func:`fusion.pfnm.to_width`, most popular atoms, outgoing weights refit by
  least squares to the uncut model's outputs on the probe inputs); a GP over the
  models' outputs on the probe inputs (which do not care about widths) gives the function to reproduce; the
  init is refit to it at the party's width, every width as one batched program. Without alignment
  (``fusion_noalign``) the parameter GP regresses the embedded models as they are.
- ``average``: the PFNM matched average (:func:`fusion.pfnm.matched_average`) cut to the party's width, its
  outgoing weights refit by least squares to the global average's outputs on the probe inputs.
- ``nearest_task`` needs nothing new: the nearest model is copied at whatever width it has.
"""

from __future__ import annotations

import numpy as np
import torch

from fusion.metamodel import GPMetaModel
from fusion.params import forward
from fusion.pfnm import Matching, expand, match_models, matched_average, to_width
from fusion.spec import MLPSpec
from fusion.strategies.base import FitContext, WarmStarter
from fusion.training import TrainConfig, relative_mse, train
from fusion.widths import at_width, embed, own_width


def matched(models: np.ndarray, ctx: FitContext) -> tuple[list[np.ndarray], list[MLPSpec], Matching]:
    """The models at their own widths, their specs and their PFNM matching (computed once per fit)."""
    if ctx.widths is None:
        raise ValueError("matched() needs FitContext.widths")
    if "pfnm" not in ctx.cache:
        specs = [at_width(ctx.spec, w) for w in ctx.widths]
        own = [own_width(m[None], ctx.spec, w)[0] for m, w in zip(models, ctx.widths)]
        ctx.cache["pfnm"] = (own, specs, match_models(own, specs, ctx.config.pfnm, ctx.solve_rect))
    return ctx.cache["pfnm"]


def _spec_state(spec: MLPSpec) -> dict:
    return {"widths": list(spec.widths), "activation": spec.activation}


def _spec(state: dict) -> MLPSpec:
    return MLPSpec(tuple(state["widths"]), state["activation"])


class MixedRefitWarmStarter(WarmStarter):
    """``params`` GP: descriptors -> models at ``param_spec`` (PFNM global, or the run spec without alignment);
    ``outputs`` GP: descriptors -> outputs on ``probe``; warm starts at any width, embedded at ``spec``."""

    def __init__(
        self,
        params: GPMetaModel,
        outputs: GPMetaModel,
        param_spec: MLPSpec,
        popularity: np.ndarray | None,
        spec: MLPSpec,
        probe: np.ndarray,
        refit: TrainConfig,
        info: dict,
    ) -> None:
        self.params, self.outputs, self.param_spec, self.spec = params, outputs, param_spec, spec
        self.popularity = None if popularity is None or len(popularity) == 0 else np.asarray(popularity, np.int64)
        self.probe, self.refit, self.info = np.array(probe, np.float32), refit, info

    def predict_widths(self, descriptors: np.ndarray, widths: np.ndarray) -> np.ndarray:
        widths = np.asarray(widths, np.int64)
        init_all = self.params.predict(descriptors)  # (m, param_spec.n_params)
        m, n_probe, (fan_in, fan_out) = len(widths), len(self.probe), (self.spec.widths[0], self.spec.widths[-1])
        target = torch.as_tensor(self.outputs.predict(descriptors)).reshape(m, n_probe, fan_out)
        out = np.zeros((m, self.spec.n_params), np.float32)
        for w in np.unique(widths):
            rows = np.flatnonzero(widths == w)
            spec_w = at_width(self.spec, w)
            # cut to width w; the kept units' outgoing weights least-squares fitted to the uncut model's outputs on
            # the probe inputs (without it, width-50 warm starts scored 0.161 nRMSE against 0.052 with it: README)
            init = to_width(init_all[rows], self.param_spec, int(w), self.popularity, refit_x=self.probe)
            x = torch.tensor(self.probe).expand(len(rows), n_probe, fan_in)
            tuned = train(torch.as_tensor(init), spec_w, x, target[rows], relative_mse, self.refit).numpy()
            out[rows] = embed(tuned, spec_w, self.spec.widths[1])
        return out

    def predict(self, descriptors: np.ndarray) -> np.ndarray:
        return self.predict_widths(descriptors, np.full(len(descriptors), self.spec.widths[1]))

    def export(self) -> dict:
        pop = np.zeros(0, np.int64) if self.popularity is None else self.popularity
        return {
            "params": self.params.state,
            "outputs": self.outputs.state,
            "param_spec": _spec_state(self.param_spec),
            "popularity": torch.tensor(pop),
            "spec": _spec_state(self.spec),
            "probe": torch.tensor(self.probe),
            "refit": [self.refit.steps, self.refit.lr],
            "info": self.info,
        }

    @classmethod
    def restore(cls, state: dict) -> MixedRefitWarmStarter:
        refit = TrainConfig(int(state["refit"][0]), float(state["refit"][1]))
        return cls(
            GPMetaModel(state["params"]),
            GPMetaModel(state["outputs"]),
            _spec(state["param_spec"]),
            state["popularity"].numpy(),
            _spec(state["spec"]),
            state["probe"].numpy(),
            refit,
            state["info"],
        )

    def summary(self) -> dict:
        return {**self.info, "objective": self.params.objective[-1], "outputs_objective": self.outputs.objective[-1]}


def fit_mixed_refit(models: np.ndarray, descriptors: np.ndarray, ctx: FitContext, aligned: bool) -> WarmStarter:
    """``gp_refit`` for models (n, ctx.spec.n_params) of widths ``ctx.widths`` (n,)."""
    cfg = ctx.config
    if aligned:
        own, specs, matching = matched(models, ctx)
        stack, param_spec, popularity = expand(own, specs, matching), matching.global_spec, matching.popularity
        info = {"atoms": matching.n_atoms}
    else:
        stack, param_spec, popularity, info = models, ctx.spec, None, {"atoms": 0}
    param_gp = GPMetaModel.fit(stack, descriptors, cfg.gp, seed=ctx.seed)
    with torch.no_grad():
        outs = forward(torch.as_tensor(models), ctx.spec, torch.as_tensor(ctx.probe, dtype=torch.float32))
    output_gp = GPMetaModel.fit(outs.reshape(len(models), -1).numpy(), descriptors, cfg.gp, seed=ctx.seed + 1)
    refit = TrainConfig(cfg.refit_steps, cfg.refit_lr)
    return MixedRefitWarmStarter(param_gp, output_gp, param_spec, popularity, ctx.spec, ctx.probe, refit, info)


class WidthAverage(WarmStarter):
    """One global model at ``global_spec``, cut to the width each party asks for and embedded at ``spec``."""

    def __init__(
        self, params: np.ndarray, global_spec: MLPSpec, popularity: np.ndarray, spec: MLPSpec, refit_x: np.ndarray
    ) -> None:
        self.params, self.global_spec, self.spec = np.asarray(params, np.float32), global_spec, spec
        self.popularity = np.asarray(popularity, np.int64)
        self.refit_x = None if refit_x is None or len(refit_x) == 0 else np.asarray(refit_x, np.float64)

    def predict_widths(self, descriptors: np.ndarray, widths: np.ndarray) -> np.ndarray:
        widths = np.asarray(widths, np.int64)
        out = np.zeros((len(widths), self.spec.n_params), np.float32)
        for w in np.unique(widths):
            cut = to_width(self.params[None], self.global_spec, int(w), self.popularity, refit_x=self.refit_x)
            out[widths == w] = embed(cut, at_width(self.spec, w), self.spec.widths[1])[0]
        return out

    def predict(self, descriptors: np.ndarray) -> np.ndarray:
        return self.predict_widths(descriptors, np.full(len(descriptors), self.spec.widths[1]))

    def export(self) -> dict:
        refit = np.zeros((0, self.spec.widths[0])) if self.refit_x is None else self.refit_x
        return {
            "params": torch.tensor(self.params),
            "global_spec": _spec_state(self.global_spec),
            "popularity": torch.tensor(self.popularity),
            "spec": _spec_state(self.spec),
            "refit_x": torch.tensor(np.asarray(refit, np.float64)),
        }

    @classmethod
    def restore(cls, state: dict) -> WidthAverage:
        return cls(
            state["params"].numpy(),
            _spec(state["global_spec"]),
            state["popularity"].numpy(),
            _spec(state["spec"]),
            state["refit_x"].numpy(),
        )


def fit_width_average(models: np.ndarray, ctx: FitContext) -> WarmStarter:
    """``average`` for models (n, ctx.spec.n_params) of widths ``ctx.widths`` (n,): the matched average."""
    own, specs, matching = matched(models, ctx)
    fused = matched_average(own, specs, matching)
    return WidthAverage(fused, matching.global_spec, matching.popularity, ctx.spec, ctx.probe)
