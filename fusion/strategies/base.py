"""The fusion-strategy interface and its registry.

A :class:`Strategy` turns the pretrained models of the training parties and their descriptors
into a :class:`WarmStarter`, which maps any descriptor to a model. Adding a strategy is one file
and one ``@register`` line.
"""

from __future__ import annotations

import dataclasses
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from fusion.matching.alignment import SolveMany, solve_many_serial
from fusion.matching.pfnm import PFNMConfig, SolveRect, solve_rect_serial
from fusion.metamodels.gp_config import GPConfig
from fusion.models.spec import Spec
from fusion.screening.outliers import OutlierConfig
from fusion.warm_start import WarmStarter

OUTPUT_KINDS = ("values", "logits")
REFIT_FROM = ("gp", "closer")


@dataclass(frozen=True)
class FusionConfig:
    """``[fusion]`` keys: the strategy used for the ``fusion`` method and the settings shared by strategies.

    ``settings``: each strategy's own settings dataclass by its table name (``[fusion.<settings_key>]``, e.g.
    ``[fusion.mfpl]``, ``[fusion.maml]``); a key left out gets that strategy's defaults.
    """

    strategy: str = "gp_refit"
    align_iters: int = 20
    gp: GPConfig = field(default_factory=GPConfig)
    refit_steps: int = 2000  # function-space refit of a warm start (strategies that refit)
    refit_lr: float = 0.003
    # where gp_refit's refit starts: "gp" the parameter-space GP's prediction; "closer" per party whichever of that and
    # the nearest pretrained model (same family) is closer on the probe to the predicted function
    refit_from: str = "gp"
    # nonparametric matching of models of different widths (runs with ``widths``); small sigma + normalizers:
    # the setting that opened separate atoms for trained sine units (docs/heterogeneity.md)
    pfnm: PFNMConfig = field(default_factory=lambda: PFNMConfig(sigma=0.05, empirical_bayes=True, normalizers=True))
    settings: Mapping[str, Any] = field(default_factory=dict)
    outliers: OutlierConfig = field(default_factory=OutlierConfig)  # garbage models left out before any fit

    def __post_init__(self) -> None:
        classes = settings_classes()
        unknown = sorted(set(self.settings) - set(classes))
        if unknown:
            raise ValueError(f"unknown strategy settings fusion.{unknown[0]}; known: {', '.join(sorted(classes))}")
        for key, value in self.settings.items():
            if not isinstance(value, classes[key]):
                raise ValueError(f"fusion.{key} must be a {classes[key].__name__}, got {type(value).__name__}")
        object.__setattr__(self, "settings", {k: self.settings.get(k) or c() for k, c in sorted(classes.items())})
        if self.strategy not in STRATEGIES:
            raise ValueError(f"unknown fusion strategy {self.strategy!r}; known: {', '.join(sorted(STRATEGIES))}")
        if self.align_iters < 1:
            raise ValueError(f"fusion.align_iters must be >= 1, got {self.align_iters}")
        if self.refit_steps < 0 or not self.refit_lr > 0:
            raise ValueError("fusion.refit_steps must be >= 0 and fusion.refit_lr > 0")
        if self.refit_from not in REFIT_FROM:
            raise ValueError(f"fusion.refit_from must be one of {', '.join(REFIT_FROM)}, got {self.refit_from!r}")


