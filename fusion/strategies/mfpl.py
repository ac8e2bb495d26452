"""``mfpl``: the MFPL meta-model (:mod:`fusion.metamodels.mfpl`) as a fusion strategy, warm start = decoder at the GP
mean."""

from __future__ import annotations

from dataclasses import asdict
from typing import TYPE_CHECKING

import numpy as np

from fusion.lazy import lazy
from fusion.metamodels.mfpl_config import MFPLConfig
from fusion.strategies.base import FitContext, Strategy, register
from fusion.warm_start import WarmStarter

if TYPE_CHECKING:
    from fusion.metamodels.mfpl import MFPLModel

mfpl = lazy("fusion.metamodels.mfpl")  # gpytorch: imported when the strategy fits or restores


class MFPLWarmStarter(WarmStarter):
    """Descriptors (k, d) -> m_lambda([E_q w_0; GP predictive mean]) (k, D) in canonical unit order."""

    kind = "mfpl"

    def __init__(self, model: MFPLModel, info: dict) -> None:
        self.model, self.info = model, info

    def predict(self, descriptors: np.ndarray) -> np.ndarray:
        return self.model.warm_start(descriptors)

    def export(self) -> dict:
        state = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
        return {
            "config": asdict(self.model.cfg),
            "dims": [int(self.model.x_mean.shape[0]), int(self.model.y_mean.shape[0]), len(self.model.gp.inducing)],
            "state": state,
            "info": self.info,
        }

    @classmethod
    def restore(cls, state: dict) -> MFPLWarmStarter:
        dim, n_params, m = state["dims"]
        model = mfpl.MFPLModel(MFPLConfig(**state["config"]), dim, n_params, m)
        model.load_state_dict(state["state"])
        return cls(model.eval(), state["info"])

    def summary(self) -> dict:
        return dict(self.info)


@register
class MFPLFusion(Strategy):
    """With ``aligned=False`` every A_i is the identity (the paper's no-align ablation)."""

    name = "mfpl"
    alignable = True
    settings_key, settings_class = "mfpl", MFPLConfig

    def fit(self, models, descriptors, ctx: FitContext) -> WarmStarter:
        cfg = ctx.config
        fitted = mfpl.fit_mfpl(
            models,
            descriptors,
            ctx.spec,
            self.settings,
            seed=ctx.seed,
            aligned=self.aligned,
            align_iters=cfg.align_iters,
            solve_many=ctx.solve_many,
            solve_rect=ctx.solve_rect,
        )
        info = {
            "elbo": fitted.elbo[-1][-1],
            "elbo_steps": [len(h) for h in fitted.elbo],
            "reassigned_units": fitted.reassigned,
        }
        return MFPLWarmStarter(fitted.model.eval(), info)
