"""The GP meta-model: task descriptors -> model parameters, with gpytorch.

The (aligned) training models are centred and projected on their ``e`` leading principal
directions; the whitened scores are ``e`` outputs of one sparse GP over the standardized
descriptors (SGPR over an ARD RBF kernel, plus a linear kernel with ``kernel = "rbf+linear"``; Titsias'
collapsed bound). Kernel hyper-parameters, noise and inducing descriptors are trained by
maximizing that marginal-likelihood bound, until it stops improving. The predictive mean at a new
descriptor, mapped back through the components, is a model: the new task's parameters as a
kernel-weighted combination of related tasks'.

Cost per step O(n m^2 + n m e) for n tasks and m inducing points: thousands of parties are cheap.
"""

from __future__ import annotations

from dataclasses import asdict

import gpytorch
import numpy as np
import torch
from torch.autograd.function import once_differentiable

from fusion.adapt.optimizer import Optimizer
from fusion.adapt.train_config import TrainConfig
from fusion.metamodels.gp_config import KERNELS, GPConfig


def _base_kernel(dim: int, kernel: str = "rbf") -> gpytorch.kernels.Kernel:
    """Unit-scale ARD RBF kernel shared by all outputs (each output has its own scale and noise); with
    ``kernel = "rbf+linear"`` plus a linear kernel of its own variance (a descriptor-to-model map that is close to
    linear, which an RBF kernel of a few lengthscales shrinks toward the mean far from the training tasks)."""
    if kernel not in KERNELS:
        raise ValueError(f"fusion.gp.kernel must be one of {', '.join(KERNELS)}, got {kernel!r}")
    rbf = gpytorch.kernels.RBFKernel(ard_num_dims=dim)
    if kernel == "rbf":
        return rbf
    linear = gpytorch.kernels.LinearKernel()
    linear.variance = 1.0 / dim  # a linear share comparable to the RBF's unit scale on standardized descriptors
    return rbf + linear


class _LogdetQuad(torch.autograd.Function):
    """``logdet(I + r_c K)`` and ``v_c^T (I + r_c K)^-1 v_c`` for every output ``c`` from one eigh of ``K``.

    ``K`` (m, m) symmetric PSD, ``r`` (e,) > 0, ``v`` (m, e). With ``K = Q diag(l) Q^T`` both are sums
    over the eigenvalues, and so are their gradients, written out in :meth:`backward` (autograd
    through ``e`` batched Choleskys costs ~3× more per step; through eigh it is unstable for the
    clustered eigenvalues of a low-rank ``K``).
    """

    @staticmethod
    def forward(ctx, k: torch.Tensor, r: torch.Tensor, v: torch.Tensor):
        lam, q = torch.linalg.eigh(k)
        lam = lam.clamp_min(0)
        u = q.T @ v  # (m, e)
        d = 1 / (1 + lam[:, None] * r)  # (m, e): eigenvalues of (I + r_c K)^-1
        ctx.save_for_backward(lam, q, r, u, d)
        return -torch.log(d).sum(0), (u**2 * d).sum(0)

    @staticmethod
    @once_differentiable  # first derivatives only (the bound is optimized with Adam)
    def backward(ctx, g_logdet: torch.Tensor, g_quad: torch.Tensor):
        lam, q, r, u, d = ctx.saved_tensors
        w = d * u  # columns: Q^T (I + r_c K)^-1 v_c
        g_r = g_logdet * (lam[:, None] * d).sum(0) - g_quad * (lam[:, None] * w**2).sum(0)
        # d logdet_c / dK = r_c (I + r_c K)^-1;  d quad_c / dK = -r_c (B_c^-1 v_c)(B_c^-1 v_c)^T
        inner = torch.diag((d * (g_logdet * r)).sum(1)) - (w * (g_quad * r)) @ w.T
        g_k = q @ inner @ q.T
        g_v = q @ (2 * w * g_quad)  # d quad_c / dv_c = 2 B_c^-1 v_c
        return g_k, g_r, g_v


