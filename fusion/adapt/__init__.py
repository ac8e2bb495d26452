"""Training a stack of models: the settings (:mod:`~fusion.adapt.train_config`), the one optimizer of every training
loop (:mod:`~fusion.adapt.optimizer`), what may move (:mod:`~fusion.adapt.constraint`), batched training
(:mod:`~fusion.adapt.training`) and k-shot fine-tuning (:mod:`~fusion.adapt.finetuning`) with its read-out
(:mod:`~fusion.adapt.readout`) and residual-GP (:mod:`~fusion.adapt.residual`) recipes."""

from fusion.adapt.constraint import FREE, Constraint
from fusion.adapt.finetuning import choose_steps, finetune, recipe_for
from fusion.adapt.optimizer import Optimizer
from fusion.adapt.residual import residual_gp
from fusion.adapt.train_config import FinetuneConfig, TrainConfig
from fusion.adapt.training import relative_mse, train

__all__ = [
    "FREE",
    "Constraint",
    "FinetuneConfig",
    "Optimizer",
    "TrainConfig",
    "choose_steps",
    "finetune",
    "recipe_for",
    "relative_mse",
    "residual_gp",
    "train",
]
