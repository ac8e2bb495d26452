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

from fusion.layout import LayoutKind, ModelLayout
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
    ``outputs``: what the models' outputs are, for strategies that combine them: ``"values"`` (regression:
    averaged as they are) or ``"logits"`` (classification over all outputs: combined as class probabilities).
    ``layout``: the run's population layout (:class:`fusion.layout.ModelLayout`; default: every model and warm
    start of ``spec``), whose rows the models are; ``groups``: the (rows, spec) of each architecture among the
    models (:meth:`fusion.layout.ModelLayout.groups` of their parties; needed with mixed widths or families).
    :meth:`Strategy.fit_layout` hands a fit to the strategy's hook for the layout.
    """

    spec: Spec
    seed: int = 0
    solve_many: SolveMany = solve_many_serial
    config: FusionConfig = field(default_factory=FusionConfig)
    probe: np.ndarray | None = None
    tasks: Callable[[], tuple] | None = None
    solve_rect: SolveRect = solve_rect_serial
    cache: dict = field(default_factory=dict)  # work shared by strategies of one fit (e.g. the PFNM matching)
    outputs: str = "values"
    layout: ModelLayout | None = None
    groups: tuple[tuple[np.ndarray, Spec], ...] | None = None

    def __post_init__(self) -> None:
        if self.outputs not in OUTPUT_KINDS:
            raise ValueError(f"outputs must be one of {OUTPUT_KINDS}, got {self.outputs!r}")
        if self.layout is None:
            self.layout = ModelLayout(self.spec)
        if self.layout.spec != self.spec:
            raise ValueError(f"FitContext.spec {self.spec} is not the layout's row spec {self.layout.spec}")
        if self.groups is None and self.layout.kind in (LayoutKind.WIDTHS, LayoutKind.FAMILIES):
            raise ValueError(f"a fit of the {self.layout.kind.value} layout needs FitContext.groups")
        if self.groups is not None:
            self.groups = tuple((np.asarray(rows, np.int64), spec) for rows, spec in self.groups)

    def family_context(self, spec: Spec) -> FitContext:
        """This context for the models of one family ``spec`` alone (unpacked), warm starts of that family."""
        return dataclasses.replace(self, spec=spec, layout=ModelLayout(spec), groups=None, cache={})

    @property
    def target_spec(self) -> Spec:
        """The architecture of the warm starts when it is one for all (the layout's target, or ``spec``)."""
        return self.layout.target_spec

    @property
    def widths(self) -> np.ndarray | None:
        """In a fit of models of mixed hidden widths, the width (n,) of each model (embedded at ``spec``, the widest,
        :mod:`fusion.widths`); None otherwise."""
        if self.layout.kind is not LayoutKind.WIDTHS:
            return None
        widths = np.zeros(sum(len(rows) for rows, _ in self.groups), np.int64)
        for rows, spec in self.groups:
            widths[rows] = spec.widths[1]
        return widths


_HOOKS = {
    LayoutKind.UNIFORM: (None, "fit"),
    LayoutKind.WIDTHS: ("mixed_widths", "fit_widths"),
    LayoutKind.FAMILIES: ("mixed_families", "fit_mixed"),
    LayoutKind.CROSS: ("cross_family", "fit_cross"),
}
_REFUSALS = {
    "mixed_widths": "cannot fuse models of mixed hidden widths",
    "mixed_families": "cannot fuse parties of mixed architecture families",
    "cross_family": "cannot make warm starts of another architecture ({target})",
}


class Strategy(ABC):
    """Fits a :class:`WarmStarter` from pretrained ``models`` (n, n_params) and ``descriptors`` (n, d).

    ``settings``: an instance of ``settings_class`` (its defaults when None), read from ``[fusion.<settings_key>]``;
    ``aligned=False`` (only where ``alignable``): the no-alignment ablation (``fusion_noalign``). Build strategies
    through :func:`fusion.methods.make_strategy`, which passes both.

    :meth:`fit_layout` is the entry: it hands the fit to the hook of the context's layout — :meth:`fit` (one
    architecture), :meth:`fit_widths`, :meth:`fit_mixed` or :meth:`fit_cross` — after checking the capability flags,
    the one declaration of what a strategy supports (the run config reads them too). A strategy that sets a flag
    overrides its hook.
    """

    name: str
    alignable = False  # True: ``aligned=False`` gives the no-alignment ablation (``fusion_noalign``)
    needs_probe: bool = False  # True: ``fit`` needs ``FitContext.probe`` (unlabeled inputs)
    settings_key: str | None = None  # the ``[fusion.<key>]`` table of this strategy's own settings
    settings_class: type | None = None  # a frozen dataclass of those settings
    mixed_widths = False  # fuses models of different hidden widths: ``fit_widths``
    mixed_families = False  # fuses parties of several architecture families: ``fit_mixed``
    cross_family = False  # makes warm starts of another architecture than the models' (``fit_cross``, and a
    # target outside the families of ``fit_mixed``)

    def __init__(self, settings: Any = None, aligned: bool = True) -> None:
        if not aligned and not self.alignable:
            raise ValueError(f"strategy {self.name} does not align, so it has no aligned=False variant")
        if settings is None and self.settings_class is not None:
            settings = self.settings_class()
        self.settings, self.aligned = settings, aligned

    def __init_subclass__(cls, **kwargs) -> None:
        super().__init_subclass__(**kwargs)
        for flag, hook in _HOOKS.values():
            if flag and getattr(cls, flag) and getattr(cls, hook) is getattr(Strategy, hook):
                raise TypeError(f"{cls.__name__} sets {flag} = True, so it must override {hook}")

    def fit_layout(self, models: np.ndarray, descriptors: np.ndarray, ctx: FitContext) -> WarmStarter:
        """Fit on ``models`` (n, ctx.spec.n_params), rows of ``ctx.layout``, by the hook of that layout."""
        lacking = [flag for flag in ctx.layout.needs if not getattr(self, flag)]
        if lacking:
            refusal = _REFUSALS[lacking[0]].format(target=ctx.layout.target)
            raise ValueError(f"strategy {self.name} {refusal}")
        return getattr(self, _HOOKS[ctx.layout.kind][1])(models, descriptors, ctx)

    @abstractmethod
    def fit(self, models: np.ndarray, descriptors: np.ndarray, ctx: FitContext) -> WarmStarter:
        """Fit on models of one architecture ``ctx.spec``, warm starts of the same."""

    def fit_widths(self, models: np.ndarray, descriptors: np.ndarray, ctx: FitContext) -> WarmStarter:
        """Fit on models of mixed hidden widths (``ctx.widths``), embedded at ``ctx.spec`` (the widest): a warm
        starter whose ``predict_widths`` gives each party its own width."""
        raise NotImplementedError

    def fit_mixed(self, models: np.ndarray, descriptors: np.ndarray, ctx: FitContext) -> WarmStarter:
        """Fit on packed ``models`` of mixed families (``ctx.groups``): a warm starter per target family
        (``ctx.layout.target_families``), :class:`fusion.strategies.by_family.ByFamily`."""
        raise NotImplementedError

    def fit_cross(self, models: np.ndarray, descriptors: np.ndarray, ctx: FitContext) -> WarmStarter:
        """Fit on models of ``ctx.spec``: warm starts of another family, ``ctx.target_spec``."""
        raise NotImplementedError

    def require(self, ctx: FitContext) -> None:
        """Raise, before any long work, when ``ctx`` lacks what this strategy declares it needs."""
        if self.needs_probe and ctx.probe is None:
            raise ValueError(f"strategy {self.name} needs probe inputs from the scenario (FitContext.probe)")


STRATEGIES: dict[str, type[Strategy]] = {}


def register(cls: type[Strategy]) -> type[Strategy]:
    STRATEGIES[cls.name] = cls
    return cls


def settings_classes() -> dict[str, type]:
    """``[fusion.<key>]`` table name -> the settings dataclass of the strategies that read it."""
    return {c.settings_key: c.settings_class for c in STRATEGIES.values() if c.settings_key and c.settings_class}
