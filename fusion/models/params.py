"""Flat parameter vectors <-> layers, batched forward passes, and the hidden-unit view.

Shapes: a stack of ``P`` models is a float32 array ``(P, n_params)``; a batched forward pass
takes inputs ``(P, N, fan_in)`` (or ``(N, fan_in)`` shared by all) and returns ``(P, N, fan_out)``.
Every function takes any spec of :mod:`fusion.models.spec` (an MLP or a CNN) and dispatches on its type:
training, fine-tuning and fusion code never ask which one it is.
"""

from __future__ import annotations

import math

import numpy as np

from fusion.lazy import torch
from fusion.models import conv, kernels
from fusion.models.activation import activate
from fusion.models.loss import autograd_value_and_grad
from fusion.models.spec import CNNSpec, MLPSpec, Spec, body_spec, n_body
from fusion.models.workspace import buffer


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
    weight, bias = layers(flat, spec)[-1]
    return _affine(last_hidden(flat, spec, x), weight, bias)


def last_hidden(flat: torch.Tensor, spec: MLPSpec, x: torch.Tensor) -> torch.Tensor:
    """The last hidden layer's activations (P, N, H) of an MLP stack ``flat`` (P, n_params) at ``x`` (P, N, in) or
    (N, in): :func:`forward` without its read-out (the same arithmetic, so a model's features ignore its batch)."""
    h = x if x.dim() == 3 else x.expand(flat.shape[0], *x.shape)
    for weight, bias in layers(flat, spec)[:-1]:
        h = activate(_affine(h, weight, bias), spec.activation)
    return h


