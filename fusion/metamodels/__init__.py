"""Meta-models from task descriptors to models: the GP meta-model (:mod:`~fusion.metamodels.gp`, settings
:mod:`~fusion.metamodels.gp_config`) and MFPL's generative model (:mod:`~fusion.metamodels.mfpl`, settings
:mod:`~fusion.metamodels.mfpl_config`).

Only the settings are re-exported here: the models import gpytorch, which a run's config validation never needs.
"""

from fusion.metamodels.gp_config import KERNELS, GPConfig
from fusion.metamodels.mfpl_config import MFPLConfig

__all__ = ["KERNELS", "GPConfig", "MFPLConfig"]
