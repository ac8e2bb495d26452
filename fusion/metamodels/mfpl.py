"""The MFPL generative meta-model (Lam et al. 2021, section 3): a base component, GP task components, decoders.

Every (aligned) model is a draw ``gamma_i ~ N(m([w_0; w_i]), diag v([w_0; w_i]))`` in canonical unit order:

- ``w_0`` (d0,): a base component shared by all tasks, prior N(0, I), variational q(w_0) = N(mu, diag s^2);
- ``w_i = g(tau_i)`` (e,): e coordinates, each a sparse variational GP over the standardized descriptors
  (ARD RBF kernel from gpytorch with a per-coordinate scale, m shared inducing descriptors, whitened
  q(v_k) = N(mu_k, L_k L_k^T), so KL(q(u) || p(u)) = KL(N(mu_k, L_k L_k^T) || N(0, I)));
- ``m``, ``v``: decoder networks [w_0; w_i] -> mean and variance of the flat parameters (D,).

:meth:`MFPLModel.elbo` is ``sum_i E_q log N(gamma_i | m, v) - KL(q(w_0) || p(w_0)) - KL(GP)`` by reparameterized
sampling; kernel hyper-parameters, inducing descriptors, decoders and q(w_0) are all trained (:func:`fit_elbo`,
Adam until the ELBO stops improving). :meth:`MFPLModel.moments` gives what the per-model assignment costs
need; :meth:`MFPLModel.warm_start` decodes [E w_0; GP predictive mean] at new descriptors.

Initialisation (so the fit converges in a few hundred steps): the decoder's mean is the aligned average plus a
linear map from w_i, initialised with the leading principal directions of the aligned models, plus a
nonlinear part that starts at zero; the GP's variational mean starts at the least-squares GP fit of the
principal scores; the variance starts at the per-parameter residual of that linear reconstruction.
Parameters are standardized per coordinate (fixed buffers), so one learning rate suits all layers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import gpytorch
import numpy as np
import torch
from scipy.cluster.vq import kmeans2

from fusion.adapt.optimizer import Optimizer
from fusion.adapt.train_config import TrainConfig
from fusion.matching.alignment import SolveMany, align, compose, identity_perms, solve_many_serial
from fusion.matching.pfnm import SolveRect, solve_rect_serial
from fusion.metamodels.mfpl_config import MFPLConfig
from fusion.models.params import permute, unit_features
from fusion.models.spec import Spec

LOG_2PI = float(np.log(2 * np.pi))


def _inv_softplus(x: torch.Tensor) -> torch.Tensor:
    return x + torch.log(-torch.expm1(-x))


class TaskGP(torch.nn.Module):
    """``e`` independent sparse variational GPs over descriptors (d,), sharing lengthscales and inducing points."""

    def __init__(self, dim: int, e: int, m: int) -> None:
        super().__init__()
        self.kernel = gpytorch.kernels.RBFKernel(ard_num_dims=dim)
        self.inducing = torch.nn.Parameter(torch.zeros(m, dim))
        self.raw_scale = torch.nn.Parameter(torch.full((e,), float(_inv_softplus(torch.tensor(1.0)))))
        self.q_mean = torch.nn.Parameter(torch.zeros(e, m))  # whitened: u_k = sqrt(scale_k) L_zz v_k
        self.q_tril = torch.nn.Parameter(0.1 * torch.eye(m).expand(e, m, m).clone())

    def scale(self) -> torch.Tensor:
        return torch.nn.functional.softplus(self.raw_scale)

    def _project(self, x: torch.Tensor) -> torch.Tensor:
        """A = L_zz^-1 K(Z, x): (m, n)."""
        m = len(self.inducing)
        k_zz = self.kernel(self.inducing).to_dense() + 1e-5 * torch.eye(m)
        chol = torch.linalg.cholesky(k_zz)
        return torch.linalg.solve_triangular(chol, self.kernel(self.inducing, x).to_dense(), upper=False)

    def _tril(self) -> torch.Tensor:
        return torch.tril(self.q_tril)

    def marginals(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """q(g_k(x)) for descriptors ``x`` (n, d): mean and variance, both (n, e)."""
        a = self._project(x)  # (m, n)
        scale = self.scale()
        mean = (self.q_mean @ a).T * scale.sqrt()
        prior = (1.0 - (a**2).sum(0)).clamp_min(1e-8)  # k(x, x) = 1 for the unit-scale RBF
        lt_a = self._tril().transpose(1, 2) @ a  # (e, m, n)
        var = (prior[None] + (lt_a**2).sum(1)) * scale[:, None]
        return mean, var.T

    def mean(self, x: torch.Tensor) -> torch.Tensor:
        return (self.q_mean @ self._project(x)).T * self.scale().sqrt()

    def kl(self) -> torch.Tensor:
        """sum_k KL(N(mu_k, L_k L_k^T) || N(0, I)) in the whitened space."""
        tril = self._tril()
        m = tril.shape[-1]
        logdet = torch.log(tril.diagonal(dim1=-2, dim2=-1).abs().clamp_min(1e-10)).sum() * 2
        return 0.5 * ((tril**2).sum() + (self.q_mean**2).sum() - m * len(tril) - logdet)

    @torch.no_grad()
    def init_mean(self, x: torch.Tensor, y: torch.Tensor, noise: float = 0.01) -> None:
        """Set q's mean to the least-squares GP fit of targets ``y`` (n, e) at descriptors ``x`` (n, d)."""
        a = self._project(x)  # (m, n)
        m = len(a)
        alpha = torch.linalg.solve(a @ a.T + noise * torch.eye(m), a @ y)  # (m, e): mean(x) = a^T alpha
        self.q_mean.copy_((alpha / self.scale().sqrt()).T)


