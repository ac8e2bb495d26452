"""The C kernels of ``fusion/_kernels.c`` (built at install when a C compiler is there), through ctypes.

:func:`one_input_relu` is :func:`fusion.models.params.loss_and_grad` for ``[1-H-1]`` ReLU nets on CPU float32
stacks: a fused forward pass, the loss's gradient with respect to the predictions (its closed form where a
:class:`fusion.models.loss.RowLoss` carries one, else autograd on the predictions only), and a fused backward pass
that recomputes each unit's pre-activations instead of storing (P, N, H) of them. :func:`available` says whether the
library loaded; without it (no compiler at install, another device or dtype) ``fusion.models.params`` runs its torch
passes. :func:`adam_step` is the training loop's Adam update in one pass. Set ``FUSION_KERNELS=0`` to run the torch
code everywhere (a comparison, or a suspected kernel bug).
"""

from __future__ import annotations

import ctypes
import importlib.util
import os
from functools import cache

from fusion.lazy import torch
from fusion.models.loss import RowLoss, autograd_value_and_grad
from fusion.models.workspace import buffer

_LONG, _PTR = ctypes.c_long, ctypes.c_void_p


@cache
def _library() -> ctypes.CDLL | None:
    if os.environ.get("FUSION_KERNELS", "1") == "0":
        return None
    try:
        spec = importlib.util.find_spec("fusion._kernels")
    except ImportError:
        return None
    if spec is None or not spec.origin or not os.path.isfile(spec.origin):
        return None
    try:
        lib = ctypes.CDLL(spec.origin)
    except OSError:
        return None
    lib.mlp1_forward.argtypes = [_LONG, _LONG, _LONG, _PTR, _LONG, _PTR, _PTR]
    lib.mlp1_backward.argtypes = [_LONG, _LONG, _LONG, _PTR, _LONG, _PTR, _PTR, _PTR]
    _F = ctypes.c_float
    lib.adam_step.argtypes = [_LONG, _PTR, _PTR, _PTR, _PTR, _F, _F, _F, _F, _F, _F]
    lib.mlp1_forward.restype = lib.mlp1_backward.restype = lib.adam_step.restype = None
    return lib


def available() -> bool:
    """Whether the compiled kernels loaded."""
    return _library() is not None


def applies(flat: torch.Tensor, x: torch.Tensor) -> bool:
    """Whether :func:`one_input_relu` can take these tensors (CPU float32, the library loaded)."""
    return (
        flat.device.type == "cpu" and x.device.type == "cpu" and flat.dtype == torch.float32
        and x.dtype == torch.float32 and available()
    )  # fmt: skip


def _inputs(x: torch.Tensor, work: dict | None = None) -> tuple[torch.Tensor, int]:
    """``x`` (P, N, 1) or (N, 1) as a contiguous (P, N) or (N,) float32 tensor and its row stride (0: shared);
    kept in ``work`` for the next call with the same ``x``."""
    cached = None if work is None else work.get("inputs")
    if cached is not None and cached[0] is x:
        return cached[1], cached[2]
    xs = x[..., 0]
    if xs.dim() == 2 and xs.stride(0) == 0:  # one row expanded over the stack
        xs = xs[0]
    xs = xs.contiguous()
    stride = 0 if xs.dim() == 1 else xs.shape[1]
    if work is not None:
        work["inputs"] = (x, xs, stride)
    return xs, stride


def forward(
    flat: torch.Tensor, hidden: int, x: torch.Tensor, work: dict | None = None, out: torch.Tensor | None = None
) -> torch.Tensor:
    """Predictions (P, N) of ``[1-H-1]`` ReLU nets ``flat`` (P, 3H + 1) at ``x`` (P, N, 1) or (N, 1); ``work`` keeps
    the prepared inputs across calls, ``out`` (P, N) receives the predictions."""
    flat = flat.detach().contiguous()
    p, n = flat.shape[0], x.shape[-2]
    xs, sx = _inputs(x, work)
    pred = torch.empty(p, n, dtype=torch.float32) if out is None else out
    _library().mlp1_forward(p, n, hidden, xs.data_ptr(), sx, flat.data_ptr(), pred.data_ptr())
    return pred


def one_input_relu(
    flat: torch.Tensor,
    hidden: int,
    x: torch.Tensor,
    y: torch.Tensor,
    loss_fn,
    work: dict | None = None,
    out: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-model losses (P,) and their gradient (P, 3H + 1), as :func:`fusion.models.params.loss_and_grad`."""
    flat = flat.detach().contiguous()
    xs, sx = _inputs(x, work)
    pred = forward(flat, hidden, x, work, buffer(work, "pred", (flat.shape[0], x.shape[-2]), flat))
    if isinstance(loss_fn, RowLoss):  # its closed-form gradient where it has one: a few ops, no graph
        losses, g = loss_fn.value_and_grad(pred.unsqueeze(2), y)
    else:
        losses, g = autograd_value_and_grad(loss_fn, pred.unsqueeze(2), y)
    g = g[..., 0].contiguous()
    grad = torch.empty_like(flat) if out is None else out
    p, n = pred.shape
    _library().mlp1_backward(p, n, hidden, xs.data_ptr(), sx, flat.data_ptr(), g.data_ptr(), grad.data_ptr())
    return losses.detach(), grad


def adam_applies(*tensors: torch.Tensor) -> bool:
    """Whether :func:`adam_step` can update these tensors (contiguous CPU float32, the library loaded)."""
    cpu32 = lambda t: t.device.type == "cpu" and t.dtype == torch.float32 and t.is_contiguous()  # noqa: E731
    return available() and all(cpu32(t) for t in tensors)


def adam_step(weights, grad, m, v, step: float, beta1: float, beta2: float, bc2: float, eps: float) -> None:
    """One in-place Adam update of ``weights`` (see ``adam_step`` in ``_kernels.c``)."""
    tiny = torch.finfo(torch.float32).tiny
    _library().adam_step(
        weights.numel(), weights.data_ptr(), grad.data_ptr(), m.data_ptr(), v.data_ptr(), step, beta1, beta2, bc2, eps,
        tiny,
    )  # fmt: skip
