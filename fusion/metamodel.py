"""The GP meta-model: task descriptors -> model parameters, with gpytorch.

The (aligned) training models are centred and projected on their ``e`` leading principal
directions; the whitened scores are ``e`` outputs of one sparse GP over the standardized
descriptors (SGPR: ``gpytorch.kernels.InducingPointKernel`` over an ARD RBF kernel, Titsias'
collapsed bound). Kernel hyper-parameters, noise and inducing descriptors are trained by
maximizing that marginal-likelihood bound, until it stops improving. The predictive mean at a new
descriptor, mapped back through the components, is a model: the new task's parameters as a
kernel-weighted combination of related tasks'.

Cost per step O(n m^2 + n m e) for n tasks and m inducing points: thousands of parties are cheap.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import gpytorch
import numpy as np
import torch


@dataclass(frozen=True)
class GPConfig:
    """Hyper-parameters of the GP fit (all validated, all with working defaults)."""

    max_components: int = 32  # e: GP outputs (principal components of the parameters)
    explained_variance: float = 0.999  # keep components up to this share of variance
    inducing: int = 128  # inducing descriptors (all training descriptors when fewer)
    max_steps: int = 300  # Adam steps on the bound
    lr: float = 0.05
    tol: float = 1e-4  # stop when the bound improves less than this (relative) over 20 steps

    def __post_init__(self) -> None:
        if self.max_components < 1:
            raise ValueError(f"fusion.gp.max_components must be >= 1, got {self.max_components}")
        if not 0 < self.explained_variance <= 1:
            raise ValueError(f"fusion.gp.explained_variance must be in (0, 1], got {self.explained_variance}")
        if self.inducing < 1 or self.max_steps < 1:
            raise ValueError("fusion.gp.inducing and fusion.gp.max_steps must be >= 1")
        if not self.lr > 0 or self.tol < 0:
            raise ValueError("fusion.gp.lr must be > 0 and fusion.gp.tol >= 0")


def _kernel(dim: int) -> gpytorch.kernels.Kernel:
    return gpytorch.kernels.ScaleKernel(gpytorch.kernels.RBFKernel(ard_num_dims=dim))


class _SGPR(gpytorch.models.ExactGP):
    """One GP whose ``e`` outputs (rows of the targets) share kernel and noise."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, inducing: torch.Tensor, likelihood) -> None:
        super().__init__(x, y, likelihood)
        self.base = _kernel(x.shape[-1])
        self.covar_module = gpytorch.kernels.InducingPointKernel(self.base, inducing, likelihood)

    def forward(self, x: torch.Tensor) -> gpytorch.distributions.MultivariateNormal:
        return gpytorch.distributions.MultivariateNormal(torch.zeros_like(x[:, 0]), self.covar_module(x))


class GPMetaModel:
    """Fit with :meth:`fit`; :meth:`predict` maps descriptors (m, d) to parameters (m, D)."""

    def __init__(self, state: dict) -> None:
        self.state = state
        self.kernel = _kernel(state["x_mean"].shape[0]).double()
        self.kernel.load_state_dict(state["kernel"])
        self.kernel.eval()

    @classmethod
    def fit(cls, params: np.ndarray, descriptors: np.ndarray, cfg: GPConfig = GPConfig(), seed: int = 0) -> GPMetaModel:
        """``params`` (n, D) aligned models, ``descriptors`` (n, d)."""
        y = torch.as_tensor(np.asarray(params, dtype=np.float64))
        x = torch.as_tensor(np.asarray(descriptors, dtype=np.float64))
        n = len(y)
        x_mean, x_std = x.mean(0), x.std(0, unbiased=False).clamp_min(1e-8)
        xs = (x - x_mean) / x_std
        y_mean = y.mean(0)
        u, s, vt = torch.linalg.svd(y - y_mean, full_matrices=False)
        share = torch.cumsum(s**2, 0) / (s**2).sum().clamp_min(1e-30)
        e = int(min(cfg.max_components, int((share < cfg.explained_variance).sum()) + 1, n))
        scale = (s[:e] / n**0.5).clamp_min(1e-12)  # std of each component's scores
        scores = u[:, :e] * s[:e] / scale  # (n, e), unit variance per component
        gen = torch.Generator().manual_seed(seed)
        m = min(cfg.inducing, n)
        inducing = xs[torch.randperm(n, generator=gen)[:m]].clone()
        likelihood = gpytorch.likelihoods.GaussianLikelihood().double()
        model = _SGPR(xs, scores.T.contiguous(), inducing, likelihood).double()
        model.train()
        mll = gpytorch.mlls.ExactMarginalLogLikelihood(likelihood, model)
        opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
        history: list[float] = []
        with gpytorch.settings.cholesky_jitter(1e-6):
            for step in range(cfg.max_steps):
                opt.zero_grad()
                loss = -mll(model(xs), model.train_targets).mean()
                loss.backward()
                opt.step()
                history.append(loss.item())
                if step >= 40 and step % 20 == 0:
                    old = history[-21]
                    if old - history[-1] <= cfg.tol * max(abs(old), 1.0):
                        break
        z = model.covar_module.inducing_points.detach()
        noise = likelihood.noise.detach().squeeze()
        alpha = _sgpr_weights(model.base, xs, z, scores, noise)
        state = {
            "x_mean": x_mean,
            "x_std": x_std,
            "y_mean": y_mean,
            "components": vt[:e] * scale[:, None],  # (e, D): unit score -> parameters
            "inducing": z,
            "alpha": alpha,  # (m, e): predictive mean = K(x*, Z) @ alpha
            "kernel": model.base.state_dict(),
            "noise": noise,
            "objective": [-v for v in history],  # the bound per step, per output
            "config": asdict(cfg),
        }
        return cls(state)

    @torch.no_grad()
    def predict(self, descriptors: np.ndarray) -> np.ndarray:
        """GP predictive mean at ``descriptors`` (m, d), decoded into parameters (m, D) float32."""
        x = torch.as_tensor(np.asarray(descriptors, dtype=np.float64))
        xs = (x - self.state["x_mean"]) / self.state["x_std"]
        scores = self.kernel(xs, self.state["inducing"]).to_dense() @ self.state["alpha"]
        return (self.state["y_mean"] + scores @ self.state["components"]).numpy().astype(np.float32)

    @property
    def objective(self) -> list[float]:
        return self.state["objective"]


@torch.no_grad()
def _sgpr_weights(kernel, x: torch.Tensor, z: torch.Tensor, y: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """Titsias' predictive-mean weights: alpha = (noise K_zz + K_zx K_xz)^-1 K_zx y, (m, e)."""
    k_zz = kernel(z).to_dense()
    k_zx = kernel(z, x).to_dense()
    a = noise * k_zz + k_zx @ k_zx.T
    a = a + 1e-8 * a.diagonal().mean() * torch.eye(len(z), dtype=a.dtype)
    return torch.linalg.solve(a, k_zx @ y)
