"""k shots as evidence about a warm start's read-out: the last layer refit under a Gaussian prior toward it.

A good warm start's features already separate a party's classes; what a few shots can tell reliably is how its
read-out should move (which classes the party holds, how sure to be), not how every layer should. The recipe
(``[finetune] recipe = "readout"``, the default for classifiers) keeps the start's features ``φ(x)`` (its last
hidden layer) and refits the read-out ``V = [W b]`` to the shots by the task loss plus the prior
``(λ/2)·‖V − V₀‖²`` toward the start's read-out ``V₀``, for a grid of prior precisions ``λ`` (relative to the
features' mean power). Which one, if any, a party takes is decided by k-fold cross-validation on its own shots
with the step recipe's paired margin rule (:func:`fusion.adapt.finetuning.choose_steps`), and whole-model training
steps compete only against the chosen read-out (:func:`fusion.adapt.finetuning.finetune`): a model class more flexible
than the one below it is taken only when the held-out shots clearly prefer it.

Each refit is a small convex problem (C·(H+1) parameters), solved for every party, fold and prior at once by a
fixed number of full-batch Adam steps on precomputed features: one batched program, each party's result
depending only on its own start and shots.
"""

from __future__ import annotations

from fusion.adapt.optimizer import Optimizer
from fusion.adapt.train_config import TrainConfig
from fusion.lazy import torch
from fusion.models.params import features, layers
from fusion.models.spec import Spec

PRIORS = (10.0, 1.0, 0.1, 0.01)  # prior precision λ / the features' mean power, strongest first
STEPS, LR = 200, 0.05  # Adam on the read-out (convex; from V₀)


def _phi(flat: torch.Tensor, spec: Spec, x: torch.Tensor) -> torch.Tensor:
    """Features with a constant column for the bias: (P, N, H + 1)."""
    with torch.no_grad():
        h = features(flat, spec, x)
    return torch.cat([h, torch.ones_like(h[..., :1])], -1)


def read_outs(flat: torch.Tensor, spec: Spec) -> torch.Tensor:
    """The last layer as one matrix per model: (P, out, H + 1), bias last."""
    weight, bias = layers(flat, spec)[-1]
    return torch.cat([weight.reshape(len(flat), bias.shape[1], -1), bias[..., None]], -1)


def with_read_outs(flat: torch.Tensor, spec: Spec, v: torch.Tensor) -> torch.Tensor:
    """``flat`` (P, n_params) with its last layer replaced by ``v`` (P, out, H + 1)."""
    out = flat.detach().clone()
    w0, b0, b1 = spec.offsets[-1]
    out[:, w0:b0] = v[..., :-1].reshape(len(flat), -1).to(out.dtype)
    out[:, b0:b1] = v[..., -1].to(out.dtype)
    return out


def fit(phi: torch.Tensor, y: torch.Tensor, v0: torch.Tensor, lam: torch.Tensor, loss, descriptors) -> torch.Tensor:
    """The read-outs (B, out, H + 1) minimizing ``loss(φ Vᵀ, y, descriptors) + lam/2 · ‖V − V₀‖²`` per row."""
    v = v0.detach().clone()
    opt = Optimizer(TrainConfig(lr=LR, decay=False), v, STEPS, fused=False)  # torch's ops: torch.optim.Adam's updates
    lam = lam.to(v.dtype)[:, None, None]
    with torch.enable_grad():
        for _ in range(STEPS):
            leaf = v.detach().requires_grad_(True)
            objective = loss(phi @ leaf.transpose(1, 2), y, descriptors) + 0.5 * (lam * (leaf - v0) ** 2).sum((1, 2))
            (grad,) = torch.autograd.grad(objective.sum(), leaf)
            opt.step(grad)
    return v


def _scale(phi: torch.Tensor) -> torch.Tensor:
    """Each party's features' mean power (P,): the unit of the prior precision."""
    return (phi[..., :-1] ** 2).mean((1, 2)).clamp_min(1e-12)


def held_out_losses(flat, spec, x, y, loss, descriptors, fit_idx, val_idx) -> torch.Tensor:
    """Held-out losses (G, P, len(PRIORS)) of the read-outs refit on shots ``fit_idx`` (G, n_fit) and scored on
    ``val_idx`` (G, n_val), one fold per row of the indices (the layout of :func:`fusion.adapt.finetuning.finetune`)."""
    g, p, r = len(fit_idx), len(flat), len(PRIORS)
    phi, v0 = _phi(flat, spec, x), read_outs(flat, spec).detach()
    lam_p = torch.stack([prior * _scale(phi) for prior in PRIORS])  # (R, P)

    def rows(t: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:  # (P, N, ...) -> (G·R·P, n_idx, ...), fold-major
        t = t[:, idx].movedim(1, 0)  # (G, P, n_idx, ...)
        return t[:, None].expand(g, r, *t.shape[1:]).flatten(0, 2)

    d = descriptors.expand(g * r, *descriptors.shape).flatten(0, 1)
    v = fit(rows(phi, fit_idx), rows(y, fit_idx), v0.repeat(g * r, 1, 1), lam_p.repeat(g, 1).flatten(), loss, d)
    with torch.no_grad():
        out = loss(rows(phi, val_idx) @ v.transpose(1, 2), rows(y, val_idx), d)
    return out.view(g, r, p).transpose(1, 2).double()


def refit(flat: torch.Tensor, spec: Spec, x: torch.Tensor, y: torch.Tensor, loss, descriptors, prior) -> torch.Tensor:
    """``flat`` (P, n_params) with each party's read-out refit on all its shots at ``prior`` (P,) (index into
    :data:`PRIORS`)."""
    phi, v0 = _phi(flat, spec, x), read_outs(flat, spec).detach()
    lam = torch.as_tensor([PRIORS[int(i)] for i in prior], dtype=phi.dtype) * _scale(phi)
    return with_read_outs(flat, spec, fit(phi, y, v0, lam, loss, descriptors))
