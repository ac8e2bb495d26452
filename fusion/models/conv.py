"""Batched forward and gradient of ``P`` small CNNs (:class:`fusion.models.spec.CNNSpec`) as one tensor program.

Two ways to run the convolutions of a stack, chosen by each model's convolution work on its examples
(``bench/cnn_batched.py``):

- little work (small models, or a minibatch of local training; up to :data:`PER_MODEL_MACS` multiply-adds): im2col,
  the patches of every model's channels-last maps times its filters as one batched matrix product over the stack;
  a model's step is then a few large products instead of many tiny convolutions;
- more (a large CNN pretraining on a party's data, or scoring it): torch's own convolution model by model, whose
  blocked kernels keep a large batch in the cache where im2col's patch matrix would not fit.

The Linear layers are batched matrix products either way. Inputs arrive flat, (P, N, fan_in) or (N, fan_in), and
are read as (channels, side, side) images. The stack runs in groups of :data:`PARTY_GROUP` models (one model at a
time on the per-model path), each group one gradient leaf: a model's loss and gradient depend on its own parameters
only, so the split is exact.

Memory: long inputs are processed in chunks of examples whose activations stay under :data:`CHUNK_FLOATS`: the
forward pass chunk by chunk, and the gradient by a no-graph forward for the predictions, the loss's gradient w.r.t.
them, then per chunk a forward with graph and a backward of that chunk's share (exact: the loss's gradient depends
on the chunks only through the predictions).
"""

from __future__ import annotations

import functools

from fusion.lazy import lazy, torch
from fusion.models.loss import RowLoss
from fusion.models.spec import CNNSpec

F = lazy("torch.nn.functional")

CHUNK_FLOATS = 2**26  # activation floats of one chunk (256 MB: one cnn-s party's 1,500 images)
PARTY_GROUP = 8  # models per im2col group
PER_MODEL_MACS = 5 * 10**7  # convolution multiply-adds per model above which convolutions run model by model


def _views(flat: torch.Tensor, spec: CNNSpec) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per layer (weight, bias) views of the stack ``flat`` (P, n_params), by one ``split``: where the gradient
    flows back through them (the chunked pass), the split's backward writes it in one concatenation (slicing layer
    by layer would add a stack-sized zero tensor per layer)."""
    p = flat.shape[0]
    sizes = [n for w0, b0, b1 in spec.offsets for n in (b0 - w0, b1 - b0)]
    parts = torch.split(flat, sizes, dim=1)
    return [(w.reshape(p, *shape), b) for w, b, shape in zip(parts[::2], parts[1::2], spec.weight_shapes)]


def _assemble(grads, groups: list[slice], like: torch.Tensor, spec: CNNSpec) -> torch.Tensor:
    """The flat gradient (P, n_params) from each group's per-layer gradients (weight, bias, weight, ...), written
    once into place (one leaf per layer, not per stack: no concatenation inside the backward pass)."""
    out, per_group = torch.empty_like(like), 2 * len(spec.offsets)
    bounds = [(lo, hi) for w0, b0, b1 in spec.offsets for lo, hi in ((w0, b0), (b0, b1))]
    for i, g in enumerate(groups):
        for (lo, hi), grad in zip(bounds, grads[i * per_group : (i + 1) * per_group]):
            out[g, lo:hi] = grad.reshape(grad.shape[0], -1)
    return out


def _conv_block(h: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, spec: CNNSpec) -> torch.Tensor:
    """Conv -> ReLU -> MaxPool2d(2) of channels-last maps ``h`` (P, n, side, side, c) as one batched matrix product
    over the stack (im2col): patches (P, n·s², c·k²) times each model's filters (P, c·k², out)."""
    p, n, k = h.shape[0], h.shape[1], spec.kernel
    if spec.padding:
        h = F.pad(h, (0, 0, spec.padding, spec.padding, spec.padding, spec.padding))
    c_out, c_in = weight.shape[1], weight.shape[2]
    s = h.shape[2] - k + 1
    cols = h.unfold(2, k, 1).unfold(3, k, 1).reshape(p, n * s * s, c_in * k * k)  # patch order (c, ky, kx)
    out = torch.baddbmm(bias.unsqueeze(1), cols, weight.reshape(p, c_out, c_in * k * k).transpose(1, 2))
    out = torch.relu(out).reshape(p * n, s, s, c_out).permute(0, 3, 1, 2)  # channels-last memory
    pooled = F.max_pool2d(out, 2).permute(0, 2, 3, 1)
    return pooled.reshape(p, n, *pooled.shape[1:])


