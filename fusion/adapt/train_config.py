"""The settings of training a stack (``[pretrain]``, the local steps of ``[federated]``) and of k-shot fine-tuning
(``[finetune]``): :class:`TrainConfig`, :class:`FinetuneConfig`."""

from __future__ import annotations

from dataclasses import dataclass

OPTIMIZERS = ("adam", "sgd")
RECIPES = ("auto", "steps", "residual_gp", "readout")


@dataclass(frozen=True)
class TrainConfig:
    """Full-batch ``optimizer`` (adam or sgd): ``steps`` steps at ``lr`` (cosine-decayed to lr/10 when ``decay``)."""

    steps: int = 1000
    lr: float = 0.01
    decay: bool = True
    optimizer: str = "adam"

    def __post_init__(self) -> None:
        if self.steps < 0:
            raise ValueError(f"steps must be >= 0, got {self.steps}")
        if not self.lr > 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {list(OPTIMIZERS)}, got {self.optimizer!r}")


@dataclass(frozen=True)
class FinetuneConfig(TrainConfig):
    """k-shot fine-tuning: at most ``steps`` steps, each party choosing how many from its own shots.

    With ``folds`` >= 2, every party runs k-fold cross-validation on its shots over the step counts
    0, ``every``, 2·``every``, …, ``steps`` and keeps the one with the lowest held-out loss (the smallest
    on ties), then trains on all its shots for that many steps. A warm start that the shots cannot
    improve is kept as it is (0 steps); a random init trains as long as it helps. A step count is taken only
    when its held-out loss decrease, fold by fold, is more than ``margin`` standard errors above zero
    (:func:`choose_steps`; 0 = the lowest mean loss). ``folds`` = 0 trains every party for ``steps`` steps.

    ``recipe``: ``"steps"`` is the above; ``"residual_gp"`` corrects the start by a GP over its errors at the
    shots and refits the last layer to it (:mod:`fusion.adapt.residual`; regression scenarios with a probe);
    ``"readout"`` first lets the last layer refit under priors toward the start compete with the start
    (:mod:`fusion.adapt.readout`); whole-model step counts (up to ``readout_steps`` of the ``steps``-step schedule)
    must then beat the chosen read-out by ``step_margin`` standard errors (a far richer move needs clearer evidence);
    ``"auto"`` takes ``residual_gp`` where the scenario supports it, ``readout`` for classifiers and ``steps``
    elsewhere (:func:`recipe_for`).
    """

    steps: int = 300
    lr: float = 0.01
    folds: int = 5
    every: int = 20
    margin: float = 2.0
    recipe: str = "auto"
    step_margin: float = 5.0  # "readout": the margin whole-model steps need over the chosen read-out
    readout_steps: int = 100  # "readout": whole-model step counts compared, up to this many (0: the read-out alone)
    # shots come in groups of this many consecutive examples (a classification scenario's draw: one per class);
    # a fold holds out whole groups, so every fold's fit keeps every class. Fewer than two groups: no fold
    # can be held out without removing a class, and the start is kept. The scenario sets it (shot_recipe).
    fold_group: int = 1

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.folds < 0 or self.folds == 1:
            raise ValueError(f"folds must be 0 (no selection) or >= 2, got {self.folds}")
        if self.margin < 0:
            raise ValueError(f"margin must be >= 0 (standard errors), got {self.margin}")
        if self.step_margin < 0:
            raise ValueError(f"step_margin must be >= 0 (standard errors), got {self.step_margin}")
        if self.readout_steps < 0:
            raise ValueError(f"readout_steps must be >= 0, got {self.readout_steps}")
        if self.every < 1:
            raise ValueError(f"every must be >= 1, got {self.every}")
        if self.fold_group < 1:
            raise ValueError(f"fold_group must be >= 1, got {self.fold_group}")
        if self.recipe not in RECIPES:
            raise ValueError(f"recipe must be one of {list(RECIPES)}, got {self.recipe!r}")

    def candidates(self) -> list[int]:
        return sorted({*range(0, self.steps + 1, self.every), self.steps})
