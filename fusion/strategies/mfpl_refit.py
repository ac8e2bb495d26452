"""``mfpl_refit``: the MFPL warm start (:mod:`fusion.strategies.mfpl`) refitted in function space like ``gp_refit``."""

from __future__ import annotations

from fusion.strategies.base import FitContext, Strategy, register
from fusion.strategies.gp_refit import refit_warm_starter
from fusion.strategies.mfpl import MFPLFusion
from fusion.warm_start import WarmStarter


@register
class MFPLRefit(Strategy):
    """With ``aligned=False`` the init is MFPL without assignments (the ablation)."""

    name = "mfpl_refit"
    alignable = True
    needs_probe = True
    settings_key, settings_class = MFPLFusion.settings_key, MFPLFusion.settings_class

    def fit(self, models, descriptors, ctx: FitContext) -> WarmStarter:
        self.require(ctx)  # before the (long) MFPL fit
        init = MFPLFusion(self.settings, self.aligned).fit(models, descriptors, ctx)
        return refit_warm_starter(init, models, descriptors, ctx)
