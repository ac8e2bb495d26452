"""Which pretrained models fusion leaves out: non-finite parameters (:mod:`~fusion.screening.quarantine`) and
function-space outliers (:mod:`~fusion.screening.outliers`)."""

from fusion.screening.outliers import OutlierConfig, function_outliers, outliers_of
from fusion.screening.quarantine import finite_models

__all__ = ["OutlierConfig", "finite_models", "function_outliers", "outliers_of"]