class _CollapsedSGPR(torch.nn.Module):
    """Titsias' collapsed bound for ``e`` outputs sharing lengthscales and inducing points.

    Output ``c`` has covariance ``s_c K0`` and noise ``sigma_c^2``; ``A0 = L^-1 K0(Z, X)`` is computed
    once for all outputs, and so is one eigendecomposition of ``A0 A0^T``: a step costs
    O(n m^2 + m^3 + e m^2).
    """

    def __init__(self, x: torch.Tensor, y: torch.Tensor, inducing: torch.Tensor, kernel: str = "rbf") -> None:
        super().__init__()
        self.x, self.y = x, y  # (n, d), (n, e)
        self.kernel = _base_kernel(x.shape[-1], kernel).to(x.dtype)
        self.inducing = torch.nn.Parameter(inducing.clone())
        var = y.var(0, unbiased=False).clamp_min(1e-12)
        positive = gpytorch.constraints.Positive()
        self.positive = positive
        self.raw_scale = torch.nn.Parameter(positive.inverse_transform(var.clone()))
        self.raw_noise = torch.nn.Parameter(positive.inverse_transform(0.1 * var))

    def scale_noise(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.positive.transform(self.raw_scale), self.positive.transform(self.raw_noise) + 1e-10

    def bound(self) -> torch.Tensor:
        """The collapsed bound per output, divided by n: (e,)."""
        n, m = len(self.x), len(self.inducing)
        scale, noise = self.scale_noise()
        k_zz = self.kernel(self.inducing).to_dense() + 1e-6 * torch.eye(m, dtype=self.x.dtype)
        k_zx = self.kernel(self.inducing, self.x).to_dense()
        chol = torch.linalg.cholesky(k_zz)
        a0 = torch.linalg.solve_triangular(chol, k_zx, upper=False)  # (m, n)
        aat = a0 @ a0.T  # (m, m)
        ay = a0 @ self.y  # (m, e)
        # B_c = I + (s_c / sigma_c^2) A0 A0^T; with A = sqrt(s) A0 / sigma the data fit is y^T A^T B^-1 A y / sigma^2
        logdet_b, quad = _LogdetQuad.apply(aat, scale / noise, ay)
        yy = (self.y**2).sum(0)
        tr_k0 = self.kernel(self.x, diag=True).sum()  # n for the RBF alone (unit diagonal)
        trace = scale * (tr_k0 - aat.diagonal().sum())  # tr K0 - tr Q
        value = (
            -0.5 * n * np.log(2 * np.pi)
            - 0.5 * logdet_b
            - 0.5 * n * torch.log(noise)
            - 0.5 * yy / noise
            + 0.5 * scale / noise**2 * quad
            - 0.5 * trace / noise
        )
        return value / n

    @torch.no_grad()
    def weights(self) -> torch.Tensor:
        """alpha (m, e) with predictive mean = K0(x*, Z) @ alpha."""
        m = len(self.inducing)
        scale, noise = self.scale_noise()
        k_zz = self.kernel(self.inducing).to_dense() + 1e-6 * torch.eye(m, dtype=self.x.dtype)
        k_zx = self.kernel(self.inducing, self.x).to_dense()
        kk = k_zx @ k_zx.T
        a = (noise / scale)[:, None, None] * k_zz + kk  # (e, m, m)
        return torch.linalg.solve(a, (k_zx @ self.y).T.unsqueeze(-1)).squeeze(-1).T


class GPMetaModel:
    """Fit with :meth:`fit`; :meth:`predict` maps descriptors (m, d) to parameters (m, D)."""

    def __init__(self, state: dict) -> None:
        self.state = state
        self.kernel = _base_kernel(state["x_mean"].shape[0], state["config"].get("kernel", "rbf")).double()
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
        scale = (s[0] / n**0.5).clamp_min(1e-12)  # one scale for all scores: their ratios carry meaning
        scores = u[:, :e] * s[:e] / scale  # (n, e)
        gen = torch.Generator().manual_seed(seed)
        m = min(cfg.inducing, n)
        inducing = xs[torch.randperm(n, generator=gen)[:m]]
        model = _CollapsedSGPR(xs, scores, inducing, cfg.kernel)
        # torch.optim.Adam's arithmetic without torch.optim (whose first use in a process imports torch._dynamo: ~1.5 s)
        weights = list(model.parameters())
        opts = [Optimizer(TrainConfig(lr=cfg.lr, decay=False), w.detach(), cfg.max_steps) for w in weights]
        history: list[float] = []
        for step in range(cfg.max_steps):
            loss = -model.bound().sum()
            grads = torch.autograd.grad(loss, weights)
            for opt, grad in zip(opts, grads):
                opt.step(grad)
            history.append(loss.item())
            if step >= 40 and step % 20 == 0:
                old = history[-21]
                if old - history[-1] <= cfg.tol * max(abs(old), 1.0):
                    break
        state = {
            "x_mean": x_mean,
            "x_std": x_std,
            "y_mean": y_mean,
            "components": vt[:e] * scale,  # (e, D): score -> parameters
            "inducing": model.inducing.detach(),
            "alpha": model.weights(),  # (m, e): predictive mean = K0(x*, Z) @ alpha
            "kernel": model.kernel.state_dict(),
            "objective": [-v for v in history],  # the bound per step (summed over outputs, per task)
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
