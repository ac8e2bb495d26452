"""``maml`` and ``maml_40_40``: MAML (Finn et al. 2017) meta-trained on the training parties' data.

Unlike fusion, MAML needs synchronized access to every training party's data: it is the peer that
breaks the privacy premise, reported for reference. Written with ``torch.func``: the inner loop is
one functional SGD step per task, vmapped over a meta-batch of tasks; the outer loop is Adam on the
shared init. The warm start is the meta-learned init for every descriptor (no personalization
before the shots).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fusion.adapt.optimizer import Optimizer
from fusion.adapt.train_config import TrainConfig
from fusion.lazy import torch
from fusion.models.params import forward
from fusion.models.spec import MLPSpec, Spec, spec_from_state, spec_state
from fusion.strategies.average import Constant
from fusion.strategies.base import FitContext, Strategy, register
from fusion.warm_start import WarmStarter


@dataclass(frozen=True)
class MAMLConfig:
    """``[fusion.maml]`` keys (``maml`` and ``maml_40_40``): the meta-training schedule."""

    meta_steps: int = 3000
    meta_batch: int = 25
    support: int = 10
    query: int = 10
    inner_lr: float = 0.01
    inner_steps: int = 1
    outer_lr: float = 0.001

    def __post_init__(self) -> None:
        for key in ("meta_steps", "meta_batch", "support", "query", "inner_steps"):
            if getattr(self, key) < 1:
                raise ValueError(f"fusion.maml.{key} must be >= 1, got {getattr(self, key)}")
        if not (self.inner_lr > 0 and self.outer_lr > 0):
            raise ValueError(f"fusion.maml.inner_lr and outer_lr must be > 0, got {self.inner_lr}, {self.outer_lr}")


class MAMLInit(Constant):
    """The meta-learned init, for every descriptor; carries its own architecture."""

    kind = "maml_init"

    def __init__(self, params: np.ndarray, spec: Spec) -> None:
        super().__init__(params)
        self.spec = spec

    def export(self) -> dict:
        return {**super().export(), **spec_state(self.spec)}

    @classmethod
    def restore(cls, state: dict) -> MAMLInit:
        return cls(state["params"].numpy(), spec_from_state(state))


def first_points(keys: torch.Tensor, real: torch.Tensor | None, k: int) -> torch.Tensor:
    """The ``k`` rows (b, k) with the smallest random ``keys`` (b, N), real rows (``real`` (b, N)) before padding."""
    if real is not None:
        keys = keys.masked_fill(~real, 2.0)  # keys are in [0, 1): padding sorts after every real row
    return torch.argsort(keys, dim=1)[:, :k]


def meta_train(
    spec: Spec,
    x: torch.Tensor,
    y: torch.Tensor,
    d: torch.Tensor,
    loss_fn,
    init: torch.Tensor,
    cfg: MAMLConfig,
    seed: int,
    real: torch.Tensor | None = None,
) -> torch.Tensor:
    """MAML over tasks ``x`` (n, N, in), ``y`` (n, N, out), descriptors ``d`` (n, dim): the init (n_params,).

    ``real`` (n, N) bool: which rows are data, not padding; support and query points are drawn from a task's
    real rows first (padding only fills in for a task with fewer than support + query points; the loss ignores it).
    """
    gen = torch.Generator().manual_seed(seed)
    n, n_points = x.shape[0], x.shape[1]

    def task_loss(theta, xs, ys, ds):
        return loss_fn(forward(theta[None], spec, xs[None]), ys[None], ds[None])[0]

    def adapted_query_loss(theta, xs, ys, xq, yq, ds):
        for _ in range(cfg.inner_steps):
            theta = theta - cfg.inner_lr * torch.func.grad(task_loss)(theta, xs, ys, ds)
        return task_loss(theta, xq, yq, ds)

    batched = torch.func.vmap(adapted_query_loss, in_dims=(None, 0, 0, 0, 0, 0))
    theta = init.clone()
    opt = Optimizer(TrainConfig(lr=cfg.outer_lr, decay=False), theta, cfg.meta_steps, fused=False)  # torch's ops
    for _ in range(cfg.meta_steps):
        tasks = torch.randint(n, (cfg.meta_batch,), generator=gen)
        keys = torch.rand(cfg.meta_batch, n_points, generator=gen)
        pts = first_points(keys, None if real is None else real[tasks], cfg.support + cfg.query)
        xb = torch.gather(x[tasks], 1, pts[..., None].expand(-1, -1, x.shape[2]))
        yb = torch.gather(y[tasks], 1, pts[..., None].expand(-1, -1, y.shape[2]))
        s, q = slice(0, cfg.support), slice(cfg.support, None)
        leaf = theta.detach().requires_grad_(True)
        (grad,) = torch.autograd.grad(batched(leaf, xb[:, s], yb[:, s], xb[:, q], yb[:, q], d[tasks]).mean(), leaf)
        opt.step(grad)
    return theta


class _MAML(Strategy):
    hidden: tuple[int, ...] | None = None  # None: the parties' own architecture
    settings_key, settings_class = "maml", MAMLConfig

    def fit(self, models, descriptors, ctx: FitContext) -> WarmStarter:
        if ctx.tasks is None:
            raise ValueError(f"strategy {self.name} needs the training parties' data (FitContext.tasks)")
        x, y, loss_fn, init_fn, real = ctx.tasks()
        spec = ctx.spec if self.hidden is None else MLPSpec((ctx.spec.fan_in, *self.hidden, ctx.spec.fan_out))
        init = init_fn(spec, torch.Generator().manual_seed(ctx.seed))
        d = torch.as_tensor(np.asarray(descriptors, np.float32))
        x, y, real = torch.as_tensor(x), torch.as_tensor(y), torch.as_tensor(real)
        theta = meta_train(spec, x, y, d, loss_fn, init, self.settings, ctx.seed, real)
        return MAMLInit(theta.numpy(), spec)


@register
class MAML(_MAML):
    name = "maml"


@register
class MAML4040(_MAML):
    name = "maml_40_40"
    hidden = (40, 40)