class Decoder(torch.nn.Module):
    """[w_0; w_i] (..., d0 + e) -> standardized mean and variance (..., D): ``m = P z + MLP(z)``, ``v = softplus``."""

    def __init__(self, latent: int, hidden: int, out: int, min_var: float) -> None:
        super().__init__()
        self.linear = torch.nn.Linear(latent, out, bias=False)
        self.mean_net = torch.nn.Sequential(
            torch.nn.Linear(latent, hidden), torch.nn.Tanh(), torch.nn.Linear(hidden, out)
        )
        self.var_net = torch.nn.Sequential(
            torch.nn.Linear(latent, hidden), torch.nn.Tanh(), torch.nn.Linear(hidden, out)
        )
        self.min_var = min_var

    @torch.no_grad()
    def reset(self, gen: torch.Generator) -> None:
        """Seeded init: hidden layers like ``torch.nn.Linear`` (uniform +-1/sqrt(fan_in)), output layers zero."""
        for net in (self.mean_net, self.var_net):
            bound = net[0].in_features ** -0.5
            for tensor in (net[0].weight, net[0].bias):
                tensor.copy_((torch.rand(tensor.shape, generator=gen) * 2 - 1) * bound)
            net[2].weight.zero_()
            net[2].bias.zero_()

    def mean(self, z: torch.Tensor) -> torch.Tensor:
        return self.linear(z) + self.mean_net(z)

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.mean(z), torch.nn.functional.softplus(self.var_net(z)) + self.min_var


