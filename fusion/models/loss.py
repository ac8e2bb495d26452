"""Per-model losses of a stack: model ``p``'s loss depends on its own predictions and targets only.

A loss is any callable ``loss_fn(pred (P, N, out), y) -> (P,)``. :class:`RowLoss` is one whose per-model extra input
(e.g. each model's task descriptor) travels with it, so the loss of a slice of the stack is known
(:meth:`RowLoss.rows`), and which may carry its closed-form gradient with respect to the predictions.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from fusion.lazy import torch


@dataclass(frozen=True)
class RowLoss:
    """A per-model loss ``fn(pred, y, per_row)``: model ``p``'s loss depends on its own predictions, targets and
    ``per_row[p]`` only (e.g. its descriptor), so the loss of a slice of the stack is :meth:`rows`. CNN stacks too
    large for one graph then run their passes slice by slice (:func:`fusion.models.conv.loss_and_grad`); any other
    callable ``loss_fn(pred, y)`` works everywhere, with a second forward pass there."""

    fn: Callable
    per_row: torch.Tensor | None = None
    grad_fn: Callable | None = None  # fn's closed-form gradient, ``grad_fn(pred, y, per_row) -> (losses, dpred)``

    def __call__(self, pred: torch.Tensor, y) -> torch.Tensor:
        return self.fn(pred, y, self.per_row)

    def value_and_grad(self, pred: torch.Tensor, y) -> tuple[torch.Tensor, torch.Tensor]:
        """The losses (P,) and d(their sum)/d ``pred``: by ``grad_fn`` when given, else by autograd."""
        if self.grad_fn is not None:
            return self.grad_fn(pred, y, self.per_row)
        return autograd_value_and_grad(self, pred, y)

    def rows(self, part: slice) -> RowLoss:
        return RowLoss(self.fn, None if self.per_row is None else self.per_row[part], self.grad_fn)


def autograd_value_and_grad(loss_fn: Callable, pred: torch.Tensor, y) -> tuple[torch.Tensor, torch.Tensor]:
    """``loss_fn(pred, y)`` (P,) and d(its sum)/d ``pred`` by autograd on the predictions only."""
    leaf = pred.detach().requires_grad_(True)
    with torch.enable_grad():
        losses = loss_fn(leaf, y)
        (g,) = torch.autograd.grad(losses.sum(), leaf)
    return losses.detach(), g
