"""Runs whose parties mix architecture families: one warm starter per target family.

A run with ``[scenario] archs = ["mlp-100", "cnn-s", ...]`` draws each party's family from (seed, party id). Its
models travel as one stack, each row the party's flat vector of its own family zero-padded to the largest
family's size (:class:`fusion.layout.ModelLayout`). The fusion actor hands a strategy the stack with the layout
and each family's rows (``FitContext.groups``); the strategy's ``fit_mixed`` answers with a :class:`ByFamily`
warm starter that holds one warm starter per family a novel party may receive.

- :func:`each_family`: ``fit_mixed`` of strategies that work within one family (``nearest_task``, ``average``):
  the strategy fitted on the target family's own models.
- ``gp_refit`` fuses across families in function space (its own ``fit_mixed``): the outputs of every model on
  the probe inputs, each through its own family's forward pass (:func:`fusion.models.probe.probe_outputs`).
"""

from __future__ import annotations

import numpy as np

from fusion.models.spec import Spec, spec_from_state, spec_state
from fusion.strategies.base import FitContext, Strategy
from fusion.warm_start import WarmStarter, warm_starter_class


def rows_of(ctx: FitContext, spec: Spec) -> np.ndarray:
    """Positions of the models of family ``spec`` in a mixed fit (empty when the run has none of them)."""
    for rows, family in ctx.groups or ():
        if family == spec:
            return np.asarray(rows, np.int64)
    return np.zeros(0, np.int64)


class ByFamily(WarmStarter):
    """One warm starter per architecture family a novel party may receive (family name -> starter)."""

    kind = "by_family"

    def __init__(self, starters: dict[str, WarmStarter], specs: dict[str, Spec]) -> None:
        self.starters, self.specs = dict(starters), dict(specs)

    def for_family(self, spec: Spec) -> WarmStarter:
        if spec.family not in self.starters:
            raise ValueError(f"no warm starter of family {spec.family}; fitted: {', '.join(self.starters)}")
        return self.starters[spec.family]

    def predict(self, descriptors: np.ndarray) -> np.ndarray:
        if len(self.starters) != 1:
            raise ValueError(f"warm starts of several families ({', '.join(self.starters)}): ask for_family(spec)")
        return next(iter(self.starters.values())).predict(descriptors)

    def export(self) -> dict:
        names = list(self.starters)
        return {
            "families": names,
            "kinds": [self.starters[n].kind for n in names],
            "starters": [self.starters[n].export() for n in names],
            "specs": [spec_state(self.specs[n]) for n in names],
        }

    @classmethod
    def restore(cls, state: dict) -> ByFamily:
        names = list(state["families"])
        starters = {n: warm_starter_class(k).restore(s) for n, k, s in zip(names, state["kinds"], state["starters"])}
        return cls(starters, {n: spec_from_state(s) for n, s in zip(names, state["specs"])})

    def summary(self) -> dict:
        return {f"{n}.{k}": v for n, s in self.starters.items() for k, v in s.summary().items()}


def each_family(strategy: Strategy, models: np.ndarray, descriptors: np.ndarray, ctx: FitContext) -> ByFamily:
    """``strategy`` fitted, per target family, on that family's own models alone (unpacked)."""
    starters = {}
    for spec in ctx.layout.target_families:
        rows = rows_of(ctx, spec)
        if not len(rows):
            raise ValueError(f"strategy {strategy.name}: no training party of family {spec.family} to fuse")
        own = ctx.layout.unpack(models[rows], spec)
        starters[spec.family] = strategy.fit(own, descriptors[rows], ctx.family_context(spec))
    return ByFamily(starters, {s.family: s for s in ctx.layout.target_families})
