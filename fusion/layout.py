"""The population layout of a run: which architecture each party trains and each novel party receives, and how
the models of every party share one parameter stack.

A run's layout is one of four, built once from the scenario and the run config (:func:`scenarios.model_layout`)
and asked by every layer (party shards, the fusion actor, the strategies, the evaluation, the costs):

- ``UNIFORM``: every party and every novel party has the model ``spec``;
- ``WIDTHS`` (``widths = [...]``): single-hidden-layer nets whose hidden width each party draws from (seed, party
  id); a row of the stack is the widest net, a narrower one embedded with zero units (:mod:`fusion.widths`), and a
  novel party asks for a warm start at its own width;
- ``FAMILIES`` (``[scenario] archs`` with several entries): each party's architecture family drawn from (seed,
  party id); a row is the party's flat vector of its own family, zero-padded to ``spec`` (the largest family);
  a novel party receives its own drawn family, or ``target`` when the run names one;
- ``CROSS`` (``[scenario] target_arch`` other than the parties' one family): the parties share ``spec`` and novel
  parties receive ``target``.

Groups are ``(rows, spec)`` pairs: positions in the party ids asked about, and their architecture.

    >>> from fusion.spec import MLPSpec
    >>> layout = ModelLayout(MLPSpec((1, 12, 1)), widths=(6, 12))
    >>> layout.kind.name, layout.needs
    ('WIDTHS', ('mixed_widths',))
    >>> [(len(rows), str(spec)) for rows, spec in layout.width_groups(np.array([6, 12, 6]))]
    [(2, '1-6-1'), (1, '1-12-1')]
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum

import numpy as np

from fusion.lazy import torch
from fusion.models.spec import MLPSpec, Spec
from fusion.models.widths import at_width, embed, own_width
from fusion.streams import Stream, party_rng

Groups = list[tuple[np.ndarray, Spec]]
MakeFn = Callable[[np.ndarray, Spec], object]
"""``make(rows, spec) -> (len(rows), spec.n_params)`` array or tensor: the models of one group's parties."""


class LayoutKind(Enum):
    UNIFORM = "uniform"
    WIDTHS = "widths"
    FAMILIES = "families"
    CROSS = "cross"


# The strategy capability flag (fusion.strategies.base.Strategy) each layout asks for.
CAPABILITIES = {
    LayoutKind.WIDTHS: "mixed_widths",
    LayoutKind.FAMILIES: "mixed_families",
    LayoutKind.CROSS: "cross_family",
}


def party_widths(seed: int, ids: np.ndarray, widths: tuple[int, ...]) -> np.ndarray:
    """Hidden width of each party in ``ids`` when a run mixes ``widths``: (n,) int64, uniform from (seed, id)."""
    return np.array([widths[party_rng(seed, i, Stream.WIDTH).integers(len(widths))] for i in ids], np.int64)


def party_families(seed: int, ids: np.ndarray, n_families: int) -> np.ndarray:
    """Architecture family (index into ``[scenario] archs``) of each party in ``ids``: (n,) int64, uniform from
    (seed, party id)."""
    return np.array([party_rng(seed, i, Stream.FAMILY).integers(n_families) for i in ids], np.int64)


def _pad(params: np.ndarray, width: int) -> np.ndarray:
    """(n, p) -> (n, ``width``) float32, zero-padded after each row's ``p`` parameters."""
    params = np.asarray(params, np.float32)
    out = np.zeros((len(params), width), np.float32)
    out[:, : params.shape[1]] = params
    return out


def _cut(models: np.ndarray, spec: Spec) -> np.ndarray:
    """Padded rows (n, width) of family ``spec`` -> (n, spec.n_params)."""
    return np.ascontiguousarray(np.asarray(models)[:, : spec.n_params], dtype=np.float32)