class MFPLModel(torch.nn.Module):
    """q(w_0), the task GPs and the decoders, with fixed standardizations of descriptors (d,) and parameters (D,)."""

    def __init__(self, cfg: MFPLConfig, dim: int, n_params: int, m: int) -> None:
        super().__init__()
        self.cfg = cfg
        self.gp = TaskGP(dim, cfg.task_dim, m)
        self.decoder = Decoder(cfg.base_dim + cfg.task_dim, cfg.hidden, n_params, cfg.min_var)
        self.w0_mean = torch.nn.Parameter(torch.zeros(cfg.base_dim))
        self.w0_raw_std = torch.nn.Parameter(torch.full((cfg.base_dim,), float(_inv_softplus(torch.tensor(0.1)))))
        for name, size in (("x_mean", dim), ("x_std", dim), ("y_mean", n_params), ("y_std", n_params)):
            self.register_buffer(name, torch.zeros(size))

    # --- set-up -----------------------------------------------------------------------------------------
    @classmethod
    def initialise(
        cls, cfg: MFPLConfig, aligned: np.ndarray, descriptors: np.ndarray, seed: int
    ) -> tuple[MFPLModel, torch.Tensor, torch.Tensor]:
        """A model set up from ``aligned`` (n, D) and ``descriptors`` (n, d); also returns standardized (x, y)."""
        gamma = torch.as_tensor(np.asarray(aligned, dtype=np.float32))
        desc = torch.as_tensor(np.asarray(descriptors, dtype=np.float32))
        n, n_params = gamma.shape
        m = min(cfg.inducing, n)
        model = cls(cfg, desc.shape[1], n_params, m)
        model.x_mean.copy_(desc.mean(0))
        model.x_std.copy_(desc.std(0, unbiased=False).clamp_min(1e-6))
        std = gamma.std(0, unbiased=False)
        model.y_mean.copy_(gamma.mean(0))
        model.y_std.copy_(std.clamp_min(max(1e-3 * float(std.max()), 1e-8)))
        x, y = model.standardize(desc), model.standardize_params(gamma)
        with torch.no_grad():
            model.decoder.reset(torch.Generator().manual_seed(seed))
            model.gp.inducing.copy_(_kmeans(x, m, seed))
            e = cfg.task_dim
            u, s, vt = torch.linalg.svd(y, full_matrices=False)
            k = min(e, len(s))
            scores = torch.zeros(n, e)
            scores[:, :k] = u[:, :k] * n**0.5  # unit-variance principal scores
            components = torch.zeros(e, n_params)
            components[:k] = s[:k, None] * vt[:k] / n**0.5
            model.decoder.linear.weight.zero_()
            model.decoder.linear.weight[:, cfg.base_dim :] = components.T
            resid = ((y - scores @ components) ** 2).mean(0).clamp_min(1e-4)
            model.decoder.var_net[2].bias.copy_(_inv_softplus(resid))
            model.gp.init_mean(x, scores)
        return model, x, y

    def standardize(self, desc: torch.Tensor) -> torch.Tensor:
        """Descriptors (n, d) -> the GP's input space."""
        return (desc - self.x_mean) / self.x_std

    def standardize_params(self, gamma: torch.Tensor) -> torch.Tensor:
        """Models (n, D) in canonical order -> the decoder's output space."""
        return (gamma - self.y_mean) / self.y_std

    # --- the ELBO -------------------------------------------------------------------------------------
    def _w0_std(self) -> torch.Tensor:
        return torch.nn.functional.softplus(self.w0_raw_std) + 1e-6

    def _sample_latents(self, x: torch.Tensor, samples: int, gen: torch.Generator) -> torch.Tensor:
        """Reparameterized [w_0; w_i] draws: (samples, n, d0 + e)."""
        n = len(x)
        f_mean, f_var = self.gp.marginals(x)
        eps_f = torch.randn(samples, n, f_mean.shape[1], generator=gen)
        w_i = f_mean + f_var.sqrt() * eps_f
        eps_0 = torch.randn(samples, 1, len(self.w0_mean), generator=gen)
        w_0 = (self.w0_mean + self._w0_std() * eps_0).expand(samples, n, -1)
        return torch.cat([w_0, w_i], dim=-1)

    def kl_w0(self) -> torch.Tensor:
        std = self._w0_std()
        return 0.5 * (std**2 + self.w0_mean**2 - 1 - 2 * torch.log(std)).sum()

    def elbo(self, x: torch.Tensor, y: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        """The ELBO of standardized ``y`` (n, D) at standardized descriptors ``x`` (n, d), in units of the raw gamma."""
        mean, var = self.decoder(self._sample_latents(x, self.cfg.samples, gen))
        loglik = -0.5 * ((y - mean) ** 2 / var + torch.log(var) + LOG_2PI).sum((1, 2)).mean()
        jacobian = len(y) * torch.log(self.y_std).sum()  # log N(gamma | .) = log N(y | .) - sum log y_std
        return loglik - jacobian - self.kl_w0() - self.gp.kl()

    # --- what the assignments and the warm starts use ---------------------------------------------------
    @torch.no_grad()
    def moments(self, descriptors: np.ndarray, gen: torch.Generator) -> dict[str, np.ndarray]:
        """Monte-Carlo E_q of 1/v, m/v, m^2/v and log v in raw parameter units, each (n, D).

        Then ``E_q[-log N(x | m, v)] = 0.5 (log 2 pi + E log v + x^2 E[1/v] - 2 x E[m/v] + E[m^2/v])``.
        """
        x = self.standardize(torch.as_tensor(np.asarray(descriptors, dtype=np.float32)))
        mean, var = self.decoder(self._sample_latents(x, self.cfg.samples, gen))
        mean, var = self.y_mean + self.y_std * mean, var * self.y_std**2
        out = {"inv": 1 / var, "m_inv": mean / var, "m2_inv": mean**2 / var, "log": torch.log(var)}
        return {k: v.mean(0).numpy().astype(np.float64) for k, v in out.items()}

    @torch.no_grad()
    def warm_start(self, descriptors: np.ndarray) -> np.ndarray:
        """m([E w_0; GP predictive mean]) at ``descriptors`` (k, d): models (k, D) float32 in canonical order."""
        x = self.standardize(torch.as_tensor(np.asarray(descriptors, dtype=np.float32)))
        z = torch.cat([self.w0_mean.expand(len(x), -1), self.gp.mean(x)], dim=1)
        return (self.y_mean + self.y_std * self.decoder.mean(z)).numpy().astype(np.float32)


def _kmeans(x: torch.Tensor, m: int, seed: int) -> torch.Tensor:
    """``m`` centres of the rows of ``x`` (n, d) (all rows when m == n)."""
    if m >= len(x):
        return x.clone()
    centres, _ = kmeans2(x.double().numpy(), m, minit="++", seed=np.random.default_rng(seed))
    return torch.as_tensor(centres, dtype=torch.float32)


def fit_elbo(
    model: MFPLModel,
    x: torch.Tensor,
    y: torch.Tensor,
    cfg: MFPLConfig,
    gen: torch.Generator,
    opts: list[Optimizer] | None = None,
) -> tuple[list[float], list[Optimizer]]:
    """Adam on the ELBO until its windowed mean improves less than ``cfg.tol`` (relative) or ``cfg.max_steps``.

    Returns the ELBO per step (divided by the number of parties) and the optimizers of ``model.parameters()`` (to
    continue from).
    """
    weights = list(model.parameters())
    adam = TrainConfig(lr=cfg.lr, decay=False)
    opts = opts or [Optimizer(adam, w.detach(), cfg.max_steps, fused=False) for w in weights]  # torch's ops
    history: list[float] = []
    n = len(y)
    for step in range(cfg.max_steps):
        value = model.elbo(x, y, gen)
        for optimizer, grad in zip(opts, torch.autograd.grad(-value / n, weights), strict=True):
            optimizer.step(grad)
        history.append(value.item() / n)
        if (step + 1) % cfg.window == 0 and step + 1 >= 2 * cfg.window:
            new = float(np.mean(history[-cfg.window :]))
            old = float(np.mean(history[-2 * cfg.window : -cfg.window]))
            if new - old <= cfg.tol * max(abs(old), 1.0):
                break
    return history, opts


def likelihood_costs(units: np.ndarray, slots: dict[str, np.ndarray]) -> np.ndarray:
    """-D_i^{uv}: minus the expected log-likelihood of unit u in slot v, summed over the unit's scalars.

    ``units`` (P, H, k) a layer's units (:func:`fusion.models.params.unit_features`), ``slots`` the same view of
    :meth:`MFPLModel.moments`. Returns costs (P, H slots, H units) to be minimized. Computed in the stable
    form ``E[1/v] (x - c)^2 + (E[m^2/v] - E[m/v]^2 / E[1/v])`` with ``c = E[m/v] / E[1/v]``.
    """
    inv = slots["inv"]
    centre = slots["m_inv"] / inv
    spread = np.maximum(slots["m2_inv"] - slots["m_inv"] * centre, 0.0)
    const = 0.5 * (slots["log"] + spread + LOG_2PI).sum(-1)[:, :, None]  # (P, H, 1)
    quad = np.einsum("pvs,pus->pvu", inv, units**2) - 2 * np.einsum("pvs,pus->pvu", inv * centre, units)
    quad += (inv * centre**2).sum(-1)[:, :, None]
    return const + 0.5 * quad


def reassign(
    models: np.ndarray,
    spec: Spec,
    perms: list[np.ndarray],
    moments: dict[str, np.ndarray],
    solve_rect: SolveRect = solve_rect_serial,
    sweeps: int = 5,
) -> list[np.ndarray]:
    """New per-model unit assignments A_i maximizing the expected likelihood under the decoded distributions.

    ``models`` (P, D) in their own order, ``perms`` the current assignments (``perms[l]`` (P, H_l)), ``moments``
    per model (P, D) in canonical order. Layer by layer (a layer's incoming weights are compared in the
    canonical order of the layer below; the first sweep leaves out outgoing weights into a layer not yet
    assigned, later sweeps compare whole units, up to ``sweeps`` times until nothing changes). Every
    model's problem is independent: one ``solve_rect`` call per layer and sweep (which a caller may spread
    over processes). Returns the new ``perms``.
    """
    perms = [p.copy() for p in perms]
    last = len(spec.hidden) - 1
    for sweep in range(sweeps):
        changed = False
        for layer in range(last + 1):
            # first sweep, below the last hidden layer: the layer above is not in canonical order yet, so
            # compare incoming weights and bias only (bottom-up); later sweeps compare whole units
            k = math.prod(spec.weight_shapes[layer][1:]) + 1 if sweep == 0 and layer < last else None
            units = unit_features(permute(models, spec, perms), spec, layer)[..., :k].astype(np.float64)
            slots = {name: unit_features(v, spec, layer)[..., :k] for name, v in moments.items()}
            costs = likelihood_costs(units, slots)
            step = np.stack(solve_rect(list(costs))) if len(costs) else np.zeros((0, units.shape[1]), np.int64)
            changed |= bool((step != np.arange(step.shape[1])).any())
            perms[layer] = compose(perms[layer], step)
        if (not changed and sweep > 0) or last == 0:  # one hidden layer: a second sweep cannot change anything
            break
    return perms


@dataclass(frozen=True)
class MFPLFit:
    """A fitted meta-model, the final assignments (``perms[l]`` (n, H_l), parties in the caller's order),
    the ELBO per step of every alternation and the number of units reassigned by each alternation."""

    model: MFPLModel
    perms: list[np.ndarray]
    elbo: list[list[float]]
    reassigned: list[int]


def fit_mfpl(
    models: np.ndarray,
    descriptors: np.ndarray,
    spec: Spec,
    cfg: MFPLConfig = MFPLConfig(),
    seed: int = 0,
    aligned: bool = True,
    align_iters: int = 20,
    solve_many: SolveMany = solve_many_serial,
    solve_rect: SolveRect = solve_rect_serial,
) -> MFPLFit:
    """Fit MFPL to ``models`` (n, D) with ``descriptors`` (n, d): alternate the ELBO fit and the assignments.

    The first assignments come from :func:`fusion.matching.align` (identity when ``aligned`` is False: the
    paper's no-align ablation, which also skips the reassignments). Parties are processed in an order fixed
    by their contents, so the result does not depend on the order the caller lists them in.
    """
    models = np.asarray(models, dtype=np.float32)
    descriptors = np.asarray(descriptors, dtype=np.float64)
    order = _content_order(models, descriptors)
    models, descriptors = models[order], descriptors[order]
    if aligned:
        perms = align(models, spec, align_iters, solve_many).perms
    else:
        perms = identity_perms(len(models), spec)
    model, x, y = MFPLModel.initialise(cfg, permute(models, spec, perms), descriptors, seed)
    gen = torch.Generator().manual_seed(seed)
    elbo, reassigned, opts = [], [], None
    for round_ in range(cfg.alternations):
        history, opts = fit_elbo(model, x, y, cfg, gen, opts)
        elbo.append(history)
        if not aligned or round_ == cfg.alternations - 1:
            break
        new = reassign(models, spec, perms, model.moments(descriptors, gen), solve_rect)
        reassigned.append(int(sum((a != b).sum() for a, b in zip(new, perms))))
        if reassigned[-1] == 0:
            break
        perms = new
        y = model.standardize_params(torch.as_tensor(permute(models, spec, perms)))
    back = np.argsort(order)
    return MFPLFit(model, [p[back] for p in perms], elbo, reassigned)


def _content_order(models: np.ndarray, descriptors: np.ndarray) -> np.ndarray:
    """Parties sorted by descriptor (then by model norm): an order that does not depend on the caller's."""
    keys = [np.linalg.norm(models, axis=1)] + [descriptors[:, j] for j in range(descriptors.shape[1] - 1, -1, -1)]
    return np.lexsort(keys)
