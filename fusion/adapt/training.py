"""Batched training of many independent models as one tensor program.

Every party's loss depends only on its own slice of the stack, and Adam is element-wise, so
training ``P`` models together gives each one exactly the updates it would get alone.
"""

from __future__ import annotations

from collections.abc import Callable

from fusion.adapt.constraint import FREE, Constraint
from fusion.adapt.optimizer import Optimizer
from fusion.adapt.train_config import TrainConfig
from fusion.lazy import torch
from fusion.models.params import loss_and_grad
from fusion.models.spec import MLPSpec, Spec

LossFn = Callable[["torch.Tensor", "torch.Tensor"], "torch.Tensor"]  # (pred (P,N,out), y) -> (P,)
TaskLoss = Callable[["torch.Tensor", "torch.Tensor", "torch.Tensor"], "torch.Tensor"]  # (pred, y, descriptors) -> (P,)


def relative_mse(pred: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Squared error (P,) relative to each target's power: every target weighs alike, small or large."""
    return ((pred - y) ** 2).mean(dim=(1, 2)) / (y**2).mean(dim=(1, 2)).clamp_min(1e-12)


def train(
    params: torch.Tensor,
    spec: MLPSpec,
    x: torch.Tensor,
    y: torch.Tensor,
    loss_fn: LossFn,
    cfg: TrainConfig,
    at_steps: Callable[[int, torch.Tensor], None] | None = None,
    constraint: Constraint = FREE,
    stop: int | None = None,
) -> torch.Tensor:
    """Train a stack ``params`` (P, n_params) on ``x`` (P, N, in) (or (N, in) that every model shares), ``y``
    (P, N, ...); returns the new stack.

    ``at_steps(step, weights)``, if given, sees the weights before every step and after the last one (the live
    tensor, updated in place afterwards: copy what you keep). ``constraint``: a mask and/or a proximal pull.
    ``stop``: end after this many of the ``cfg.steps`` steps, the learning-rate schedule still that of ``cfg.steps``
    (so step t is the same step whatever ``stop``).
    """
    weights = params.detach().clone()
    steps = cfg.steps if x.shape[-2] > 0 else 0
    opt, work = Optimizer(cfg, weights, steps), {}  # work: activation buffers reused across steps
    free, grad = constraint is FREE, torch.empty_like(weights) if isinstance(spec, MLPSpec) else None
    steps = steps if stop is None else min(steps, stop)
    for step in range(steps):
        if at_steps is not None:
            at_steps(step, weights)
        grad = loss_and_grad(weights, spec, x, y, loss_fn, work, grad)[1]
        opt.step(grad if free else constraint.apply(grad, weights))
    if at_steps is not None:
        at_steps(steps, weights)
    return weights


def train_shared(
    params: torch.Tensor, spec: Spec, x: torch.Tensor, y: torch.Tensor, loss_fn: LossFn, cfg: TrainConfig
) -> torch.Tensor:
    """:func:`train` of a stack ``params`` (P, n_params) on inputs ``x`` (N, in) that every model shares (a probe),
    targets ``y`` (P, N, ...); returns the new stack.

    An MLP's input columns that are 0 at every input are left out of the training: the first-layer weights on them
    get no gradient, and Adam's (and SGD's) update of a weight whose gradient is always 0 is 0, so they keep their
    values; the other weights take the same steps as in :func:`train` of the whole net (up to the order of float
    additions). On MNIST probes (their blank border) that is a quarter of the first layer.
    """
    p, keep = len(params), x.ne(0).any(0)  # keep: (in,) the columns some input uses
    if not isinstance(spec, MLPSpec) or bool(keep.all()) or not bool(keep.any()):
        return train(params, spec, x.expand(p, *x.shape), y, loss_fn, cfg)
    narrow = MLPSpec((int(keep.sum()), *spec.widths[1:]), spec.activation)
    (w0, b0, _), (nw0, nb0, _) = spec.offsets[0], narrow.offsets[0]
    first = params[:, w0:b0].reshape(p, spec.widths[1], spec.widths[0])  # (P, out, in)
    start = torch.cat([first[:, :, keep].reshape(p, -1), params[:, b0:]], 1)
    tuned = train(start, narrow, x[:, keep], y, loss_fn, cfg)
    out = params.detach().clone()
    out[:, w0:b0].view(p, spec.widths[1], spec.widths[0])[:, :, keep] = tuned[:, nw0:nb0].view(p, spec.widths[1], -1)
    out[:, b0:] = tuned[:, nb0:]
    return out
