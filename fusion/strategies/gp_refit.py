"""``gp_refit``: the aligned parameter-space GP, refitted in function space.

Two GPs over the descriptors: one predicts the aligned parameters (the warm start's init), one
predicts the models' outputs on unlabeled probe inputs (the function the new task should
compute: a kernel-weighted combination of related tasks' functions, which averages out each
pretrained model's own errors). The warm start is the init trained to reproduce the predicted
outputs — the paper's "personalized performance fitting", done for every target at once as one
batched program.

Classifiers (``FitContext.outputs == "logits"``) are combined as class probabilities and refit by KL
divergence. The output GP needs no shared architecture: asked for warm starts of another family
(:meth:`GPRefit.fit_cross`), it refits that family's plain init (seeded by the run seed; there are no models of
that family to regress its parameters on). Parties of several families (:meth:`GPRefit.fit_mixed`): one output GP
over all of them, and per target family the parameter GP over that family's models as the init. With mixed widths
(:meth:`GPRefit.fit_widths`) the init is :class:`fusion.strategies.matched_gp.MatchedGPWarmStarter` (PFNM matching,
cut to each party's width) and the refit runs at each party's width.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from fusion.adapt.train_config import TrainConfig
from fusion.adapt.training import relative_mse, train_shared
from fusion.lazy import lazy, torch
from fusion.models.params import forward, init_params
from fusion.models.probe import probe_outputs
from fusion.models.spec import Spec, spec_from_state, spec_state
from fusion.models.widths import at_width, embed, own_width
from fusion.strategies import by_family
from fusion.strategies.average import Constant
from fusion.strategies.base import FitContext, Strategy, register
from fusion.strategies.gp import GPFusion
from fusion.strategies.mixed_widths import fit_width_gp
from fusion.strategies.nearest_task import Lookup
from fusion.warm_start import WarmStarter, warm_starter_class

if TYPE_CHECKING:
    from fusion.metamodels.gp import GPMetaModel

metamodel = lazy("fusion.metamodels.gp")  # gpytorch: imported when a strategy fits or restores


def combinable(outputs: torch.Tensor, kind: str) -> torch.Tensor:
    """Model outputs (P, N, out) in the space where the output GP combines them: values as they are, logits
    as class probabilities (logits are defined up to a shift per input, and averaging them multiplies the
    models' probabilities: with label skew the product of experts is confidently wrong)."""
    return torch.softmax(outputs, dim=-1) if kind == "logits" else outputs


def kl_to_probabilities(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """KL(target || softmax(pred)) per model (P,), mean over the inputs: the refit loss for logits."""
    return (torch.xlogy(target, target) - target * torch.log_softmax(pred, dim=-1)).sum(-1).mean(1)


class RefitWarmStarter(WarmStarter):
    """Any fitted ``init`` warm starter whose predictions are trained to the output GP's predicted function.

    ``output_kind`` ``"values"``: trained to the predicted outputs (squared error relative to their power);
    ``"logits"``: to the predicted class probabilities (KL divergence; the GP's mean clipped at 0 and renormalized).
    ``nearest`` (``[fusion] refit_from = "closer"``): a lookup of the pretrained models; each party's refit then
    starts from whichever of ``init``'s prediction and its nearest model is closer, by the refit's own loss on the
    probe, to the predicted function (no labels: the probe and the GP's prediction only).
    """

    kind = "refit"

    def __init__(
        self,
        init: WarmStarter,
        outputs: GPMetaModel,
        spec: Spec,
        probe: np.ndarray,
        refit: TrainConfig,
        output_kind: str = "values",
        nearest: WarmStarter | None = None,
    ) -> None:
        self.init, self.outputs, self.spec = init, outputs, spec
        self.probe, self.refit, self.output_kind = np.array(probe, np.float32), refit, output_kind
        self.nearest = nearest

    def _loss(self):
        return kl_to_probabilities if self.output_kind == "logits" else relative_mse

    def _refit(self, init: np.ndarray, target: torch.Tensor, spec: Spec) -> np.ndarray:
        x = torch.tensor(self.probe)  # copy: object-store arrays are read-only
        return train_shared(torch.as_tensor(init), spec, x, target, self._loss(), self.refit).numpy()

    def _closer(self, init: np.ndarray, other: np.ndarray, target: torch.Tensor) -> np.ndarray:
        """Per party, whichever of ``init`` and ``other`` (m, n_params) fits ``target`` on the probe better."""
        x = torch.tensor(self.probe)
        with torch.no_grad():
            loss = [self._loss()(forward(torch.as_tensor(w), self.spec, x), target) for w in (init, other)]
        return np.where((loss[1] < loss[0]).numpy()[:, None], other, init)

    def _targets(self, descriptors: np.ndarray) -> torch.Tensor:
        out = torch.as_tensor(self.outputs.predict(descriptors))
        out = out.reshape(len(descriptors), len(self.probe), self.spec.fan_out)
        if self.output_kind == "logits":
            out = out.clamp_min(0) + 1e-6
            out = out / out.sum(-1, keepdim=True)
        return out

    def _start(self, descriptors: np.ndarray) -> tuple[np.ndarray, torch.Tensor]:
        """The refit's starts (m, n_params) and targets (m, N, out) at ``descriptors``."""
        init, target = self.init.predict(descriptors), self._targets(descriptors)
        if self.nearest is not None:
            init = self._closer(init, self.nearest.predict(descriptors), target)
        return init, target

    def predict(self, descriptors: np.ndarray) -> np.ndarray:
        return self._refit(*self._start(descriptors), self.spec)

    @classmethod
    def predict_many(cls, starters: list[RefitWarmStarter], descriptors: np.ndarray) -> list[np.ndarray]:
        """Starters with the same refit (architecture, probe, steps, loss; e.g. ``fusion`` and ``fusion_noalign``)
        refit as one batch: each row trains as it would alone, and one step of 2m rows costs ~0.8 of two of m."""
        groups: dict[tuple, list[int]] = {}
        for i, s in enumerate(starters):
            groups.setdefault((s.spec, s.probe.tobytes(), s.refit, s.output_kind), []).append(i)
        out: list = [None] * len(starters)
        for rows in groups.values():
            inits, targets = zip(*(starters[i]._start(descriptors) for i in rows))
            tuned = starters[rows[0]]._refit(np.concatenate(inits), torch.cat(targets), starters[rows[0]].spec)
            for i, part in zip(rows, np.split(tuned, len(rows))):
                out[i] = part
        return out

    def predict_widths(self, descriptors: np.ndarray, widths: np.ndarray) -> np.ndarray:
        """The init's warm starts at ``widths`` (m,), each refit at its own width (one batch per width)."""
        widths = np.asarray(widths, np.int64)
        init, target = self.init.predict_widths(descriptors, widths), self._targets(descriptors)
        out = np.zeros_like(init)
        for w in np.unique(widths):
            rows, spec_w = np.flatnonzero(widths == w), at_width(self.spec, w)
            tuned = self._refit(own_width(init[rows], self.spec, w), target[rows], spec_w)
            out[rows] = embed(tuned, spec_w, self.spec.widths[1])
        return out

    def export(self) -> dict:
        return {
            "init_kind": self.init.kind,
            "init": self.init.export(),
            "outputs": self.outputs.state,
            **spec_state(self.spec),
            "probe": torch.tensor(self.probe),
            "refit": [self.refit.steps, self.refit.lr],
            "output_kind": self.output_kind,
            **({"nearest": self.nearest.export()} if self.nearest is not None else {}),
        }

    @classmethod
    def restore(cls, state: dict) -> RefitWarmStarter:
        spec = spec_from_state(state)
        refit = TrainConfig(int(state["refit"][0]), float(state["refit"][1]))
        init = warm_starter_class(state["init_kind"]).restore(state["init"])
        kind = state.get("output_kind", "values")
        nearest = Lookup.restore(state["nearest"]) if "nearest" in state else None
        return cls(init, metamodel.GPMetaModel(state["outputs"]), spec, state["probe"].numpy(), refit, kind, nearest)

    def summary(self) -> dict:
        return {**self.init.summary(), "outputs_objective": self.outputs.objective[-1]}


def refit_warm_starter(
    init: WarmStarter,
    models: np.ndarray,
    descriptors: np.ndarray,
    ctx: FitContext,
    spec: Spec | None = None,
    closer: bool = True,
) -> RefitWarmStarter:
    """Wrap a fitted ``init`` with the function-space refit: fits the GP from descriptors to the outputs of
    ``models`` (n, D) on ``ctx.probe`` (the models embedded at ``ctx.spec`` in a run with mixed widths).
    The caller has checked the probe (:meth:`Strategy.require`). ``spec``: the warm starts' architecture (default
    ``ctx.spec``; ``init`` must predict models of it); ``closer``: ``models`` are warm starts of that architecture,
    which ``[fusion] refit_from = "closer"`` may start from (:func:`_nearest`)."""
    cached = ctx.cache.get("output_gp")
    if cached is not None and cached[0] is models and cached[1] is descriptors:
        gp_out = cached[2]  # the same fit (fusion and fusion_noalign: outputs do not depend on the unit order)
    else:
        with torch.no_grad():
            outs = forward(torch.as_tensor(models), ctx.spec, torch.as_tensor(ctx.probe, dtype=torch.float32))
        gp_out = output_gp(outs, descriptors, ctx)
        ctx.cache["output_gp"] = (models, descriptors, gp_out)
    nearest = _nearest(models, descriptors, ctx) if closer and (spec is None or spec == ctx.spec) else None
    return RefitWarmStarter(init, gp_out, spec or ctx.spec, ctx.probe, _refit(ctx), ctx.outputs, nearest)


def _nearest(models: np.ndarray, descriptors: np.ndarray, ctx: FitContext) -> Lookup | None:
    """The pretrained models (of the warm starts' own architecture) as refit starts (``[fusion] refit_from =
    "closer"``), else None."""
    return Lookup(models, descriptors) if ctx.config.refit_from == "closer" else None


def output_gp(outs: torch.Tensor, descriptors: np.ndarray, ctx: FitContext) -> GPMetaModel:
    """The GP from descriptors to the models' outputs ``outs`` (n, N, out) on the probe (combinable form)."""
    outs = combinable(outs, ctx.outputs)
    return metamodel.GPMetaModel.fit(outs.reshape(len(outs), -1).numpy(), descriptors, ctx.config.gp, seed=ctx.seed + 1)


def _refit(ctx: FitContext) -> TrainConfig:
    return TrainConfig(ctx.config.refit_steps, ctx.config.refit_lr)


@register
class GPRefit(Strategy):
    """With ``aligned=False`` the init comes from the GP on unaligned parameters (the ablation)."""

    name = "gp_refit"
    alignable = True
    mixed_widths = True
    needs_probe = True
    cross_family = True
    mixed_families = True

    def fit(self, models, descriptors, ctx: FitContext) -> WarmStarter:
        """Aligned units + parameter-space GP as the init."""
        self.require(ctx)  # before the (long) init fit
        init = GPFusion(aligned=self.aligned).fit(models, descriptors, ctx)
        return refit_warm_starter(init, models, descriptors, ctx)

    def fit_widths(self, models, descriptors, ctx: FitContext) -> WarmStarter:
        """PFNM-matched units + parameter-space GP as the init, cut to each party's width (no "closer" starts: the
        pretrained models have other widths than the party's)."""
        self.require(ctx)
        init = fit_width_gp(models, descriptors, ctx, self.aligned)
        return refit_warm_starter(init, models, descriptors, ctx, closer=False)

    def fit_cross(self, models, descriptors, ctx: FitContext) -> WarmStarter:
        """Another family: its plain init, refit to the predicted function."""
        self.require(ctx)
        init = Constant(init_params(ctx.target_spec, torch.Generator().manual_seed(ctx.seed)).numpy())
        return refit_warm_starter(init, models, descriptors, ctx, ctx.target_spec)

    def fit_mixed(self, models, descriptors, ctx: FitContext) -> WarmStarter:
        """Parties of several families: one output GP over every model's function on the probe (each through its
        own family); per target family, the init is the parameter GP over that family's models (the plain init of
        the family when fewer than two of them), refit to the predicted function."""
        self.require(ctx)
        cached = ctx.cache.get("output_gp")
        if cached is not None and cached[0] is models and cached[1] is descriptors:
            gp_out = cached[2]  # fusion and fusion_noalign share it
        else:
            families = [(spec, rows) for rows, spec in ctx.groups]  # each model through its own family
            gp_out = output_gp(probe_outputs(models, families, ctx.probe), descriptors, ctx)
            ctx.cache["output_gp"] = (models, descriptors, gp_out)
        starters = {}
        for spec in ctx.layout.target_families:
            rows = by_family.rows_of(ctx, spec)
            nearest = None
            if len(rows) >= 2:
                own = ctx.layout.unpack(models[rows], spec)
                init = GPFusion(aligned=self.aligned).fit(own, descriptors[rows], ctx.family_context(spec))
                nearest = _nearest(own, descriptors[rows], ctx)
            else:
                init = Constant(init_params(spec, torch.Generator().manual_seed(ctx.seed)).numpy())
            starters[spec.family] = RefitWarmStarter(init, gp_out, spec, ctx.probe, _refit(ctx), ctx.outputs, nearest)
        return by_family.ByFamily(starters, {s.family: s for s in ctx.layout.target_families})