def features(flat: torch.Tensor, spec: Spec, x: torch.Tensor) -> torch.Tensor:
    """The last hidden layer's activations (P, N, H) of any stack (MLP or CNN): what its read-out sees."""
    if isinstance(spec, MLPSpec):
        return last_hidden(flat, spec, x)
    return torch.relu(forward(flat[:, : n_body(spec)], body_spec(spec), x))


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
    ``[1-H-1]`` ReLU nets (the sine scenario's) take the compiled kernel of :mod:`fusion.models.kernels` where it
    loaded, else :func:`_one_input_relu` from 64 points. CNNs: :func:`fusion.models.conv.loss_and_grad`.
    """
    if isinstance(spec, CNNSpec):
        return conv.loss_and_grad(flat, spec, x, y, loss_fn, work)
    one_input = spec.activation == "relu" and spec.widths[0] == 1 and spec.n_layers == 2 and spec.widths[-1] == 1
    if one_input and kernels.applies(flat, x) and (out is None or out.is_contiguous()):
        return kernels.one_input_relu(flat, spec.widths[1], x, y, loss_fn, work, out)
    if one_input and x.shape[-2] >= ONE_INPUT_MIN_POINTS:
        return _one_input_relu(flat, spec, x, y, loss_fn, work, out)
    return _layered_loss_and_grad(flat, spec, x, y, loss_fn, work, out)


def _layered_loss_and_grad(
    flat: torch.Tensor,
    spec: MLPSpec,
    x: torch.Tensor,
    y: torch.Tensor,
    loss_fn,
    work: dict | None = None,
    out: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`loss_and_grad` of any MLP: layer by layer, keeping each layer's activations and slopes.

    Inputs shared by every model (``x`` (N, in)): the first layer runs as
    (P, out, in) @ (in, N), ~1.3x the rate of (N, in) @ (P, in, out) for wide inputs (a function-space refit's probe);
    its activations, slopes and gradient live in (P, out, N) memory viewed as (P, N, out), so its weights' gradient is
    one (P·out, N) @ (N, in) product and the second layer's products read that memory as it lies.
    """
    relu = spec.activation == "relu"
    p = flat.shape[0]
    h = x if x.dim() == 3 else x.expand(p, *x.shape)
    flat = flat.detach()
    all_layers = layers(flat, spec)
    shared = x.dim() == 2 and spec.widths[0] > 1 and spec.widths[1] > 1  # one input matrix, any number of models
    inputs, slopes = [], []  # each layer's input; each hidden layer's activation derivative
    for i, (weight, bias) in enumerate(all_layers):
        inputs.append(h)
        shape = (p, h.shape[1], weight.shape[1])
        if i == 0 and shared:  # into (P, out, N) memory: views of it as (P, N, out)
            shape_t = (p, weight.shape[1], h.shape[1])
            x_t = h[0].T.contiguous().expand(p, -1, -1)  # (P, in, N), one copy of the inputs
            a = buffer(work, ("a", i), shape_t, flat)
            h = torch.baddbmm(bias.unsqueeze(2), weight, x_t, out=a).transpose(1, 2)
            slope = buffer(work, ("s", i), shape_t, flat)
            slope = None if slope is None else slope.transpose(1, 2)
        else:
            h = _affine(h, weight, bias, buffer(work, ("a", i), shape, flat))
            slope = buffer(work, ("s", i), shape, flat)
        if i < len(all_layers) - 1:
            if relu:
                h = h.clamp_min_(0)
                slopes.append(torch.sign(h, out=slope))  # 1 where the unit is on, else 0
            else:
                h = h.tanh_()
                slopes.append(torch.addcmul(torch.ones((), dtype=h.dtype, device=h.device), h, h, value=-1, out=slope))
    losses, g = autograd_value_and_grad(loss_fn, h, y)
    grad = torch.empty_like(flat) if out is None else out
    grad_layers = layers(grad, spec)
    for i in reversed(range(len(all_layers))):
        (weight, _), (g_weight, g_bias) = all_layers[i], grad_layers[i]
        h, (_, fan_out, fan_in) = inputs[i], weight.shape
        if fan_in == 1:  # (P, 1, N) @ (P, N, out) has the layout of (P, out, 1) and runs ~3× faster
            g_weight.copy_(torch.bmm(h.transpose(1, 2), g).view(p, fan_out, 1))
        elif i == 0 and shared:  # g: a view of (P, out, N) memory (below), the inputs one (N, in): one matrix product
            g_t, buf = g.transpose(1, 2).reshape(p * fan_out, -1), buffer(work, ("gw", i), (p * fan_out, fan_in), flat)
            g_weight.copy_(torch.mm(g_t, h[0], out=buf).view(p, fan_out, fan_in))
            g_bias.copy_(g_t.sum(1).view(p, fan_out))  # along the memory: the same sums for any number of models
            continue
        elif i == 1 and shared:  # h: a view of (P, in, N) memory; (P, in, N) @ (P, N, out) reads it as it lies
            g_weight.copy_(torch.bmm(h.transpose(1, 2), g, out=buffer(work, ("gw", i), (p, fan_in, fan_out), flat)).mT)
        else:  # into a kept contiguous buffer (bmm into the strided view of ``grad`` is ~10× slower)
            g_weight.copy_(torch.bmm(g.transpose(1, 2), h, out=buffer(work, ("gw", i), g_weight.shape, flat)))
        g_bias.copy_(g.sum(1))
        if i == 1 and shared:  # into (P, in, N) memory, the layout of the first layer's slopes: (P, N, in) views
            buf = buffer(work, ("g", i), (p, fan_in, g.shape[1]), flat)
            g = torch.bmm(weight.transpose(1, 2), g.transpose(1, 2), out=buf).transpose(1, 2)
            g.mul_(slopes[i - 1])
        elif i > 0:
            buf = buffer(work, ("g", i), (p, g.shape[1], fan_in), flat)
            g = torch.mul(g, weight, out=buf) if fan_out == 1 else torch.bmm(g, weight, out=buf)  # (P, N, fan_in)
            g.mul_(slopes[i - 1])
    return losses.detach(), grad


ONE_INPUT_MIN_POINTS = 64  # below it (k-shot fine-tuning) the layer-by-layer pass is faster (bench/efficiency.py)


def _one_input_relu(
    flat: torch.Tensor,
    spec: MLPSpec,
    x: torch.Tensor,
    y: torch.Tensor,
    loss_fn,
    work: dict | None = None,
    out: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`loss_and_grad` of ``[1-H-1]`` ReLU nets (the sine scenario's) in O(P (N + H) log N) per step, not
    O(P N H): no (P, N, H) activations at all.

    A unit of a one-input net is on (``x w1 + b1 > 0``) on one side of its kink ``-b1 / w1``: above it when
    ``w1 >= 0``, below it when ``w1 < 0``. With each party's points sorted (once, kept in ``work``) a unit is on at
    the sorted points ``[lo, hi)``, and the sums over units that are on at a point, or over the points where a
    unit is on, are differences of prefix sums (float64):

    - forward: ``pred_n = b2 + x_n sum_on(w1 w2) + sum_on(b1 w2)``: the ``H`` units range-added into the ``N`` points;
    - backward, ``g = dloss/dpred``: per unit ``S0 = sum_on g`` and ``S1 = sum_on g x``; then ``dW1 = w2 S1``,
      ``db1 = w2 S0``, ``dw2 = w1 S1 + b1 S0``, ``db2 = sum g``.

    The same function and gradient as the layer-by-layer path (tested), up to the order of float additions and to
    a point within rounding of a unit's kink, which may count as on here and off there (the unit's output at that
    point is ~0 either way; its gradient share is not).
    """
    p, n = flat.shape[0], x.shape[-2]
    hidden = spec.widths[1]
    flat = flat.detach()
    (w1, b1), (w2, b2) = layers(flat, spec)  # (P, H, 1), (P, H), (P, 1, H), (P, 1)
    w1, w2 = w1[:, :, 0], w2[:, 0, :]
    cached = work.get("sorted") if work is not None else None
    if cached is None or cached[0] is not x:
        xs, order = torch.sort((x[..., 0] if x.dim() == 3 else x[:, 0]).expand(p, n), dim=1)
        cached = (x, xs.contiguous(), order, torch.argsort(order, dim=1), xs.double())
        if work is not None:
            work["sorted"] = cached
    _, xs, order, rank, xs64 = cached
    up = w1 >= 0
    # a flat unit (w1 = 0) is on everywhere (kink -inf) or nowhere (+inf, or nan when b1 = 0 too); + 0.0 makes -0 +0
    kink = torch.div(b1, w1 + 0.0).neg_()
    k = torch.searchsorted(xs, kink, right=True)  # (P, H): points at or below the kink
    lo, hi = torch.where(up, k, 0), torch.where(up, n, k)
    # both channels (slope, offset) in one (P, 2 (N + 1)) buffer: channel c's index i sits at c (N + 1) + i
    idx = torch.cat([lo, hi, lo + (n + 1), hi + (n + 1)], dim=1)  # (P, 4H)
    slope, offset = (w1 * w2).double(), (b1 * w2).double()
    diff = torch.zeros(p, 2 * (n + 1), dtype=torch.float64, device=flat.device)
    diff.scatter_add_(1, idx, torch.cat([slope, -slope, offset, -offset], dim=1))
    sums = diff.view(p, 2, n + 1).cumsum_(2)  # (P, 2, N + 1): sum of w1 w2 and of b1 w2 over the units on
    pred_sorted = torch.addcmul(sums[:, 1, :n], xs64, sums[:, 0, :n]).float().add_(b2)  # (P, N)
    pred = pred_sorted.gather(1, rank).unsqueeze(2)  # (P, N, 1), the points' own order
    losses, g = autograd_value_and_grad(loss_fn, pred, y)
    gs = g[..., 0].gather(1, order).double()  # (P, N), sorted
    prefix = torch.zeros(p, 2, n + 1, dtype=torch.float64, device=flat.device)
    torch.cumsum(gs, 1, out=prefix[:, 0, 1:])
    torch.cumsum(gs.mul_(xs64), 1, out=prefix[:, 1, 1:])
    at = prefix.view(p, -1).gather(1, idx).view(p, 2, 2, hidden)  # (P, channel, lo/hi, H)
    on = (at[:, :, 1] - at[:, :, 0]).float()  # (P, 2, H): sum of g and of g x over the points where a unit is on
    s0, s1 = on[:, 0], on[:, 1]
    grad = torch.empty_like(flat) if out is None else out
    (g_w1, g_b1), (g_w2, g_b2) = layers(grad, spec)
    torch.mul(w2, s1, out=g_w1[:, :, 0])
    torch.mul(w2, s0, out=g_b1)
    torch.addcmul(b1 * s0, w1, s1, out=g_w2[:, 0])
    g_b2.copy_(g.sum(1))
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
