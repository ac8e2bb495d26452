"""Batched training of many independent models as one tensor program.

Every party's loss depends only on its own slice of the stack, and Adam is element-wise, so
training ``P`` models together gives each one exactly the updates it would get alone.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

from fusion import kernels, readout
from fusion.lazy import torch
from fusion.params import RowLoss, forward, loss_and_grad
from fusion.spec import MLPSpec

OPTIMIZERS = ("adam", "sgd")
RECIPES = ("auto", "steps", "residual_gp", "readout")
LossFn = Callable[["torch.Tensor", "torch.Tensor"], "torch.Tensor"]  # (pred (P,N,out), y) -> (P,)
TaskLoss = Callable[["torch.Tensor", "torch.Tensor", "torch.Tensor"], "torch.Tensor"]  # (pred, y, descriptors) -> (P,)


def relative_mse(pred: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Squared error (P,) relative to each target's power: every target weighs alike, small or large."""
    return ((pred - y) ** 2).mean(dim=(1, 2)) / (y**2).mean(dim=(1, 2)).clamp_min(1e-12)


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
    shots and refits the last layer to it (:mod:`fusion.residual`; regression scenarios with a probe);
    ``"readout"`` first lets the last layer refit under priors toward the start compete with the start
    (:mod:`fusion.readout`); whole-model step counts must then beat the chosen read-out by ``step_margin``
    standard errors (a far richer move needs clearer evidence);
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
        if self.every < 1:
            raise ValueError(f"every must be >= 1, got {self.every}")
        if self.fold_group < 1:
            raise ValueError(f"fold_group must be >= 1, got {self.fold_group}")
        if self.recipe not in RECIPES:
            raise ValueError(f"recipe must be one of {list(RECIPES)}, got {self.recipe!r}")

    def candidates(self) -> list[int]:
        return sorted({*range(0, self.steps + 1, self.every), self.steps})


class _Optimizer:
    """``torch.optim.Adam`` / ``SGD`` updates (no weight decay) of one tensor, with the cosine schedule.

    The same arithmetic as torch.optim with ``CosineAnnealingLR``'s closed form, as a few in-place
    ops per step: torch.optim's per-step Python costs more than the update itself for these small
    stacks of models.
    """

    def __init__(self, cfg: TrainConfig, weights: torch.Tensor, steps: int) -> None:
        self.cfg, self.weights, self.steps, self.t = cfg, weights, steps, 0
        if cfg.optimizer == "adam":
            self.m, self.v = torch.zeros_like(weights), torch.zeros_like(weights)
            self.denom = torch.empty_like(weights)  # kept: fresh pages each step cost more than the update
        self.fused = cfg.optimizer == "adam" and kernels.adam_applies(weights)  # one C pass (fusion.kernels)

    def lr(self) -> float:
        if not (self.cfg.decay and self.steps):
            return self.cfg.lr
        low = self.cfg.lr / 10
        return low + (self.cfg.lr - low) * (1 + math.cos(math.pi * self.t / self.steps)) / 2

    def step(self, grad: torch.Tensor) -> None:
        lr, self.t = self.lr(), self.t + 1
        if self.cfg.optimizer == "sgd":
            self.weights.add_(grad, alpha=-lr)
            return
        beta1, beta2, eps = 0.9, 0.999, 1e-8
        if self.fused and grad.is_contiguous():
            bc2 = math.sqrt(1 - beta2**self.t)
            kernels.adam_step(self.weights, grad, self.m, self.v, lr / (1 - beta1**self.t), beta1, beta2, bc2, eps)
            return
        self.m.lerp_(grad, 1 - beta1)
        self.v.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
        # torch.optim's order. The clamp changes no result (sqrt(tiny) / the bias correction is far below half an ulp
        # of eps) but keeps exact zeros (gradients of units that are off at every shot) out of sqrt: MKL's sqrt is
        # ~7x slower on a stack with 30% zeros (k-shot fine-tuning's folds).
        v = torch.clamp_min(self.v, torch.finfo(self.v.dtype).tiny, out=self.denom)
        denom = v.sqrt_().div_(math.sqrt(1 - beta2**self.t)).add_(eps)
        self.weights.addcdiv_(self.m, denom, value=-lr / (1 - beta1**self.t))