@dataclass(frozen=True)
class ModelLayout:
    """``spec``: the architecture of a row of the parameter stack (the widest width, the largest family, or the one
    model); ``target``: the architecture every novel party receives when it is not its own (None: its own);
    ``widths``: the hidden widths parties draw from; ``families``: the architecture families parties draw from.

    Raises ``ValueError`` for combinations no run supports (widths with families or with a target family).
    """

    spec: Spec
    target: Spec | None = None
    widths: tuple[int, ...] = ()
    families: tuple[Spec, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "widths", tuple(int(w) for w in self.widths))
        object.__setattr__(self, "families", tuple(self.families) if len(self.families) > 1 else ())
        if self.target == self.spec and not self.families:
            object.__setattr__(self, "target", None)
        if self.widths and self.families:
            raise ValueError("scenario.archs with several families cannot be combined with widths")
        if self.widths and self.target is not None:
            raise ValueError("scenario.target_arch cannot be combined with widths")
        if self.widths and (not isinstance(self.spec, MLPSpec) or self.spec.n_layers != 2):
            raise ValueError(f"widths needs single-hidden-layer nets, got {self.spec}")
        if self.widths and at_width(self.spec, max(self.widths)) != self.spec:
            raise ValueError(f"the stack of widths {list(self.widths)} is the widest net, not {self.spec}")

    @property
    def kind(self) -> LayoutKind:
        if self.widths:
            return LayoutKind.WIDTHS
        if self.families:
            return LayoutKind.FAMILIES
        return LayoutKind.UNIFORM if self.target is None else LayoutKind.CROSS

    @property
    def needs(self) -> tuple[str, ...]:
        """The strategy capability flags a fit of this layout needs (a target outside the mixed families also asks
        for ``cross_family``)."""
        flags = (CAPABILITIES[self.kind],) if self.kind in CAPABILITIES else ()
        if self.kind is LayoutKind.FAMILIES and self.target is not None and self.target not in self.families:
            flags += ("cross_family",)
        return flags

    @property
    def target_spec(self) -> Spec:
        """The architecture novel parties receive when it is one for all: ``target``, else ``spec``."""
        return self.spec if self.target is None else self.target

    @property
    def target_families(self) -> tuple[Spec, ...]:
        """Every architecture a novel party of this run may receive."""
        return self.families if self.families and self.target is None else (self.target_spec,)

    # -- which party has which architecture ------------------------------------------------------------------

    def widths_of(self, seed: int, ids: np.ndarray) -> np.ndarray | None:
        """The hidden width (n,) of each of parties ``ids`` in a run of mixed widths; None in other runs."""
        return party_widths(seed, ids, self.widths) if self.widths else None

    def width_groups(self, widths: np.ndarray) -> Groups:
        """(rows, spec at that width) per hidden width of models of ``widths`` (n,)."""
        widths = np.asarray(widths)
        return [(np.flatnonzero(widths == w), at_width(self.spec, int(w))) for w in np.unique(widths)]

    def groups(self, seed: int, ids: np.ndarray) -> Groups:
        """(rows of ``ids``, spec) per architecture the parties ``ids`` train: their hidden width, their family, or
        ``spec`` for all."""
        if self.widths:
            return self.width_groups(self.widths_of(seed, ids))
        return self.family_groups(seed, ids)

    def family_groups(self, seed: int, ids: np.ndarray) -> Groups:
        """(rows of ``ids``, spec) per architecture of the parties' models as they travel: their own family; models
        of mixed widths travel embedded at ``spec``, one group."""
        if not self.families:
            return [(np.arange(len(ids)), self.spec)]
        fam = party_families(seed, ids, len(self.families))
        return [(np.flatnonzero(fam == f), self.families[f]) for f in np.unique(fam)]

    def target_groups(self, seed: int, ids: np.ndarray) -> Groups:
        """(rows of ``ids``, spec) per architecture the novel parties ``ids`` receive, as their warm starts travel:
        ``target`` for all, their own drawn family, or ``spec`` (mixed widths: each party's width embedded)."""
        if self.families and self.target is None:
            return self.family_groups(seed, ids)
        return [(np.arange(len(ids)), self.target_spec)]

    # -- the rows of the parameter stack ---------------------------------------------------------------------

    def pack(self, params, spec: Spec) -> np.ndarray:
        """Models (n, spec.n_params) of one of :meth:`groups`' architectures -> rows (n, self.spec.n_params)
        float32: a narrower net embedded with zero units, a family's vector zero-padded, ``spec``'s own unchanged."""
        params = np.asarray(params, np.float32)
        if self.widths:
            return embed(params, spec, self.spec.widths[1])
        if self.families:
            return _pad(params, self.spec.n_params)
        return params

    def unpack(self, rows: np.ndarray, spec: Spec) -> np.ndarray:
        """The inverse of :meth:`pack`: rows (n, self.spec.n_params) of parties of architecture ``spec`` ->
        (n, spec.n_params) float32."""
        if self.widths:
            return own_width(rows, self.spec, spec.widths[1])
        if self.families:
            return _cut(rows, spec)
        return np.asarray(rows, np.float32)

    def stack(self, seed: int, ids: np.ndarray, make: MakeFn) -> np.ndarray:
        """Rows (n, spec.n_params) of parties ``ids``: ``make(rows, spec)`` per architecture of :meth:`groups`
        (one batch each), packed."""
        out = np.zeros((len(ids), self.spec.n_params), np.float32)
        for rows, spec in self.groups(seed, ids):
            out[rows] = self.pack(_numpy(make(rows, spec)), spec)
        return out

    def novel(self, seed: int, ids: np.ndarray, spec: Spec, make: MakeFn) -> np.ndarray:
        """Models (n, spec.n_params) of novel parties ``ids`` that receive ``spec`` (one of :meth:`target_groups`),
        each made at its own architecture: ``make(rows, own spec)`` per hidden width in a run of mixed widths
        (embedded in ``spec``), else ``make(all rows, spec)``."""
        if not self.widths:
            return _numpy(make(np.arange(len(ids)), spec))
        return self.stack(seed, ids, make)


def _numpy(models) -> np.ndarray:
    """A tensor (any device) or array of models as a float32 array."""
    if isinstance(models, torch.Tensor):
        models = models.detach().cpu().numpy()
    return np.asarray(models, np.float32)
