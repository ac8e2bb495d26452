"""``gp_refit``: the aligned parameter-space GP, refitted in function space.

Two GPs over the descriptors: one predicts the aligned parameters (the warm start's init), one
predicts the models' outputs on unlabeled probe inputs (the function the new task should
compute: a kernel-weighted combination of related tasks' functions, which averages out each
pretrained model's own errors). The warm start is the init trained to reproduce the predicted
outputs — the paper's "personalized performance fitting", done for every target at once as one
batched program.
"""

from __future__ import annotations

import numpy as np
import torch

from fusion.metamodel import GPMetaModel
from fusion.params import forward
from fusion.spec import MLPSpec
from fusion.strategies.base import FitContext, Strategy, WarmStarter, register
from fusion.strategies.gp import GPFusion
from fusion.strategies.mixed_widths import fit_mixed_refit
from fusion.training import TrainConfig, relative_mse, train


class RefitWarmStarter(WarmStarter):
    def __init__(
        self,
        params: GPMetaModel,
        outputs: GPMetaModel,
        spec: MLPSpec,
        probe: np.ndarray,
        refit: TrainConfig,
        info: dict,
    ) -> None:
        self.params, self.outputs, self.spec = params, outputs, spec
        self.probe, self.refit, self.info = np.array(probe, np.float32), refit, info

    def predict(self, descriptors: np.ndarray) -> np.ndarray:
        init = torch.as_tensor(self.params.predict(descriptors))
        m, (n_probe, fan_out) = len(init), (len(self.probe), self.spec.widths[-1])
        target = torch.as_tensor(self.outputs.predict(descriptors)).reshape(m, n_probe, fan_out)
        x = torch.tensor(self.probe).expand(m, n_probe, self.spec.widths[0])  # copy: object-store arrays are read-only
        return train(init, self.spec, x, target, relative_mse, self.refit).numpy()

    def export(self) -> dict:
        return {
            "params": self.params.state,
            "outputs": self.outputs.state,
            "widths": list(self.spec.widths),
            "activation": self.spec.activation,
            "probe": torch.tensor(self.probe),
            "refit": [self.refit.steps, self.refit.lr],
            "info": self.info,
        }

    @classmethod
    def restore(cls, state: dict) -> RefitWarmStarter:
        spec = MLPSpec(tuple(state["widths"]), state["activation"])
        refit = TrainConfig(int(state["refit"][0]), float(state["refit"][1]))
        params, outputs = GPMetaModel(state["params"]), GPMetaModel(state["outputs"])
        return cls(params, outputs, spec, state["probe"].numpy(), refit, state["info"])

    def summary(self) -> dict:
        return {**self.info, "objective": self.params.objective[-1], "outputs_objective": self.outputs.objective[-1]}


@register
class GPRefit(Strategy):
    """With ``aligned=False`` the init comes from the GP on unaligned parameters (the ablation)."""

    name = "gp_refit"
    mixed_widths = True
    needs_probe = True

    def __init__(self, aligned: bool = True) -> None:
        self.aligned = aligned

    def fit(self, models, descriptors, ctx: FitContext) -> WarmStarter:
        if ctx.probe is None:
            raise ValueError("strategy gp_refit needs probe inputs from the scenario (FitContext.probe)")
        if ctx.widths is not None:
            return fit_mixed_refit(models, descriptors, ctx, self.aligned)
        cfg = ctx.config
        init = GPFusion(self.aligned).fit(models, descriptors, ctx)  # aligned units + parameter-space GP
        param_gp, iterations = init.meta, init.align_iterations
        with torch.no_grad():
            outs = forward(torch.as_tensor(models), ctx.spec, torch.as_tensor(ctx.probe, dtype=torch.float32))
        output_gp = GPMetaModel.fit(outs.reshape(len(models), -1).numpy(), descriptors, cfg.gp, seed=ctx.seed + 1)
        refit = TrainConfig(cfg.refit_steps, cfg.refit_lr)
        info = {"align_iterations": iterations}
        return RefitWarmStarter(param_gp, output_gp, ctx.spec, ctx.probe, refit, info)