@dataclass(frozen=True)
class Constraint:
    """How a stack may move while it trains: only where ``mask`` (n_params,) is True, and pulled toward
    ``anchor`` (P, n_params) by ``prox``/2 · ‖w − anchor‖² (Ditto's personal objective; FedRep trains its head only).

    ``mask`` None: every parameter trains; ``prox`` 0: no pull (``anchor`` may be None).
    """

    mask: torch.Tensor | None = None
    prox: float = 0.0
    anchor: torch.Tensor | None = None

    def __post_init__(self) -> None:
        if self.prox < 0:
            raise ValueError(f"prox must be >= 0, got {self.prox}")
        if self.prox > 0 and self.anchor is None:
            raise ValueError("a proximal term needs its anchor")

    def apply(self, grad: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        if self.prox > 0:
            grad = grad.add_(weights - self.anchor, alpha=self.prox)
        if self.mask is not None:
            grad = grad.mul_(self.mask)
        return grad

    def repeat(self, g: int) -> Constraint:
        """The same constraint for a stack repeated ``g`` times (fold-major rows, as in :func:`finetune`)."""
        anchor = None if self.anchor is None else self.anchor.repeat(g, 1)
        return Constraint(self.mask, self.prox, anchor)


FREE = Constraint()


def train(
    params: torch.Tensor,
    spec: MLPSpec,
    x: torch.Tensor,
    y: torch.Tensor,
    loss_fn: LossFn,
    cfg: TrainConfig,
    at_steps: Callable[[int, torch.Tensor], None] | None = None,
    constraint: Constraint = FREE,
) -> torch.Tensor:
    """Train a stack ``params`` (P, n_params) on ``x`` (P, N, in), ``y`` (P, N, ...); returns the new stack.

    ``at_steps(step, weights)``, if given, sees the weights before every step and after the last one (the live
    tensor, updated in place afterwards: copy what you keep). ``constraint``: a mask and/or a proximal pull.
    """
    weights = params.detach().clone()
    steps = cfg.steps if x.shape[1] > 0 else 0
    opt, work = _Optimizer(cfg, weights, steps), {}  # work: activation buffers reused across steps
    free, grad = constraint is FREE, torch.empty_like(weights) if isinstance(spec, MLPSpec) else None
    for step in range(steps):
        if at_steps is not None:
            at_steps(step, weights)
        grad = loss_and_grad(weights, spec, x, y, loss_fn, work, grad)[1]
        opt.step(grad if free else constraint.apply(grad, weights))
    if at_steps is not None:
        at_steps(steps, weights)
    return weights


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

    train(params.repeat(g, 1), spec, rows(x, fit), rows(y, fit), g_loss, cfg, record, constraint.repeat(g))
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
    ``probe`` (M, in): given, the shots correct the start by :func:`fusion.residual.residual_gp` (the caller
    decides by :func:`recipe_for`), for MLPs whose constraint lets the last layer move and has no proximal pull
    (the read-out refit has no place for one: a pulled start takes the gradient steps below instead).
    """
    if probe is not None and isinstance(spec, MLPSpec) and _readout_free(constraint, spec) and constraint.prox == 0:
        from fusion.residual import residual_gp

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

    def keep(step: int, w: torch.Tensor) -> None:
        if step > 0:
            chosen[best == step] = w[best == step]

    if int(best.max()) > 0:  # the same schedule as in the folds, so step t means the same thing
        train(params, spec, x, y, task_loss, cfg, keep, constraint)
    return chosen
