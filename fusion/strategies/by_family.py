"""Runs whose parties mix architecture families: packed model rows and one warm starter per target family.

A run with ``[scenario] archs = ["mlp-100", "cnn-s", ...]`` draws each party's family from (seed, party id). Its
models travel as one stack: each row is the party's flat parameter vector of its own family, zero-padded to the
largest family's size (:func:`pack`; :func:`unpack` cuts a family's rows back). The fusion actor hands a
strategy the packed stack with :attr:`FitContext.families` (each family's spec and rows); the strategy answers
with a :class:`ByFamily` warm starter that holds one warm starter per family a novel party may receive.

- :func:`each_family`: the default for strategies that work within one family (``nearest_task``, ``average``):
  the strategy fitted on the target family's own models.
- ``gp_refit`` fuses across families in function space (its own ``fit_mixed``): the outputs of every model on
  the probe inputs, each through its own family's forward pass (:func:`fusion.models.probe.probe_outputs`).
"""

from __future__ import annotations

import numpy as np

from fusion.models.spec import Spec, spec_from_state, spec_state
from fusion.strategies.base import FitContext, Strategy
from fusion.warm_start import WarmStarter, warm_starter_class


def pack(params: np.ndarray, width: int) -> np.ndarray:
    """(n, p) -> (n, ``width``) float32, zero-padded after each row's ``p`` parameters."""
    params = np.asarray(params, np.float32)
    out = np.zeros((len(params), width), np.float32)
    out[:, : params.shape[1]] = params
    return out


def unpack(models: np.ndarray, spec: Spec) -> np.ndarray:
    """Packed rows (n, width) of family ``spec`` -> (n, spec.n_params)."""
    return np.ascontiguousarray(np.asarray(models)[:, : spec.n_params], dtype=np.float32)


def rows_of(ctx: FitContext, spec: Spec) -> np.ndarray:
    """Positions of the models of family ``spec`` in a mixed fit (empty when the run has none of them)."""
    for family, rows in ctx.families or ():
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
    for spec in ctx.target_families:
        rows = rows_of(ctx, spec)
        if not len(rows):
            raise ValueError(f"strategy {strategy.name}: no training party of family {spec.family} to fuse")
        starters[spec.family] = strategy.fit(unpack(models[rows], spec), descriptors[rows], ctx.family_context(spec))
    return ByFamily(starters, {s.family: s for s in ctx.target_families})


def fit_strategy(strategy: Strategy, models: np.ndarray, descriptors: np.ndarray, ctx: FitContext) -> WarmStarter:
    """``strategy.fit``, or in a run of mixed families (``ctx.families``) its ``fit_mixed``."""
    if ctx.families is None:
        return strategy.fit(models, descriptors, ctx)
    if not strategy.mixed_families:
        raise ValueError(f"strategy {strategy.name} cannot fuse parties of mixed architecture families")
    return strategy.fit_mixed(models, descriptors, ctx)
