"""Flat parameter vectors <-> layers, batched forward passes, and the hidden-unit view.

Shapes: a stack of ``P`` models is a float32 array ``(P, n_params)``; a batched forward pass
takes inputs ``(P, N, fan_in)`` (or ``(N, fan_in)`` shared by all) and returns ``(P, N, fan_out)``.
"""

from __future__ import annotations

import numpy as np
import torch

from fusion.spec import MLPSpec


def layers(flat: torch.Tensor, spec: MLPSpec) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Views ``[(W (P, out, in), b (P, out)), ...]`` into a stack ``flat`` (P, n_params)."""
    out = []
    for (w0, b0, b1), fan_in, fan_out in zip(spec.offsets, spec.widths[:-1], spec.widths[1:]):
        out.append((flat[:, w0:b0].reshape(-1, fan_out, fan_in), flat[:, b0:b1]))
    return out


def flatten(layer_list: list[tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
    """Inverse of :func:`layers`: ``[(W (P, out, in), b (P, out)), ...]`` -> (P, n_params)."""
    parts = []
    for weight, bias in layer_list:
        parts += [weight.reshape(weight.shape[0], -1), bias]
    return torch.cat(parts, dim=1)


def _act(spec: MLPSpec):
    return torch.relu if spec.activation == "relu" else torch.tanh


def forward(flat: torch.Tensor, spec: MLPSpec, x: torch.Tensor) -> torch.Tensor:
    """Batched forward pass of ``P`` models: ``flat`` (P, n_params), ``x`` (P, N, in) or (N, in)."""
    act = _act(spec)
    h = x if x.dim() == 3 else x.expand(flat.shape[0], *x.shape)
    all_layers = layers(flat, spec)
    for i, (weight, bias) in enumerate(all_layers):
        h = torch.baddbmm(bias.unsqueeze(1), h, weight.transpose(1, 2))
        if i < len(all_layers) - 1:
            h = act(h)
    return h


def init_params(spec: MLPSpec, generator: torch.Generator) -> torch.Tensor:
    """One model drawn like ``torch.nn.Linear``'s default init (uniform ±1/sqrt(fan_in)): (n_params,)."""
    parts = []
    for fan_in, fan_out in zip(spec.widths[:-1], spec.widths[1:]):
        bound = fan_in**-0.5
        n = fan_out * fan_in + fan_out
        parts.append((torch.rand(n, generator=generator) * 2 - 1) * bound)
    return torch.cat(parts)


def unit_features(flat: np.ndarray, spec: MLPSpec, layer: int) -> np.ndarray:
    """The hidden units of hidden layer ``layer`` (0-based) as rows: (P, H, fan_in + 1 + fan_out).

    A unit is its incoming weights, its bias and its outgoing weights: the thing a permutation of
    that layer moves as a whole.
    """
    (w0, b0, b1), (v0, _, _) = spec.offsets[layer], spec.offsets[layer + 1]
    fan_in, hidden, fan_out = spec.widths[layer], spec.widths[layer + 1], spec.widths[layer + 2]
    n = flat.shape[0]
    w_in = flat[:, w0:b0].reshape(n, hidden, fan_in)
    bias = flat[:, b0:b1].reshape(n, hidden, 1)
    w_out = flat[:, v0 : v0 + fan_out * hidden].reshape(n, fan_out, hidden).transpose(0, 2, 1)
    return np.concatenate([w_in, bias, w_out], axis=2)


def permute(flat: np.ndarray, spec: MLPSpec, perms: list[np.ndarray]) -> np.ndarray:
    """Reorder hidden units: ``perms[l]`` (P, H_l) gives, for each canonical slot, the model's unit.

    Returns a new (P, n_params) float32 stack computing the same functions as ``flat``.
    """
    out = np.array(flat, dtype=np.float32, copy=True)
    n = out.shape[0]
    for layer, perm in enumerate(perms):
        (w0, b0, b1), (v0, v1, _) = spec.offsets[layer], spec.offsets[layer + 1]
        fan_in, hidden, fan_out = spec.widths[layer], spec.widths[layer + 1], spec.widths[layer + 2]
        perm = np.asarray(perm)
        w_in = out[:, w0:b0].reshape(n, hidden, fan_in)
        out[:, w0:b0] = np.take_along_axis(w_in, perm[:, :, None], axis=1).reshape(n, -1)
        out[:, b0:b1] = np.take_along_axis(out[:, b0:b1], perm, axis=1)
        w_out = out[:, v0:v1].reshape(n, fan_out, hidden)
        out[:, v0:v1] = np.take_along_axis(w_out, perm[:, None, :], axis=2).reshape(n, -1)
    return out
