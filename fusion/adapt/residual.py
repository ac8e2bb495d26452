"""k shots as evidence about a warm start's error: a Gaussian-process correction in function space.

A warm start ``f0`` already computes most of a party's function; its k shots tell where it is off. The recipe
(``[finetune] recipe = "residual_gp"``) treats the error ``r(x) = y(x) - f0(x)`` as a draw from a zero-mean GP
over the inputs (squared-exponential kernel) and conditions it on the shots' residuals:

1. per party and output, the posterior mean is averaged over a small grid of the kernel's lengthscale and noise
   ratio, weighted by each one's profile marginal likelihood of the shots' residuals (the signal variance in
   closed form for each; a uniform prior over the grid);
2. the correction is taken only when the residuals are better explained by the GP than by white noise (Bayes
   factor of the grid-averaged evidence above 1) and its leave-one-out prediction of the residuals beats
   predicting none (sum of squared LOO errors below the residuals' own): a warm start the shots cannot improve
   is kept as it is;
3. the network's last layer is refit by least squares (a small ridge toward its current value) to ``f0 + r̂``
   on the scenario's unlabeled probe inputs and to ``y`` on the shots; every other layer stays as it was, so the
   start's features carry over and only the linear read-out moves.

Pure torch, batched over parties: each party's result depends only on its own start and shots.
"""

from __future__ import annotations

import math

from fusion.lazy import torch
from fusion.models.params import forward, last_hidden, layers
from fusion.models.spec import MLPSpec

LENGTHSCALES = (0.0625, 0.125, 0.25, 0.5, 1.0)  # in units of the probe inputs' standard deviation (per dimension)
NOISE_RATIOS = (1e-6, 1e-3, 1e-2, 0.1, 1.0)  # noise variance / signal variance
RIDGE = 1e-6  # the read-out's pull toward its current value, relative to the features' mean power


def conditioned(x: torch.Tensor, r: torch.Tensor, q: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """The GP posterior mean at ``q`` (M, in) of residuals ``r`` (B, k) seen at ``x`` (B, k, in): (B, M).

    Rows whose leave-one-out check fails, or with no finite residual, get a zero correction. ``scale`` (in,):
    the inputs' scale the lengthscales are relative to. NaN residuals are ignored (padding).
    """
    seen = r.isfinite()
    r = torch.where(seen, r, 0.0).double()
    x, q = (x / scale).double(), (q / scale).double()
    k = r.shape[1]
    d2, dq = torch.cdist(x, x) ** 2, torch.cdist(q.expand(len(x), *q.shape), x) ** 2  # (B, k, k), (B, M, k)
    ignore = torch.diag_embed((~seen).double() * 1e12)  # padding: infinite noise, no evidence
    eye = torch.eye(k, dtype=torch.float64)
    n_seen = seen.sum(1).clamp_min(1).double()
    evidences, means, loos = [], [], []
    for ell in LENGTHSCALES:
        c, cq = torch.exp(-d2 / (2 * ell**2)), torch.exp(-dq / (2 * ell**2))
        for eta in NOISE_RATIOS:
            chol = torch.linalg.cholesky(c + eta * eye + ignore)
            alpha = torch.cholesky_solve(r[..., None], chol)[..., 0]
            s2 = ((r * alpha).sum(1) / n_seen).clamp_min(1e-300)
            logdet = 2 * torch.log(torch.diagonal(chol, dim1=1, dim2=2)).masked_fill(~seen, 0).sum(1)
            evidences.append(-0.5 * n_seen * torch.log(s2) - 0.5 * logdet)  # profile log marginal likelihood
            means.append((cq @ alpha[..., None])[..., 0])
            loos.append(alpha / torch.diagonal(torch.cholesky_inverse(chol), dim1=1, dim2=2))  # LOO errors
    ev = torch.stack(evidences, 1)  # (B, G): one per grid point, a uniform prior over the grid
    w = torch.softmax(ev, 1)
    out = torch.einsum("bg,gbm->bm", w, torch.stack(means))  # the posterior mean averaged over the grid
    loo = torch.einsum("bg,gbk->bk", w, torch.stack(loos))
    gp = torch.logsumexp(ev, 1) - math.log(ev.shape[1])
    white = -0.5 * n_seen * torch.log(((r**2).sum(1) / n_seen).clamp_min(1e-300))  # no structure: no correction
    helps = (gp > white) & ((loo**2 * seen).sum(1) < (r**2).sum(1)) & (n_seen > 1)
    return (out * helps[:, None]).to(torch.float32)


def refit_readout(flat: torch.Tensor, spec: MLPSpec, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """``flat`` with its last layer refit by ridge least squares to targets ``t`` (P, N, out) at ``x`` (P, N, in);
    rows of ``t`` with a NaN are left out."""
    real = t.isfinite().all(-1, keepdim=True)
    t = torch.where(real, t, 0.0)
    phi = last_hidden(flat, spec, x).double()
    phi = torch.cat([phi, torch.ones_like(phi[..., :1])], -1) * real  # (P, N, H + 1): weights and bias
    weight, bias = layers(flat, spec)[-1]  # (P, out, H), (P, out)
    v0 = torch.cat([weight, bias[..., None]], -1).transpose(1, 2).double()  # (P, H + 1, out)
    gram = phi.transpose(1, 2) @ phi / phi.shape[1]
    lam = RIDGE * torch.diagonal(gram, dim1=1, dim2=2).mean(1).clamp_min(1e-12)[:, None, None]
    rhs = phi.transpose(1, 2) @ t.double() / phi.shape[1] + lam * v0
    eye = torch.eye(gram.shape[1], dtype=torch.float64)
    v = torch.linalg.solve(gram + lam * eye, rhs).transpose(1, 2).to(flat.dtype)  # (P, out, H + 1)
    out = flat.clone()
    w0, b0, b1 = spec.offsets[-1]
    out[:, w0:b0] = v[..., :-1].reshape(len(flat), -1)
    out[:, b0:b1] = v[..., -1]
    return out


def residual_gp(params: torch.Tensor, spec: MLPSpec, x: torch.Tensor, y: torch.Tensor, probe: torch.Tensor):
    """Warm starts ``params`` (P, n_params) corrected by their shots ``x`` (P, k, in), ``y`` (P, k, out): the
    recipe of the module docstring. ``probe`` (M, in): unlabeled inputs over the query range."""
    p, k, n_out = y.shape
    probe = probe.to(params.dtype)
    with torch.no_grad():
        r = y - forward(params, spec, x)  # (P, k, out)
        scale = probe.std(0).clamp_min(1e-6)
        xs = x.repeat_interleave(n_out, 0)  # (P * out, k, in), party-major
        corr = conditioned(xs, r.transpose(1, 2).reshape(p * n_out, k), probe, scale)
        corr = corr.view(p, n_out, -1).transpose(1, 2)  # (P, M, out)
        changed = corr.abs().amax(dim=(1, 2)) > 0
        if not bool(changed.any()):
            return params.detach().clone()
        grid = probe.expand(p, *probe.shape)
        target = forward(params, spec, grid) + corr
        tuned = refit_readout(params, spec, torch.cat([grid, x], 1), torch.cat([target, y], 1))
        return torch.where(changed[:, None], tuned, params.detach())
