"""Builders the tests share: tiny models, descriptors, fit contexts and fast fusion configs (no Ray)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from fusion.metamodels.gp_config import GPConfig
from fusion.metamodels.mfpl_config import MFPLConfig
from fusion.models.params import forward, init_params, permute
from fusion.models.spec import MLPSpec, Spec
from fusion.strategies import FitContext, FusionConfig
from fusion.strategies.maml import MAMLConfig

SPEC = MLPSpec((1, 12, 1))  # the regression net of the strategy tests

# A fusion config whose fits are good enough to check what a strategy computes (refits reach 0.05 on the outputs)
FAST = FusionConfig(
    gp=GPConfig(max_steps=30, inducing=16),
    refit_steps=300,
    settings={
        "mfpl": MFPLConfig(
            base_dim=2, task_dim=4, hidden=16, inducing=8, max_steps=200, window=25, lr=0.02, alternations=2
        )
    },
)

# A fusion config whose fits only need to run: every strategy builds, fits and predicts in about a second
TINY = FusionConfig(
    gp=GPConfig(max_steps=10, inducing=8),
    align_iters=2,
    refit_steps=20,
    settings={
        "mfpl": MFPLConfig(base_dim=2, task_dim=2, hidden=8, inducing=4, max_steps=20, window=5, alternations=1),
        "maml": MAMLConfig(meta_steps=3, meta_batch=4, support=3, query=3),
    },
)

GRID = torch.linspace(-2, 2, 25)[:, None]  # where the outputs of SPEC models are compared


def random_stack(spec: Spec, n: int, seed: int = 0) -> np.ndarray:
    """``n`` independent inits of ``spec``: (n, n_params) float32."""
    gen = torch.Generator().manual_seed(seed)
    return torch.stack([init_params(spec, gen) for _ in range(n)]).numpy()


def descriptors(n: int, seed: int, dim: int = 2) -> np.ndarray:
    """``n`` task descriptors uniform in [0, 1)^dim: (n, dim)."""
    return np.random.default_rng(seed).uniform(size=(n, dim))


def permuted_copies(base: np.ndarray, spec: Spec, n: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` copies of the model ``base`` (1, n_params), each with its hidden units in a random order: (n, n_params).
    Every copy computes the function of ``base``."""
    perms = [np.stack([rng.permutation(width) for _ in range(n)]) for width in spec.hidden]
    return permute(np.repeat(base, n, 0), spec, perms)


def fit_context(config: FusionConfig = FAST, spec: Spec = SPEC) -> FitContext:
    """A regression fit context for SPEC-like (1-input) models, with 16 probe inputs on [-2, 2]."""
    return FitContext(spec, seed=0, config=config, probe=np.linspace(-2, 2, 16, dtype=np.float32)[:, None])


def outputs(params: np.ndarray, spec: Spec = SPEC) -> torch.Tensor:
    """The functions of models ``params`` (m, n_params) on GRID: (m, 25, 1)."""
    return forward(torch.as_tensor(params), spec, GRID)


def tasks(spec: MLPSpec, kind: str, n: int, gen: torch.Generator) -> Callable[[], tuple]:
    """``FitContext.tasks`` for ``n`` parties of 8 examples each: regression on a sine (``kind = "values"``) or
    classification over all outputs (``"logits"``)."""
    x = torch.randn(n, 8, spec.widths[0], generator=gen)
    if kind == "logits":
        y = torch.randint(spec.widths[-1], (n, 8, 1), generator=gen).float()

        def loss(pred, y, _d):
            flat = torch.nn.functional.cross_entropy(pred.flatten(0, 1), y.long().flatten(), reduction="none")
            return flat.view(len(pred), -1).mean(1)
    else:
        y = torch.sin(x.sum(-1, keepdim=True))

        def loss(pred, y, _d):
            return ((pred - y) ** 2).mean((1, 2))

    real = torch.ones(n, 8, dtype=torch.bool)
    return lambda: (x, y, loss, lambda s, g: init_params(s, g), real)