@dataclass
class FitContext:
    """What every strategy may use besides the models.

    ``solve_many`` solves square template assignments (:mod:`fusion.matching`); ``solve_rect`` solves the
    rectangular per-model problems of nonparametric matching (:data:`fusion.matching.pfnm.SolveRect`).
    ``probe``: unlabeled inputs (N, fan_in) where the scenario's tasks live, for strategies that
    compare models by their outputs (no labels, no private data: any party could publish them).
    ``tasks``: for baselines that need the training parties' data (MAML), a callable returning
    ``(x (n, N, in), y (n, N, ...), loss_fn(pred, y, descriptors) -> (P,), init_fn(spec, gen), real (n, N) bool)``
    in the order of the models (``real``: the rows that are data, not padding).
    ``widths``: in a run that mixes hidden widths, the width (n,) of each model; the models are then embedded at
    ``spec`` (the widest, :mod:`fusion.models.widths`), and only strategies with ``mixed_widths = True`` accept them.
    ``outputs``: what the models' outputs are, for strategies that combine them: ``"values"`` (regression:
    averaged as they are) or ``"logits"`` (classification over all outputs: combined as class probabilities).
    ``target``: the architecture the warm starts must have when it is not the models' own ``spec`` (another
    family); only strategies with ``cross_family = True`` accept it.
    ``families``: in a run that mixes architecture families, each family's spec and the rows of its models; the
    models are then packed (each row its family's flat vector, zero-padded to ``spec.n_params``,
    :mod:`fusion.strategies.by_family`), ``target_families`` are the families whose warm starts are asked for, and
    only strategies with ``mixed_families = True`` accept them (:func:`fusion.strategies.by_family.fit_strategy`).
    """

    spec: Spec
    seed: int = 0
    solve_many: SolveMany = solve_many_serial
    config: FusionConfig = field(default_factory=FusionConfig)
    probe: np.ndarray | None = None
    tasks: Callable[[], tuple] | None = None
    solve_rect: SolveRect = solve_rect_serial
    widths: np.ndarray | None = None
    cache: dict = field(default_factory=dict)  # work shared by strategies of one fit (e.g. the PFNM matching)
    outputs: str = "values"
    target: Spec | None = None
    families: tuple[tuple[Spec, np.ndarray], ...] | None = None
    target_families: tuple[Spec, ...] = ()

    def family_context(self, spec: Spec) -> FitContext:
        """This context for the models of one family ``spec`` alone (unpacked), warm starts of that family."""
        return dataclasses.replace(self, spec=spec, families=None, target=None, target_families=(), cache={})

    @property
    def target_spec(self) -> Spec:
        """The architecture of the warm starts: ``target``, or the models' own ``spec``."""
        return self.spec if self.target is None else self.target

    def __post_init__(self) -> None:
        if self.outputs not in OUTPUT_KINDS:
            raise ValueError(f"outputs must be one of {OUTPUT_KINDS}, got {self.outputs!r}")


class Strategy(ABC):
    """Fits a :class:`WarmStarter` from pretrained ``models`` (n, n_params) and ``descriptors`` (n, d).

    ``settings``: an instance of ``settings_class`` (its defaults when None), read from ``[fusion.<settings_key>]``;
    ``aligned=False`` (only where ``alignable``): the no-alignment ablation (``fusion_noalign``). Build strategies
    through :func:`fusion.methods.make_strategy`, which passes both.
    """

    name: str
    mixed_widths = False  # accepts models of different widths (FitContext.widths)
    alignable = False  # True: ``aligned=False`` gives the no-alignment ablation (``fusion_noalign``)
    needs_probe: bool = False  # True: ``fit`` needs ``FitContext.probe`` (unlabeled inputs)
    settings_key: str | None = None  # the ``[fusion.<key>]`` table of this strategy's own settings
    settings_class: type | None = None  # a frozen dataclass of those settings

    def __init__(self, settings: Any = None, aligned: bool = True) -> None:
        if not aligned and not self.alignable:
            raise ValueError(f"strategy {self.name} does not align, so it has no aligned=False variant")
        if settings is None and self.settings_class is not None:
            settings = self.settings_class()
        self.settings, self.aligned = settings, aligned

    cross_family = False  # makes warm starts of another architecture than the models' (FitContext.target)
    mixed_families = False  # fuses parties of several architecture families (FitContext.families): ``fit_mixed``

    def fit_mixed(self, models: np.ndarray, descriptors: np.ndarray, ctx: FitContext) -> WarmStarter:
        """Fit on packed ``models`` of mixed families (``ctx.families``): a warm starter per target family."""
        raise ValueError(f"strategy {self.name} cannot fuse parties of mixed architecture families")

    @abstractmethod
    def fit(self, models: np.ndarray, descriptors: np.ndarray, ctx: FitContext) -> WarmStarter: ...

    def require(self, ctx: FitContext) -> None:
        """Raise, before any long work, when ``ctx`` lacks what this strategy declares it needs."""
        if self.needs_probe and ctx.probe is None:
            raise ValueError(f"strategy {self.name} needs probe inputs from the scenario (FitContext.probe)")
        if ctx.target_spec != ctx.spec and not self.cross_family:
            raise ValueError(f"strategy {self.name} cannot make warm starts of another architecture ({ctx.target})")


STRATEGIES: dict[str, type[Strategy]] = {}


def register(cls: type[Strategy]) -> type[Strategy]:
    STRATEGIES[cls.name] = cls
    return cls


def settings_classes() -> dict[str, type]:
    """``[fusion.<key>]`` table name -> the settings dataclass of the strategies that read it."""
    return {c.settings_key: c.settings_class for c in STRATEGIES.values() if c.settings_key and c.settings_class}
