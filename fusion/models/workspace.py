"""Work buffers kept across the calls of a training loop: a forward and backward pass of a small stack costs less
than the page faults of fresh tensors of its activations."""

from __future__ import annotations

from fusion.lazy import torch


def buffer(work: dict | None, key, shape, like: torch.Tensor) -> torch.Tensor | None:
    """A tensor kept in ``work`` across calls (fresh pages cost more than the arithmetic here), or None."""
    if work is None:
        return None
    buf = work.get(key)
    if buf is None or buf.shape != shape or buf.dtype != like.dtype or buf.device != like.device:
        buf = work[key] = torch.empty(shape, dtype=like.dtype, device=like.device)
    return buf
