"""How a stack may move while it trains: a mask of trainable parameters and a proximal pull toward an anchor."""

from __future__ import annotations

from dataclasses import dataclass

from fusion.lazy import torch


@dataclass(frozen=True)
class Constraint:
    """How a stack may move while it trains: only where ``mask`` (n_params,) is True, and pulled toward
    ``anchor`` (P, n_params) by ``prox``/2 · ‖w − anchor‖² (Ditto's personal objective; FedRep trains its head only).

    ``mask`` None: every parameter trains; ``prox`` 0: no pull (``anchor`` may be None).
    """

    mask: torch.Tensor | None = None
    prox: float = 0.0
    anchor: torch.Tensor | None = None

    def __post_init__(self) -> None:
        if self.prox < 0:
            raise ValueError(f"prox must be >= 0, got {self.prox}")
        if self.prox > 0 and self.anchor is None:
            raise ValueError("a proximal term needs its anchor")

    def apply(self, grad: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        if self.prox > 0:
            grad = grad.add_(weights - self.anchor, alpha=self.prox)
        if self.mask is not None:
            grad = grad.mul_(self.mask)
        return grad

    def repeat(self, g: int) -> Constraint:
        """The same constraint for a stack repeated ``g`` times (fold-major rows, as in
        :func:`fusion.adapt.finetuning.finetune`)."""
        anchor = None if self.anchor is None else self.anchor.repeat(g, 1)
        return Constraint(self.mask, self.prox, anchor)

    def rows(self, idx: torch.Tensor) -> Constraint:
        """The constraint of rows ``idx`` of the stack."""
        return self if self.anchor is None else Constraint(self.mask, self.prox, self.anchor[idx])


FREE = Constraint()
