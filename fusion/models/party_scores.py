"""A per-party score of a stack of models on each party's own rows: the one pass that the participating protocol of
the one-shot methods (:func:`fusion.evaluate.participating`) and PFLlib's scoring of participating parties
(:func:`fusion.federated.rounds.participant_scores`) share."""

from __future__ import annotations

from collections.abc import Callable

from fusion.lazy import torch
from fusion.models.params import forward
from fusion.models.spec import CNNSpec, Spec

ScoreFn = Callable[["torch.Tensor", "torch.Tensor", "torch.Tensor"], "torch.Tensor"]  # (pred, y, descriptors) -> (m,)


def party_scores(
    fn: ScoreFn, models: torch.Tensor, spec: Spec, x: torch.Tensor, y: torch.Tensor, descriptors: torch.Tensor
) -> torch.Tensor:
    """``fn(forward(models, spec, x), y, descriptors)`` (m,) for a stack ``models`` (m, spec.n_params) on its parties'
    stacked rows ``x`` (m, N, in), ``y`` (m, N, ...) (padding after each party's real rows: NaN targets or negative
    labels), ``descriptors`` (m, d); no gradient.

    An MLP stack is one batch. A CNN's activations are large: its parties run one at a time, each on its rows up to
    its last real one (:func:`real_length`), so the stack's padding costs nothing.

    >>> from fusion.models.spec import MLPSpec
    >>> spec = MLPSpec((1, 2, 1))
    >>> models, x = torch.zeros(3, spec.n_params), torch.ones(3, 4, 1)
    >>> party_scores(lambda pred, y, d: (pred - y).abs().mean((1, 2)), models, spec, x, x, torch.zeros(3, 1))
    tensor([1., 1., 1.])
    """
    with torch.no_grad():
        if not isinstance(spec, CNNSpec):
            return fn(forward(models, spec, x), y, descriptors)
        out = []
        for i in range(len(models)):
            n = real_length(y[i])
            out.append(fn(forward(models[i : i + 1], spec, x[i : i + 1, :n]), y[i : i + 1, :n], descriptors[i : i + 1]))
        return torch.cat(out) if out else torch.zeros(0, device=models.device)


def real_length(y: torch.Tensor) -> int:
    """Rows of one party's stacked targets ``y`` (N, ...) up to its last real one (padding comes after: NaN targets
    or negative labels, :class:`fusion.federated.base.LocalBatch`); at least 1."""
    flat = y.reshape(len(y), -1)
    real = ~torch.isnan(flat).all(1) if flat.is_floating_point() else (flat >= 0).all(1)
    idx = torch.nonzero(real)
    return int(idx[-1]) + 1 if len(idx) else 1
