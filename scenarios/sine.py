"""Sine regression ``y = a·sin(x + b)``: the paper's five-domain protocol and MAML's uniform family."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fusion.lazy import torch
from fusion.models.spec import MLPSpec
from scenarios.base import Scenario

# (phase, amplitude low, amplitude high) of the official code's five domains.
DOMAINS = (
    (0.0505, 0.10, 1.08),
    (0.9053, 1.08, 2.06),
    (1.5035, 2.06, 3.04),
    (2.4440, 3.05, 4.01),
    (2.9388, 4.03, 5.00),
)


@dataclass(frozen=True)
class SineOptions:
    """``[scenario]`` keys of the sine scenarios."""

    hidden: tuple[int, ...] = (100,)  # hidden widths: [1-100-1] by default
    train_points: int | tuple[int, int] = 100  # pretraining examples per party; [lo, hi]: each party's own count
    train_range: float = 10.0  # pretraining inputs x ~ U[-r, r]
    eval_points: int = 200  # evenly spaced evaluation inputs in [-5, 5]
    noise: float | tuple[float, float] = 0.0  # label noise std in the private data, relative to the amplitude;
    # [lo, hi]: each party's own level. Per-party draws come from the party's own data stream (seed, party id).

    def __post_init__(self) -> None:
        hidden = (self.hidden,) if isinstance(self.hidden, int) else tuple(self.hidden)
        object.__setattr__(self, "hidden", hidden)
        if not hidden or any(int(h) < 1 for h in hidden):
            raise ValueError(f"scenario.hidden must be positive widths, got {self.hidden}")
        for key in ("train_points", "noise"):
            value = getattr(self, key)
            if isinstance(value, (list, tuple)):
                if len(value) != 2 or value[0] > value[1]:
                    raise ValueError(f"scenario.{key} must be a number or [lo, hi] with lo <= hi, got {list(value)}")
                object.__setattr__(self, key, tuple(value))
        if self.point_range[0] < 1 or self.eval_points < 1:
            raise ValueError("scenario.train_points and scenario.eval_points must be >= 1")
        if self.train_range <= 0 or self.noise_range[0] < 0:
            raise ValueError("scenario.train_range must be > 0 and scenario.noise >= 0")

    @property
    def point_range(self) -> tuple[int, int]:
        lo, hi = self.train_points if isinstance(self.train_points, tuple) else (self.train_points,) * 2
        return int(lo), int(hi)

    @property
    def noise_range(self) -> tuple[float, float]:
        return tuple(map(float, self.noise)) if isinstance(self.noise, tuple) else (float(self.noise),) * 2


class SineScenario(Scenario):
    """Descriptor = (amplitude, phase); metric = RMSE / amplitude on 200 evenly spaced x in [-5, 5]."""

    metric_name = "nrmse"
    residual_shots = True
    lower_is_better = True
    eval_range = 5.0

    def __init__(self, options: SineOptions = SineOptions()) -> None:
        super().__init__(MLPSpec((1, *options.hidden, 1)))
        self.options = options

    def _sample(self, descriptor: np.ndarray, x: np.ndarray, rng: np.random.Generator | None = None, noise=0.0):
        a, b = descriptor
        y = a * np.sin(x + b)
        if rng is not None and noise > 0:
            y = y + noise * a * rng.standard_normal(y.shape)
        return x.astype(np.float32)[:, None], y.astype(np.float32)[:, None]

    def train_data(self, descriptor, rng):
        """``hi`` points per party; a party holding fewer (``train_points = [lo, hi]``) has its arrays padded
        with x = 0, y = NaN, which :meth:`loss` ignores."""
        (lo, hi), (n_lo, n_hi), r = self.options.point_range, self.options.noise_range, self.options.train_range
        n = lo if lo == hi else int(rng.integers(lo, hi + 1))
        noise = n_lo if n_lo == n_hi else float(rng.uniform(n_lo, n_hi))
        x, y = self._sample(descriptor, rng.uniform(-r, r, n), rng, noise)
        pad = hi - n
        return np.pad(x, ((0, pad), (0, 0))), np.pad(y, ((0, pad), (0, 0)), constant_values=np.nan)

    def shot_data(self, descriptor, k, rng):
        return self._sample(descriptor, rng.uniform(-self.eval_range, self.eval_range, k), None)

    def eval_data(self, descriptor, rng):
        return self._sample(descriptor, np.linspace(-self.eval_range, self.eval_range, self.options.eval_points), None)

    def init_params(self, generator):
        """Kinks spread over the input range: a random ReLU unit of the first layer breaks at a
        point drawn uniformly in [-r, r] with slope magnitude in [0.5, 1.5]. Far fewer dead or
        redundant units than the default init, so independent pretraining rarely stalls."""
        if len(self.spec.hidden) != 1:
            return super().init_params(generator)
        h, r = self.spec.hidden[0], self.options.train_range
        sign = torch.where(torch.rand(h, generator=generator) < 0.5, -1.0, 1.0)
        w = (torch.rand(h, generator=generator) + 0.5) * sign
        b = -w * (torch.rand(h, generator=generator) * 2 - 1) * r
        v = (torch.rand(h, generator=generator) * 2 - 1) / h**0.5
        return torch.cat([w, b, v, torch.zeros(1)])

    @classmethod
    def federated_defaults(cls, options):
        """SGD at lr 5·10⁻⁶ with momentum 0.9 for 1,000 rounds; Per-FedAvg's inner step α = 10⁻⁶.

        The loss is relative to the amplitude² (a ∈ [0.1, 5]) on inputs x ∈ [−10, 10], so the party of the
        smallest amplitude sets the step size: with 60 training parties whose smallest amplitude is ~0.11, SGD on
        minibatches of 10 diverged at lr 10⁻⁵ with or without momentum 0.9 (seeds 7, 13), and Per-FedAvg's inner
        step at α = 5·10⁻⁶ (its inner SGD step must keep α·λ below 1, not 2). 1,000 rounds · 0.2 of the parties ·
        10 minibatches of a party's 100 rows give every party the 2,000 steps of ``[pretrain]``. Measured on seeds
        other than 1: docs/federated.md."""
        return {"rounds": 1000, "lr": 5e-6, "momentum": 0.9, "per_fedavg": {"alpha": 1e-6}}

    def probe_inputs(self):
        # Unlabeled inputs over the tasks' query range [-5, 5] (offset from the evaluation grid).
        return np.linspace(-self.eval_range, self.eval_range, 256, dtype=np.float32)[:, None] + 0.01

    def truth_curve(self, descriptor):
        return self.eval_data(descriptor, None)

    def loss(self, pred, y, descriptors):
        # Normalized MSE over each party's real points (NaN targets are padding), scaled by its own amplitude
        # like the metric. The branch is on the options, not the data (MAML runs this loss under
        # torch.func.vmap): without per-party sizes nothing is padded, and the plain mean is cheaper.
        lo, hi = self.options.point_range
        if lo == hi:
            return ((pred - y) ** 2).mean(dim=(1, 2)) / descriptors[:, 0] ** 2
        real = ~torch.isnan(y)
        sq = ((pred - y.nan_to_num()) * real) ** 2
        return sq.sum(dim=(1, 2)) / real.sum(dim=(1, 2)).clamp_min(1) / descriptors[:, 0] ** 2

    def loss_grad(self, pred, y, descriptors):
        """:meth:`loss` and its gradient with respect to ``pred``, in closed form."""
        lo, hi = self.options.point_range
        if lo == hi:
            r = pred - y
            weight = descriptors[:, 0].square().mul_(r.shape[1] * r.shape[2]).reciprocal_()
        else:
            real = ~torch.isnan(y)
            r = (pred - y.nan_to_num()) * real
            weight = descriptors[:, 0].square().mul_(real.sum(dim=(1, 2)).clamp_min(1)).reciprocal_()
        losses = torch.linalg.vector_norm(r.flatten(1), dim=1).square_().mul_(weight)
        return losses, r.mul_(weight.mul_(2).view(-1, 1, 1))

    def real_rows(self, y):
        return ~np.isnan(y).any(axis=-1)

    def metric(self, pred, y, descriptors):
        return ((pred - y) ** 2).mean(dim=(1, 2)).sqrt() / descriptors[:, 0].abs()


class SineDomains(SineScenario):
    """The official protocol: five domains, each a fixed phase and an amplitude band."""

    name = "sine-domains"

    def descriptor(self, rng):
        phase, low, high = DOMAINS[rng.integers(len(DOMAINS))]
        return np.array([rng.uniform(low, high), phase])


class SineUniform(SineScenario):
    """MAML's family: a ~ U[0.1, 5], b ~ U[0, pi], pretraining on x in [-5, 5]."""

    name = "sine-uniform"

    def __init__(self, options: SineOptions = SineOptions(train_range=5.0)) -> None:
        super().__init__(options)

    def descriptor(self, rng):
        return np.array([rng.uniform(0.1, 5.0), rng.uniform(0.0, np.pi)])
