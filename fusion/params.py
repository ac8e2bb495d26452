"""Flat parameter vectors <-> layers, batched forward passes, and the hidden-unit view.

Shapes: a stack of ``P`` models is a float32 array ``(P, n_params)``; a batched forward pass
takes inputs ``(P, N, fan_in)`` (or ``(N, fan_in)`` shared by all) and returns ``(P, N, fan_out)``.
Every function takes any spec of :mod:`fusion.spec` (an MLP or a CNN) and dispatches on its type:
training, fine-tuning and fusion code never ask which one it is.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from fusion import conv
from fusion.spec import CNNSpec, MLPSpec, Spec


def layers(flat: torch.Tensor, spec: Spec) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Views ``[(W (P, *weight shape), b (P, out)), ...]`` into a stack ``flat`` (P, n_params).

    A Linear weight is (P, out, in), a conv weight (P, out, in, k, k).
    """
    return [
        (flat[:, w0:b0].reshape(-1, *shape), flat[:, b0:b1])
        for (w0, b0, b1), shape in zip(spec.offsets, spec.weight_shapes)
    ]


def flatten(layer_list: list[tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
    """Inverse of :func:`layers`: ``[(W (P, ...), b (P, out)), ...]`` -> (P, n_params)."""
    parts = []
    for weight, bias in layer_list:
        parts += [weight.reshape(weight.shape[0], -1), bias]
    return torch.cat(parts, dim=1)


def _act(spec: MLPSpec):
    return torch.relu if spec.activation == "relu" else torch.tanh


def _buffer(work: dict | None, key, shape, like: torch.Tensor) -> torch.Tensor | None:
    """A tensor kept in ``work`` across calls (fresh pages cost more than the arithmetic here), or None."""
    if work is None:
        return None
    buf = work.get(key)
    if buf is None or buf.shape != shape or buf.dtype != like.dtype or buf.device != like.device:
        buf = work[key] = torch.empty(shape, dtype=like.dtype, device=like.device)
    return buf


def _affine(h: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """``h @ weight^T + bias`` for a stack. Two shapes run on faster paths: a one-input layer is an
    outer product, and a one-output layer is computed as (P, 1, in) @ (P, in, N), whose result has
    the layout of (P, N, 1) (MKL's batched matrix-vector product is ~3× slower)."""
    p, fan_out, fan_in = weight.shape
    if fan_in == 1:
        return torch.addcmul(bias.unsqueeze(1), h, weight.transpose(1, 2), out=out)
    if fan_out == 1:
        row = None if out is None else out.view(p, 1, -1)
        return torch.baddbmm(bias.unsqueeze(2), weight, h.transpose(1, 2), out=row).view(p, -1, 1)
    return torch.baddbmm(bias.unsqueeze(1), h, weight.transpose(1, 2), out=out)


def forward(flat: torch.Tensor, spec: Spec, x: torch.Tensor) -> torch.Tensor:
    """Batched forward pass of ``P`` models: ``flat`` (P, n_params), ``x`` (P, N, in) or (N, in)."""
    if isinstance(spec, CNNSpec):
        return conv.forward(flat, spec, x)
    act = _act(spec)
    h = x if x.dim() == 3 else x.expand(flat.shape[0], *x.shape)
    all_layers = layers(flat, spec)
    for i, (weight, bias) in enumerate(all_layers):
        h = _affine(h, weight, bias)
        if i < len(all_layers) - 1:
            h = act(h)
    return h


def loss_and_grad(
    flat: torch.Tensor,
    spec: Spec,
    x: torch.Tensor,
    y: torch.Tensor,
    loss_fn,
    work: dict | None = None,
    out: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-model losses ``loss_fn(forward(flat, spec, x), y)`` (P,) and d(their sum)/d ``flat`` (P, n_params).

    The gradient autograd gives, by a hand-written backward pass through the MLP: no graph, no
    gradient for the inputs, no boolean mask for ReLU, and with ``work`` (a dict kept across calls)
    no fresh activation buffers either; about 2× faster on CPU for the small batched nets here.
    Only the loss, a function of the predictions, goes through autograd. ``out``: a (P, n_params) tensor the
    gradient is written into (a training loop reuses one; a fresh one each step costs page faults for wide models).
    CNNs: :func:`fusion.conv.loss_and_grad`.
    """
    if isinstance(spec, CNNSpec):
        return conv.loss_and_grad(flat, spec, x, y, loss_fn, work)
    relu = spec.activation == "relu"
    p = flat.shape[0]
    h = x if x.dim() == 3 else x.expand(p, *x.shape)
    flat = flat.detach()
    all_layers = layers(flat, spec)
    inputs, slopes = [], []  # each layer's input; each hidden layer's activation derivative
    for i, (weight, bias) in enumerate(all_layers):
        inputs.append(h)
        shape = (p, h.shape[1], weight.shape[1])
        h = _affine(h, weight, bias, _buffer(work, ("a", i), shape, flat))
        if i < len(all_layers) - 1:
            slope = _buffer(work, ("s", i), shape, flat)
            if relu:
                h = h.clamp_min_(0)
                slopes.append(torch.sign(h, out=slope))  # 1 where the unit is on, else 0
            else:
                h = h.tanh_()
                slopes.append(torch.addcmul(torch.ones((), dtype=h.dtype, device=h.device), h, h, value=-1, out=slope))
    pred = h.detach().requires_grad_(True)
    with torch.enable_grad():
        losses = loss_fn(pred, y)
        (g,) = torch.autograd.grad(losses.sum(), pred)
    grad = torch.empty_like(flat) if out is None else out
    grad_layers = layers(grad, spec)
    for i in reversed(range(len(all_layers))):
        (weight, _), (g_weight, g_bias) = all_layers[i], grad_layers[i]
        h, (_, fan_out, fan_in) = inputs[i], weight.shape
        if fan_in == 1:  # (P, 1, N) @ (P, N, out) has the layout of (P, out, 1) and runs ~3× faster
            g_weight.copy_(torch.bmm(h.transpose(1, 2), g).view(p, fan_out, 1))
        else:  # into a kept contiguous buffer (bmm into the strided view of ``grad`` is ~10× slower)
            g_weight.copy_(torch.bmm(g.transpose(1, 2), h, out=_buffer(work, ("gw", i), g_weight.shape, flat)))
        g_bias.copy_(g.sum(1))
        if i > 0:
            out = _buffer(work, ("g", i), (p, g.shape[1], fan_in), flat)
            g = torch.mul(g, weight, out=out) if fan_out == 1 else torch.bmm(g, weight, out=out)  # (P, N, fan_in)
            g.mul_(slopes[i - 1])
    return losses.detach(), grad


def init_params(spec: Spec, generator: torch.Generator) -> torch.Tensor:
    """One model drawn like torch's default init of ``Linear`` and ``Conv2d`` (uniform ±1/sqrt(fan_in), fan_in =
    the inputs of one output unit, weights and bias): (n_params,)."""
    parts = []
    for shape in spec.weight_shapes:
        bound = math.prod(shape[1:]) ** -0.5
        n = math.prod(shape) + shape[0]
        parts.append((torch.rand(n, generator=generator) * 2 - 1) * bound)
    return torch.cat(parts)


def _unit_blocks(flat: np.ndarray, spec: Spec, layer: int):
    """Views of hidden layer ``layer``'s units in ``flat`` (P, n_params): incoming (P, H, k_in), bias (P, H),
    outgoing (P, out_next, H, r) with ``r`` the next layer's weight columns per unit (:attr:`unit_columns`)."""
    (w0, b0, b1), (v0, v1, _) = spec.offsets[layer], spec.offsets[layer + 1]
    n, hidden = flat.shape[0], spec.hidden[layer]
    out_next, r = spec.weight_shapes[layer + 1][0], spec.unit_columns[layer + 1]
    return (
        flat[:, w0:b0].reshape(n, hidden, -1),
        flat[:, b0:b1],
        flat[:, v0:v1].reshape(n, out_next, hidden, r),
    )


def unit_features(flat: np.ndarray, spec: Spec, layer: int) -> np.ndarray:
    """The hidden units of hidden layer ``layer`` (0-based) as rows: (P, H, k_in + 1 + k_out).

    A unit is its incoming weights, its bias and its outgoing weights: the thing a permutation of that layer
    moves as a whole. MLP: (fan_in, 1, fan_out). CNN conv channel: its kernel (in, k, k), its bias and the next
    layer's weights that read it — the next conv's (out, k, k) slices or, at the conv -> Flatten -> Linear
    boundary, its spatial block of the Linear's columns (out, side²).
    """
    w_in, bias, w_out = _unit_blocks(flat, spec, layer)
    n, hidden = bias.shape
    return np.concatenate([w_in, bias[:, :, None], w_out.transpose(0, 2, 1, 3).reshape(n, hidden, -1)], axis=2)


def permute(flat: np.ndarray, spec: Spec, perms: list[np.ndarray]) -> np.ndarray:
    """Reorder hidden units: ``perms[l]`` (P, H_l) gives, for each canonical slot, the model's unit.

    Returns a new (P, n_params) float32 stack computing the same functions as ``flat``.
    """
    out = np.array(flat, dtype=np.float32, copy=True)
    n = len(out)
    for layer, perm in enumerate(perms):
        perm = np.asarray(perm)
        (w0, b0, b1), (v0, v1, _) = spec.offsets[layer], spec.offsets[layer + 1]
        w_in, bias, w_out = _unit_blocks(out, spec, layer)
        out[:, w0:b0] = np.take_along_axis(w_in, perm[:, :, None], axis=1).reshape(n, -1)
        out[:, b0:b1] = np.take_along_axis(bias, perm, axis=1)
        out[:, v0:v1] = np.take_along_axis(w_out, perm[:, None, :, None], axis=2).reshape(n, -1)
    return out