def _floats_per_example(spec: CNNSpec) -> int:
    """Activation floats of one example of one model (conv output, its ReLU and its pooling, per block)."""
    total = spec.fan_in
    for c, s_in, s_out in zip(spec.convs, spec.sizes[:-1], spec.sizes[1:]):
        conv = s_in + 2 * spec.padding - spec.kernel + 1
        total += 2 * c * conv**2 + c * s_out**2
    return total + 2 * sum(spec.fc) + spec.n_out


def _chunk(spec: CNNSpec, p: int, n: int) -> int:
    return max(1, min(n, CHUNK_FLOATS // max(1, p * _floats_per_example(spec))))


def _forward(views, spec: CNNSpec, x: torch.Tensor) -> torch.Tensor:
    """One chunk: ``x`` (P, n, fan_in) -> (P, n, n_out). Maps stay channels-last on the im2col path; the Linear
    layers run on transposed activations (P, features, n), so each weight's gradient comes out in its own (out, in)
    layout."""
    p, n = x.shape[0], x.shape[1]
    n_conv = len(spec.convs)
    if _per_model(spec, n):
        h = torch.stack(
            [_conv_model([(_one(w, i), _one(b, i)) for w, b in views[:n_conv]], spec, x[i]) for i in range(p)]
        )
    else:
        h = x.reshape(p, n, spec.channels, spec.side, spec.side).permute(0, 1, 3, 4, 2)
        for weight, bias in views[:n_conv]:
            h = _conv_block(h, weight, bias, spec)
        h = h.permute(0, 4, 2, 3, 1)
    h = h.reshape(p, spec.flat_features, n)  # torch.nn.Flatten's (c, y, x) order
    linears = views[n_conv:]
    for i, (weight, bias) in enumerate(linears):
        h = torch.baddbmm(bias.unsqueeze(2), weight, h)
        if i < len(linears) - 1:
            h = torch.relu(h)
    return h.transpose(1, 2)


def _one(t: torch.Tensor, i: int) -> torch.Tensor:
    """Model ``i`` of a stacked tensor; a view (not an index, whose backward fills a zero stack) for one model."""
    return t.reshape(t.shape[1:]) if t.shape[0] == 1 else t[i]


def _conv_model(convs, spec: CNNSpec, x: torch.Tensor) -> torch.Tensor:
    """One model's conv blocks by torch's convolution: ``x`` (n, fan_in) -> (c, y, x, n) maps (the im2col path's
    layout after its permute, so both flatten alike)."""
    h = x.reshape(len(x), spec.channels, spec.side, spec.side)
    for weight, bias in convs:
        h = F.max_pool2d(torch.relu(F.conv2d(h, weight, bias, padding=spec.padding)), 2)
    return h.permute(1, 2, 3, 0)


def _expand(x: torch.Tensor, p: int) -> torch.Tensor:
    return x if x.dim() == 3 else x.expand(p, *x.shape)


@functools.cache
def _conv_macs(spec: CNNSpec) -> int:
    """Multiply-adds of one example's convolutions."""
    macs, chans = 0, (spec.channels, *spec.convs)
    for c_in, c_out, side in zip(chans[:-1], chans[1:], spec.sizes[:-1]):
        macs += (side + 2 * spec.padding - spec.kernel + 1) ** 2 * c_out * c_in * spec.kernel**2
    return macs


def _per_model(spec: CNNSpec, n: int) -> bool:
    """Whether a model's convolutions on ``n`` examples run by torch's convolution, model by model."""
    return n * _conv_macs(spec) > PER_MODEL_MACS


def _groups(p: int, spec: CNNSpec, n: int, size: int = PARTY_GROUP) -> list[slice]:
    """``p`` models seeing ``n`` examples each in consecutive slices of at most ``size`` (one model per slice on the
    per-model path)."""
    size = 1 if _per_model(spec, n) else size
    return [slice(i, min(p, i + size)) for i in range(0, p, size)]


def forward(flat: torch.Tensor, spec: CNNSpec, x: torch.Tensor) -> torch.Tensor:
    """``flat`` (P, n_params), ``x`` (P, N, fan_in) or (N, fan_in) -> outputs (P, N, n_out)."""
    x = _expand(x, flat.shape[0])
    return torch.cat([_forward_group(flat[g], spec, x[g]) for g in _groups(flat.shape[0], spec, 0)])


def _forward_group(flat: torch.Tensor, spec: CNNSpec, x: torch.Tensor) -> torch.Tensor:
    p = flat.shape[0]
    views, step = _views(flat, spec), _chunk(spec, p, x.shape[1])
    if x.shape[1] <= step:
        return _forward(views, spec, x)
    return torch.cat([_forward(views, spec, x[:, i : i + step]) for i in range(0, x.shape[1], step)], dim=1)


def loss_and_grad(
    flat: torch.Tensor, spec: CNNSpec, x: torch.Tensor, y: torch.Tensor, loss_fn, work: dict | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-model losses ``loss_fn(forward(flat, spec, x), y)`` (P,) and d(their sum)/d ``flat`` (P, n_params).

    A :class:`fusion.models.loss.RowLoss` runs slice by slice of the stack, each slice as one graph when its
    activations fit :data:`CHUNK_FLOATS`. Any other ``loss_fn`` sees the whole stack's predictions at once (it may
    hold per-model tensors of its own): one graph if the stack fits, else a no-graph forward first. ``work`` is
    accepted for the common signature (:func:`fusion.models.params.loss_and_grad`) and not used.
    """
    p, n = flat.shape[0], x.shape[-2]
    x = _expand(x, p)
    if not isinstance(loss_fn, RowLoss):
        return _stack_loss_and_grad(flat, spec, x, y, loss_fn)
    size = max(1, min(PARTY_GROUP, CHUNK_FLOATS // (n * _floats_per_example(spec))))
    parts = [
        _stack_loss_and_grad(flat[g], spec, x[g], None if y is None else y[g], loss_fn.rows(g))
        for g in _groups(p, spec, n, size)
    ]
    return torch.cat([loss for loss, _ in parts]), torch.cat([grad for _, grad in parts])


def _stack_loss_and_grad(flat: torch.Tensor, spec: CNNSpec, x: torch.Tensor, y, loss_fn):
    p, n = flat.shape[0], x.shape[1]
    with torch.enable_grad():
        if p * n * _floats_per_example(spec) <= CHUNK_FLOATS:  # every group's graph at once: one backward
            groups = _groups(p, spec, n)
            leaves = [[t.requires_grad_(True) for pair in _views(flat[g].detach(), spec) for t in pair] for g in groups]
            pairs = [list(zip(ls[::2], ls[1::2])) for ls in leaves]
            pred = torch.cat([_forward(views, spec, x[g]) for views, g in zip(pairs, groups)])
            losses = loss_fn(pred, y)
            grads = torch.autograd.grad(losses.sum(), [t for ls in leaves for t in ls])
            return losses.detach(), _assemble(grads, groups, flat, spec)
        with torch.no_grad():
            pred = forward(flat, spec, x)
        pred.requires_grad_(True)
        losses = loss_fn(pred, y)
        (g_pred,) = torch.autograd.grad(losses.sum(), pred)
        grad = torch.zeros_like(flat)
        for g in _groups(p, spec, n):
            weights = flat[g].detach().requires_grad_(True)
            step = _chunk(spec, weights.shape[0], n)
            for i in range(0, n, step):
                out = _forward(_views(weights, spec), spec, x[g, i : i + step])
                grad[g] += torch.autograd.grad(out, weights, g_pred[g, i : i + step])[0]
    return losses.detach(), grad
