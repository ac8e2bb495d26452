"""A party's local training in one round: epochs of minibatches (or a number of steps), batched over the parties
of a shard.

The schedule (:class:`LocalTraining`). Party i holds n_i real rows: the first n_i rows of its stack, padding after
(what :class:`fusion.federated.base.LocalBatch` carries). With ``batch_size`` B > 0 its minibatches hold
b_i = min(B, n_i) rows each, taken in order from a stream of random permutations of its real rows (one permutation
per epoch, drawn from its own generator, :func:`fusion.federated.base.local_rng`); the last minibatch of the round
is completed from one more permutation, so every minibatch is full. The party takes

    ``local_steps`` steps when ``local_steps`` > 0, else ⌈local_epochs · n_i / (g · b_i)⌉ steps,

where g is the number of minibatches one step consumes (1; Per-FedAvg's step takes two, B1 and B2). With
``batch_size`` 0 every step sees all of the party's rows (padding included, which the task loss ignores): one step
per epoch, or ``local_steps``. Parties with more rows take more steps; a party whose steps are done is left as it
is while the others go on (the batch shrinks to the parties still training), so the parties of a shard stay one
batched program and a party's result does not depend on which other parties share its batch.

The optimizer (``optimizer``): SGD (``momentum`` as ``torch.optim.SGD``'s, no dampening) or Adam (torch's
defaults), element-wise per party. Its state starts fresh every round, like a party that starts from the model it
downloads; with ``[federated] optimizer_state = "persistent"`` each party's state (momentum buffer, Adam moments
and step count) is kept across rounds in the shard that hosts it (:class:`OptimizerMemory`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from fusion.adapt import FREE, Constraint
from fusion.lazy import torch
from fusion.models.params import loss_and_grad

OPTIMIZERS = ("sgd", "adam")

# (weights (m, P), minibatches [(x (m, W, in), y (m, W, ...))] * g, rows (m,) of the batch or None: all) -> a fresh
# gradient (m, P) (the loop updates it in place)
GradFn = Callable[["torch.Tensor", list, "torch.Tensor | None"], "torch.Tensor"]


@dataclass(frozen=True)
class LocalTraining:
    """One model's local training in a round (the module docstring): the budget (``epochs`` or ``steps``), the
    minibatch size (0: all rows) and the optimizer. Errors name the ``[federated]`` key."""

    epochs: int = 1
    steps: int = 0  # > 0: this many steps per round, whatever the party's size (epochs are then not used)
    batch_size: int = 10
    lr: float = 0.005
    momentum: float = 0.0
    optimizer: str = "sgd"

    def __post_init__(self) -> None:
        if self.epochs < 0:
            raise ValueError(f"federated.local_epochs must be >= 0, got {self.epochs}")
        if self.steps < 0:
            raise ValueError(f"federated.local_steps must be >= 0, got {self.steps}")
        if self.batch_size < 0:
            raise ValueError(f"federated.batch_size must be >= 0 (0: all of a party's rows), got {self.batch_size}")
        if not self.lr > 0:
            raise ValueError(f"federated.lr must be > 0, got {self.lr}")
        if not 0 <= self.momentum < 1:
            raise ValueError(f"federated.momentum must be in [0, 1), got {self.momentum}")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"federated.optimizer must be one of {list(OPTIMIZERS)}, got {self.optimizer!r}")
        if self.momentum and self.optimizer != "sgd":
            raise ValueError(f'federated.momentum is SGD\'s (optimizer = "sgd"), got optimizer = {self.optimizer!r}')

    def budget(self, epochs: int, steps: int) -> LocalTraining:
        """The same training with another budget: ``steps`` when > 0, else ``epochs`` (both 0: no training)."""
        return LocalTraining(0 if steps else epochs, steps, self.batch_size, self.lr, self.momentum, self.optimizer)

    def party_steps(self, counts, group: int = 1) -> np.ndarray:
        """Optimizer steps (n,) of parties with ``counts`` (n,) real rows; ``group`` minibatches per step."""
        counts = np.asarray(counts).astype(np.int64)
        if self.steps > 0:
            steps = np.full(len(counts), self.steps, np.int64)
        elif self.batch_size == 0:
            steps = np.full(len(counts), self.epochs, np.int64)
        else:
            b = np.maximum(np.minimum(self.batch_size, counts), 1)
            steps = -(-self.epochs * counts // (group * b))
        return np.where(counts > 0, steps, 0)


CHUNK_BYTES = 16 * 2**20  # parameters of the parties one local training holds at once (fits a CPU's last cache)


def party_chunks(counts, n_params: int, budget: int | None = None) -> list[np.ndarray]:
    """Positions of parties with ``counts`` (n,) real rows in groups trained one after another: each group's
    float32 parameters (``n_params`` per party) fit ``budget`` bytes, and parties of like size share a group (their
    step counts then agree, so the batch rarely shrinks to the few parties still training). A party's training does
    not depend on the other parties of its batch, so the grouping changes speed, not results. Small models (sine
    MLPs) stay one group: batching them is the point; a large CNN trains a few parties at a time, its weights hot in
    the cache instead of the whole stack streamed from memory every step. ``budget``: default :data:`CHUNK_BYTES`."""
    counts = np.asarray(counts)
    size = max(1, (CHUNK_BYTES if budget is None else budget) // max(1, 4 * int(n_params)))
    order = np.argsort(-counts, kind="stable")
    return [np.sort(order[i : i + size]) for i in range(0, len(order), size)]


@dataclass
class Plan:
    """The minibatches of one local training: ``steps`` (n,) per party; ``idx`` (S, g, n, W) the rows of each
    party's minibatches (None: every step sees all rows)."""

    steps: np.ndarray
    idx: torch.Tensor | None

    @property
    def length(self) -> int:
        return int(self.steps.max()) if len(self.steps) else 0

    def rows(self, step: int, device) -> torch.Tensor | None:
        """The parties (rows of the batch) still training at ``step``; None: all of them."""
        live = self.steps > step
        return None if live.all() else torch.as_tensor(np.flatnonzero(live), device=device)

    def minibatches(self, step: int, x: torch.Tensor, y: torch.Tensor, rows: torch.Tensor | None) -> list:
        """[(x (m, W, ...), y (m, W, ...))] * g of the parties ``rows`` (None: all) at ``step``."""
        if self.idx is None:
            return [(x, y) if rows is None else (x[rows], y[rows])]
        party = (torch.arange(len(x), device=x.device) if rows is None else rows)[:, None]
        out = []
        for idx in self.idx[step]:
            idx = idx if rows is None else idx[rows]
            out.append((x[party, idx], y[party, idx]))
        return out


