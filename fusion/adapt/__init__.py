"""Training a stack of models: pretraining and k-shot fine-tuning (:mod:`~fusion.adapt.training`), with the
read-out (:mod:`~fusion.adapt.readout`) and residual-GP (:mod:`~fusion.adapt.residual`) recipes."""

from fusion.adapt.training import (
    FREE,
    Constraint,
    FinetuneConfig,
    TrainConfig,
    choose_steps,
    finetune,
    recipe_for,
    relative_mse,
    train,
)

__all__ = [
    "FREE",
    "Constraint",
    "FinetuneConfig",
    "TrainConfig",
    "choose_steps",
    "finetune",
    "recipe_for",
    "relative_mse",
    "train",
]
