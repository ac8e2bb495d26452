"""Evaluation of novel parties: every method's warm start, fine-tuned on k shots, scored on held-out data.

For each architecture the novel parties receive (:meth:`fusion.layout.ModelLayout.target_groups`), each method
gives every party its 0-shot model:

- ``cold_start``: the party's random init from its cold-start stream, at its own architecture (in a run of mixed
  widths its own width, embedded in the group's spec);
- a fitted warm starter (a fusion strategy's, or a federated algorithm's :class:`FederatedStart`): its prediction
  at the party's descriptor (in a run of mixed widths at the party's own width; a :class:`ByFamily` starter gives
  the group's family).

Warm starts of one architecture and one fine-tuning rule are fine-tuned as one batch (methods x parties); a
federated method with its own rule (a head only, a pull to an anchor, no tuning at all) is a batch of its own.
Everything a party draws (data, shots, cold start) derives from (seed, party id): any split of the parties into
calls gives the same numbers.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from fusion.adapt import FREE, Constraint, FinetuneConfig, finetune
from fusion.federated.base import FederatedStart
from fusion.layout import ModelLayout
from fusion.lazy import torch
from fusion.methods import COLD_START
from fusion.models.params import forward
from fusion.models.party_scores import party_scores
from fusion.models.spec import Spec
from fusion.strategies.by_family import ByFamily
from fusion.streams import InitFn, Stream, party_inits
from fusion.warm_start import WarmStarter, predict_all


class Task(Protocol):
    """What evaluation asks of a scenario (:class:`scenarios.Scenario` provides it)."""

    init_at: InitFn

    def party_descriptor(self, seed: int, party_id: int) -> np.ndarray: ...
    def party_eval_data(self, seed: int, party_id: int, descriptor: np.ndarray) -> tuple[np.ndarray, np.ndarray]: ...
    def party_shot_data(self, seed: int, party_id: int, descriptor: np.ndarray, k: int) -> tuple: ...
    def shot_recipe(self, cfg: FinetuneConfig) -> tuple[FinetuneConfig, np.ndarray | None]: ...
    def shot_examples(self, k: int) -> int: ...
    def loss(self, pred, y, descriptors): ...
    def metric(self, pred, y, descriptors): ...


@dataclass(frozen=True)
class Scores:
    """Long-form columns, one row per (method, shots, party): ``method``, ``shots``, ``party_id``, ``value``; and
    ``shown``: for the parties asked to be shown, each method's 0-shot models as ``{method: (spec, party ids (m,),
    params (m, spec.n_params))}`` (for plots: nobody computes a warm start again)."""

    method: list[str] = field(default_factory=list)
    shots: list[int] = field(default_factory=list)
    party_id: list[int] = field(default_factory=list)
    value: list[float] = field(default_factory=list)
    shown: dict[str, tuple[Spec, np.ndarray, np.ndarray]] = field(default_factory=dict)


def evaluate(
    task: Task,
    layout: ModelLayout,
    seed: int,
    fitted: dict[str, WarmStarter],
    methods: Sequence[str],
    shots: Sequence[int],
    ids: np.ndarray,
    finetune_cfg: FinetuneConfig,
    show: Sequence[int] = (),
    device: torch.device | str = "cpu",
) -> Scores:
    """Warm start novel parties ``ids`` with every one of ``methods`` (``fitted``: the warm starter of each but
    ``cold_start``), fine-tune on k shots for each k of ``shots`` and score on the party's held-out data.
    ``show``: party ids whose 0-shot models :attr:`Scores.shown` keeps."""
    out = Scores()
    ids = np.asarray(ids, np.int64)
    for rows, spec in layout.target_groups(seed, ids):
        starters = {m: f.for_family(spec) if isinstance(f, ByFamily) else f for m, f in fitted.items()}
        _evaluate_group(task, layout, seed, starters, methods, shots, ids[rows], spec, finetune_cfg, show, device, out)
    return out


LOCAL = "local"  # the participating protocol's row of each training party's own pretrained model


def participating(
    task: Task,
    layout: ModelLayout,
    seed: int,
    fitted: dict[str, WarmStarter],
    methods: Sequence[str],
    ids: np.ndarray,
    own: np.ndarray | None = None,
    device: torch.device | str = "cpu",
) -> Scores:
    """The participating protocol of the one-shot methods: training parties ``ids`` scored on their own held-out
    rows (``task.party_eval_data``), at 0 shots (``shots`` 0 in the returned rows).

    - each of ``methods`` that ``fitted`` holds as a one-shot warm starter (not a :class:`FederatedStart`): its warm
      start at the party's own descriptor (:meth:`WarmStarter.predict_participating`: fusion's meta-model at a
      descriptor it was fitted on, ``average`` the average of all models, ``nearest_task`` the nearest model of
      another party);
    - ``local`` (:data:`LOCAL`): the party's own pretrained model, row i of ``own`` (n, layout.spec.n_params), as
      it was uploaded; None: no such row.
    """
    out = Scores()
    ids = np.asarray(ids, np.int64)
    if not len(ids):
        return out
    desc = np.stack([task.party_descriptor(seed, i) for i in ids]).astype(np.float32)
    evals = [task.party_eval_data(seed, i, d) for i, d in zip(ids, desc)]

    def score(method: str, rows: np.ndarray, models: np.ndarray, spec: Spec) -> None:
        ex, ey = _stack([evals[r][0] for r in rows], device), _stack([evals[r][1] for r in rows], device)
        m, d = torch.as_tensor(models, device=device), torch.as_tensor(desc[rows], device=device)
        values = party_scores(task.metric, m, spec, ex, ey, d).cpu().numpy()
        out.method.extend([method] * len(rows))
        out.shots.extend([0] * len(rows))
        out.party_id.extend(ids[rows].tolist())
        out.value.extend(values.tolist())

    for method in methods:
        starter = fitted.get(method)
        if starter is None or isinstance(starter, FederatedStart):
            continue
        for rows, spec in layout.target_groups(seed, ids):
            one = starter.for_family(spec) if isinstance(starter, ByFamily) else starter
            score(method, rows, one.predict_participating(desc[rows]), getattr(one, "spec", spec))
    if own is not None:
        for rows, spec in layout.groups(seed, ids):
            score(LOCAL, rows, layout.unpack(np.asarray(own)[rows], spec), spec)
    return out


def cold_starts(task: Task, layout: ModelLayout, seed: int, ids: np.ndarray, spec: Spec) -> np.ndarray:
    """The 0-shot models (m, spec.n_params) of ``cold_start`` for novel parties ``ids`` that receive ``spec``."""
    return layout.novel(
        seed, ids, spec, lambda rows, own: party_inits(task.init_at, seed, ids[rows], Stream.COLD_START, own)
    )


def warm_starts(starters: list[WarmStarter], descriptors: np.ndarray, widths: np.ndarray | None) -> list[np.ndarray]:
    """Each starter's warm starts (m, n_params) at ``descriptors`` (m, d); ``widths`` (m,): each party's hidden width
    in a run of mixed widths (embedded at the run's widest), None otherwise."""
    if widths is None:
        return predict_all(starters, descriptors)
    return [s.predict_widths(descriptors, widths) for s in starters]


def _stack(arrays: list[np.ndarray], device) -> torch.Tensor:
    return torch.as_tensor(np.stack(arrays), device=device)


def _is_free(constraint: Constraint) -> bool:
    return constraint.mask is None and constraint.prox == 0


def _evaluate_group(task, layout, seed, starters, methods, shots, ids, spec, finetune_cfg, show, device, out) -> None:
    """:func:`evaluate` of novel parties ``ids`` that all receive models of ``spec``; appends to ``out``."""
    rows_shown = np.flatnonzero(np.isin(ids, np.asarray(show, np.int64)))
    if len(ids) == 0:
        return
    desc = np.stack([task.party_descriptor(seed, i) for i in ids]).astype(np.float32)
    evals = [task.party_eval_data(seed, i, d) for i, d in zip(ids, desc)]
    ex, ey = _stack([e[0] for e in evals], device), _stack([e[1] for e in evals], device)
    shot_sets = [task.party_shot_data(seed, i, d, max(shots)) for i, d in zip(ids, desc)]
    # The fitted methods' warm starts in one call: starters that share work (the refits of gp_refit's fusion and
    # fusion_noalign) run it as one batch.
    fitted = [m for m in methods if m != COLD_START and m in starters]
    predicted = dict(zip(fitted, warm_starts([starters[m] for m in fitted], desc, layout.widths_of(seed, ids))))
    batches: dict = {}
    for method in methods:
        rule = None  # None: the run's free fine-tuning; else (constraint, finetune) of a federated method
        if method == COLD_START:
            spec_m, start = spec, torch.as_tensor(cold_starts(task, layout, seed, ids, spec), device=device)
        else:
            starter = starters[method]
            spec_m = getattr(starter, "spec", spec)
            start = torch.as_tensor(predicted[method], device=device)
            if isinstance(starter, FederatedStart):
                constraint = starter.constraint_for(start) if starter.finetune else FREE
                if not (starter.finetune and _is_free(constraint)):
                    rule = (constraint, starter.finetune)
        if len(rows_shown):
            out.shown[method] = (spec_m, ids[rows_shown], start[rows_shown].cpu().numpy())
        key = (spec_m, None if rule is None else method)
        batches.setdefault(key, (rule or (FREE, True), []))[1].append((method, start))
    data = (ids, desc, ex, ey, shot_sets)
    for (spec_m, _), ((constraint, tune), members) in batches.items():
        _finetune_and_score(task, finetune_cfg, spec_m, members, data, shots, out, constraint, tune, device)


def _finetune_and_score(task, finetune_cfg, spec, members, data, shots, out, constraint, tune, device) -> None:
    """Fine-tune the warm starts of ``members`` [(method, (parties, n_params))] on k shots and score them.

    ``constraint``: how fine-tuning may move them (one method's own rule); ``tune`` False: the warm starts are
    scored as they are at every k.
    """
    ids, desc, ex, ey, shot_sets = data
    n_m, n_p = len(members), len(ids)
    ft_cfg, probe = task.shot_recipe(finetune_cfg)
    warm = torch.cat([start for _, start in members])  # (methods * parties, n_params), method-major
    d_all = torch.as_tensor(np.tile(desc, (n_m, 1)), device=device)
    rep = lambda t: t.repeat(n_m, *([1] * (t.dim() - 1)))  # noqa: E731
    for k in shots:
        if k == 0 or not tune:
            tuned = warm
        else:
            n = task.shot_examples(k)
            sx = rep(_stack([s[0][:n] for s in shot_sets], device))
            sy = rep(_stack([s[1][:n] for s in shot_sets], device))
            tuned = finetune(warm, spec, sx, sy, task.loss, d_all, ft_cfg, constraint, probe)
        with torch.no_grad():
            values = task.metric(forward(tuned, spec, rep(ex)), rep(ey), d_all).cpu().numpy()
        out.method.extend(m for m, _ in members for _ in range(n_p))
        out.shots.extend([k] * (n_m * n_p))
        out.party_id.extend(ids.tolist() * n_m)
        out.value.extend(values.tolist())
