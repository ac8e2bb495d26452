"""k-shot fine-tuning of warm starts: each party chooses, by cross-validation on its own shots, how many training
steps to take (:func:`choose_steps`), and the recipe (:func:`recipe_for`) decides what may move first: the read-out
(:mod:`fusion.adapt.readout`) or a GP correction of the start (:mod:`fusion.adapt.residual`)."""

from __future__ import annotations

from fusion.adapt import readout
from fusion.adapt.constraint import FREE, Constraint
from fusion.adapt.residual import residual_gp
from fusion.adapt.train_config import FinetuneConfig
from fusion.adapt.training import TaskLoss, train
from fusion.lazy import torch
from fusion.models.loss import RowLoss
from fusion.models.params import forward
from fusion.models.spec import MLPSpec


def _held_out_losses(params, spec, x, y, loss, descriptors, cfg, fit, val, candidates, constraint) -> torch.Tensor:
    """Train G folds of every party as one batch (fold-major rows: g * P + party) on shots ``fit`` (G, n_fit);
    returns each fold's held-out loss on shots ``val`` (G, n_val) at each candidate step: (G, P, C)."""
    g, p = len(fit), len(params)
    rows = lambda t, idx: t[:, idx].movedim(1, 0).flatten(0, 1)  # noqa: E731  (P, N, ...) -> (G * P, n_idx, ...)
    d_g = descriptors.repeat(g, *([1] * (descriptors.dim() - 1)))
    g_loss = RowLoss(loss, d_g)
    x_val, y_val = rows(x, val), rows(y, val)
    out = torch.zeros(g, p, len(candidates), dtype=torch.float64, device=params.device)

    def record(step: int, w: torch.Tensor) -> None:
        if step in candidates:
            with torch.no_grad():
                out[:, :, candidates.index(step)] = g_loss(forward(w, spec, x_val), y_val).view(g, p)

    fit_x, fit_y, start = rows(x, fit), rows(y, fit), params.repeat(g, 1)
    train(start, spec, fit_x, fit_y, g_loss, cfg, record, constraint.repeat(g), stop=max(candidates))
    return out


def choose_steps(
    held_out: torch.Tensor, candidates: list[int], margin: float, base: torch.Tensor | None = None
) -> torch.Tensor:
    """Each party's step count from its per-fold held-out losses (F, P, C): (P,) among ``candidates`` (the first
    is 0 steps: the start kept as it is).

    A step count qualifies when its loss decrease against 0 steps, paired fold by fold, is more than ``margin``
    standard errors above zero; the qualifying count with the lowest mean loss is chosen (0 steps when none
    qualifies). ``margin`` 0 picks the lowest mean loss; larger margins keep a warm start unless the held-out
    shots clearly prefer an update. ``base`` (F, P): the losses a step count must beat instead of 0 steps' (the
    read-out recipe's choice); 0 then means "not a step count".
    """
    losses = held_out.nan_to_num(float("inf"))
    mean = losses.mean(0)  # (P, C)
    ref = losses[:, :, :1] if base is None else base.nan_to_num(float("inf"))[..., None]
    gain = (ref - losses).nan_to_num(float("-inf"))  # (F, P, C), fold by fold
    se = gain.std(0) / len(losses) ** 0.5 if len(losses) > 1 else torch.zeros_like(mean)
    sure = gain.mean(0) - margin * se.nan_to_num(0.0) > 0
    sure[:, 0] = True
    best = torch.where(sure, mean, torch.full_like(mean, float("inf"))).argmin(dim=1)
    return torch.as_tensor(candidates, device=held_out.device)[best]


def recipe_for(cfg: FinetuneConfig, residual: bool, readout: bool) -> str:
    """The recipe ``cfg`` resolves to for a scenario that supports the residual GP (``residual``) and the read-out
    refit (``readout``: classifiers); config validation refuses an explicit recipe the scenario does not support."""
    if cfg.recipe != "auto":
        return cfg.recipe
    return "residual_gp" if residual else "readout" if readout else "steps"


def _readout_free(constraint: Constraint, spec: MLPSpec) -> bool:
    """Whether ``constraint`` lets the last layer move (the residual recipe moves nothing else)."""
    return constraint.mask is None or bool(constraint.mask[spec.offsets[-1][0] :].all())