def plan(
    train: LocalTraining,
    counts,
    width: int,
    rngs: list[np.random.Generator],
    group: int = 1,
    device="cpu",
    budget: tuple[np.ndarray, np.ndarray] | None = None,
    passes: int = 1,
) -> Plan:
    """The minibatches of parties with ``counts`` (n,) real rows in stacks of ``width`` rows, each party's drawn
    from its generator in ``rngs`` (which this advances). ``passes`` > 1 runs the budget that many times in a
    row, each pass with a stream of its own (as a client whose ``train()`` is called ``passes`` times).
    ``budget``: (done (n,), full (n,)) — a party finishes only ``done`` of the ``full`` steps of its round (a
    ``partial`` straggler on the simulated clock, :func:`fusion.system.party_times`), so each training takes
    ``steps · done // full`` of its steps (the first ones: the streams are drawn only as far as they are used)."""
    counts = np.asarray(counts).astype(np.int64)
    per_pass = train.party_steps(counts, group)
    steps = capped(per_pass * passes, budget)
    if train.batch_size == 0 or not len(counts) or steps.max() == 0:
        return Plan(steps, None)
    if (counts > width).any():
        raise ValueError(f"real sample counts {counts.tolist()} exceed the {width} rows of the parties' stacks")
    w = min(train.batch_size, width)
    idx = np.zeros((int(steps.max()), group, len(counts), w), np.int64)
    for i, (n_i, s_i, total, rng) in enumerate(zip(counts, per_pass, steps, rngs)):
        b, at = min(train.batch_size, int(n_i)), 0
        for _ in range(passes):
            take = min(int(s_i), int(total) - at)
            if take <= 0:
                break
            need = take * group * b
            stream = np.concatenate([rng.permutation(int(n_i)) for _ in range(-(-need // int(n_i)))])[:need]
            idx[at : at + take, :, i, :b] = stream.reshape(take, group, b)
            at += take
        idx[:at, :, i, b:] = n_i  # b < w: the party has fewer rows than the stack, row n_i is padding
    return Plan(steps, torch.as_tensor(idx, device=device))


def capped(steps: np.ndarray, budget: tuple[np.ndarray, np.ndarray] | None) -> np.ndarray:
    """``steps`` (n,) cut to the share ``done / full`` of each party's round it finishes (``budget``; None: all)."""
    if budget is None:
        return steps
    done, full = (np.asarray(b, np.int64) for b in budget)
    return np.where(full > 0, steps * np.minimum(done, full) // np.maximum(full, 1), steps)


class OptimizerMemory:
    """Each party's optimizer states kept across rounds (``optimizer_state = "persistent"``): ``rows`` one dict per
    party of the batch (its saved ``opt.<slot>.<name>`` tensors, empty when it has none yet). A party without a
    state gets zeros, which is a fresh optimizer."""

    PREFIX = "opt."

    def __init__(self, rows: list[dict]) -> None:
        self.rows, self.kept = rows, {}

    def load(self, slot: str, name: str, like: torch.Tensor) -> torch.Tensor:
        key = f"{self.PREFIX}{slot}.{name}"
        return torch.stack([r[key].to(like) if key in r else torch.zeros_like(like[0]) for r in self.rows])

    def keep(self, slot: str, state: dict) -> None:
        self.kept.update({f"{self.PREFIX}{slot}.{k}": v for k, v in state.items()})


class LocalOptimizer:
    """SGD (with ``momentum``) or Adam over a stack of models (n, P), each row its own optimizer; :meth:`step` may
    update a subset of the rows. Adam's step count is per row (a row's bias correction counts its own steps)."""

    def __init__(self, train: LocalTraining, weights: torch.Tensor, memory: OptimizerMemory | None, slot: str):
        self.train, self.weights = train, weights
        names = {"sgd": ("buf",) if train.momentum else (), "adam": ("m", "v", "t")}[train.optimizer]
        like = {"buf": weights, "m": weights, "v": weights, "t": weights[:, :1]}
        self.state = {
            k: memory.load(slot, k, like[k]) if memory is not None else torch.zeros_like(like[k]) for k in names
        }

    def step(self, grad: torch.Tensor, rows: torch.Tensor | None) -> None:
        """One step of the rows ``rows`` (None: all) along their gradient ``grad`` (m, P), which it may overwrite.
        torch.optim's arithmetic (SGD: ``w − lr · d``; Adam: its bias-corrected moments, eps 1e-8)."""
        cfg, s = self.train, self.state
        pick = (lambda t: t) if rows is None else (lambda t: t[rows])  # noqa: E731
        w = pick(self.weights)
        if cfg.optimizer == "sgd":
            if cfg.momentum:
                grad = pick(s["buf"]).mul_(cfg.momentum).add_(grad)
                self._put("buf", grad, rows)
            w = w.add_(grad, alpha=-cfg.lr)
        else:
            beta1, beta2, eps = 0.9, 0.999, 1e-8
            t = pick(s["t"]) + 1
            m = pick(s["m"]).lerp_(grad, 1 - beta1)
            v = pick(s["v"]).mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
            denom = v.clamp_min(torch.finfo(v.dtype).tiny).sqrt_().div_((1 - beta2**t).sqrt_()).add_(eps)
            w = w.addcdiv_(m * (cfg.lr / (1 - beta1**t)), denom, value=-1.0)
            for k, value in (("t", t), ("m", m), ("v", v)):
                self._put(k, value, rows)
        if rows is not None:
            self.weights.index_copy_(0, rows, w)

    def _put(self, key: str, value: torch.Tensor, rows: torch.Tensor | None) -> None:
        if rows is None:
            self.state[key] = value
        else:
            self.state[key].index_copy_(0, rows, value)


def task_grad(batch) -> GradFn:
    """The task loss's gradient of ``batch`` (a :class:`LocalBatch`) on minibatches (one per step)."""
    work: dict = {}

    def grad(w: torch.Tensor, parts: list, rows: torch.Tensor | None) -> torch.Tensor:
        loss = batch.loss if rows is None else batch.loss_of(batch.descriptors[rows])
        ((x, y),) = parts
        return loss_and_grad(w, batch.spec, x, y, loss, work)[1]

    return grad


def local_train(
    start: torch.Tensor,
    batch,
    train: LocalTraining | None = None,
    constraint: Constraint = FREE,
    slot: str = "w",
    grad: GradFn | None = None,
    group: int = 1,
    passes: int = 1,
) -> torch.Tensor:
    """Train ``start`` (n, P) on ``batch`` (a :class:`fusion.federated.base.LocalBatch`) by ``train`` (default:
    ``batch.train``); returns the trained stack. ``constraint``: a mask and/or a proximal pull (anchor (n, P));
    ``slot``: the name of this model's optimizer state (an algorithm that trains two models per round names them
    apart); ``grad``: the gradient of another loss (default: the task loss), fed ``group`` minibatches per step;
    ``passes``: the budget run that many times in a row (:func:`plan`), one optimizer throughout. Draws the
    minibatches from ``batch.rngs``; a party with a ``batch.budget`` trains its share of the steps."""
    train = batch.train if train is None else train
    weights = start.detach().clone()
    counts = batch.counts.detach().cpu().numpy()
    budget = getattr(batch, "budget", None)
    schedule = plan(train, counts, batch.x.shape[1], batch.rngs, group, batch.x.device, budget=budget, passes=passes)
    memory = getattr(batch, "memory", None)
    opt = LocalOptimizer(train, weights, memory, slot)
    gradient = grad if grad is not None else task_grad(batch)
    for step in range(schedule.length):
        rows = schedule.rows(step, weights.device)
        parts = schedule.minibatches(step, batch.x, batch.y, rows)
        w = weights if rows is None else weights[rows]
        g = gradient(w, parts, rows)
        if constraint is not FREE:
            g = (constraint if rows is None else constraint.rows(rows)).apply(g, w)
        opt.step(g, rows)
    if memory is not None:
        memory.keep(slot, opt.state)
    return weights