def finetune(
    params: torch.Tensor,
    spec: MLPSpec,
    x: torch.Tensor,
    y: torch.Tensor,
    loss: TaskLoss,
    descriptors: torch.Tensor,
    cfg: FinetuneConfig,
    constraint: Constraint = FREE,
    probe: torch.Tensor | None = None,
) -> torch.Tensor:
    """Fine-tune ``params`` (P, n_params) on shots ``x`` (P, N, in), ``y`` (P, N, ...) by ``cfg``'s recipe.

    Every party's choice uses only its own shots, and the optimizer is element-wise: a party's result
    does not depend on which other parties share the batch. ``constraint``: what may move (e.g. a head
    only) and a proximal pull toward an anchor, for methods whose k-shot use says so.
    ``probe`` (M, in): given, the shots correct the start by :func:`fusion.adapt.residual.residual_gp` (the caller
    decides by :func:`recipe_for`), for MLPs whose constraint lets the last layer move and has no proximal pull
    (the read-out refit has no place for one: a pulled start takes the gradient steps below instead).
    """
    if probe is not None and isinstance(spec, MLPSpec) and _readout_free(constraint, spec) and constraint.prox == 0:
        return residual_gp(params, spec, x, y, torch.as_tensor(probe, device=params.device))
    task_loss = RowLoss(loss, descriptors)
    groups = -(-x.shape[1] // cfg.fold_group)  # shots of a group stay together (one per class: fold_group)
    if cfg.folds >= 2 and cfg.fold_group > 1 and groups < 2:
        return params.detach().clone()  # one shot per class: any held-out shot takes its class from the fit
    folds = min(cfg.folds, groups)
    heads = cfg.recipe == "readout" and _readout_free(constraint, spec)
    if folds < 2 or (cfg.steps == 0 and not heads):
        return train(params, spec, x, y, task_loss, cfg, constraint=constraint)
    candidates = cfg.candidates()
    if heads:  # the read-out recipe compares whole-model steps only up to readout_steps
        candidates = [c for c in candidates if c <= cfg.readout_steps]
    held_out, held_heads = [], []
    fold_of = (torch.arange(x.shape[1], device=x.device) // cfg.fold_group) % folds
    # Folds with the same number of held-out shots train as one batch (at most two groups).
    for size in sorted({int((fold_of == f).sum()) for f in range(folds)}):
        group = [f for f in range(folds) if int((fold_of == f).sum()) == size]
        val = torch.stack([torch.nonzero(fold_of == f).squeeze(1) for f in group])  # (G, size)
        fit = torch.stack([torch.nonzero(fold_of != f).squeeze(1) for f in group])  # (G, N - size)
        held_out.append(_held_out_losses(params, spec, x, y, loss, descriptors, cfg, fit, val, candidates, constraint))
        if heads:
            held_heads.append(readout.held_out_losses(params, spec, x, y, loss, descriptors, fit, val))
    held_out, chosen, base = torch.cat(held_out), params.detach().clone(), None
    if heads:  # the start or a read-out refit first; whole-model steps must then beat that choice
        options = torch.cat([held_out[:, :, :1], torch.cat(held_heads)], 2)  # (F, P, 1 + priors)
        prior = choose_steps(options, list(range(options.shape[2])), cfg.margin)
        rows = torch.nonzero(prior > 0).squeeze(1)
        if len(rows):
            chosen[rows] = readout.refit(params[rows], spec, x[rows], y[rows], loss, descriptors[rows], prior[rows] - 1)
        base = options.gather(2, prior[None, :, None].expand(len(options), -1, 1)).squeeze(2)
    best = choose_steps(held_out, candidates, cfg.step_margin if heads else cfg.margin, base)

    rows = torch.nonzero(best > 0).squeeze(1)  # the parties that take steps; alone, as in any batch
    steps = best[rows]

    def keep(step: int, w: torch.Tensor) -> None:
        if step > 0:
            chosen[rows[steps == step]] = w[steps == step]

    if len(rows):  # the same schedule as in the folds, so step t means the same thing
        part = (params[rows], spec, x[rows], y[rows], task_loss.rows(rows), cfg, keep, constraint.rows(rows))
        train(*part, stop=int(steps.max()))
    return chosen
