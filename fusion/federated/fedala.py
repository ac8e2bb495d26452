"""``fedala`` (Zhang et al., AAAI 2023): FedAvg whose parties start each round from an adaptive local aggregation.

A sampled party keeps its last trained model θ_old and element-wise weights W ∈ [0, 1] on the top ``layers``
layers. Before training it builds its start from the downloaded w:

    θ = w + (θ_old − w) ⊙ (1 − W)        on the top layers      (= θ_old + (w − θ_old) ⊙ W)
    θ = w                                 on the layers below

written so that W = 1 gives w exactly. W is first learned (ALA, as PFLlib's ``utils/ALA.py`` runs it): on a random
``share`` of the party's rows (a subset in an order drawn from its generator each round, fixed for that round),
in minibatches of the run's ``batch_size`` (the last one of an epoch holds the rest), each step
W ← clip(W − η ∂L/∂θ ⊙ (w − θ_old), 0, 1) (η = ``weight_lr``). A party's first ALA learns W until the standard
deviation of its last ``window`` epoch losses (each the loss of the epoch's last minibatch) is below ``threshold``
(at most ``max_epochs`` epochs); later rounds take ``weight_epochs`` epochs. Then θ trains by the run's local
training as in FedAvg, is uploaded, and kept as the next θ_old.

A party whose θ_old is still w (its first round: it starts from w and W = 1) skips ALA, as PFLlib's does, and its
first ALA comes the round after. The layers below the top ones are w during ALA, so their output on the share is
computed once and the W steps run the top layers only (a whole-model pass per step when the top layers include a
convolution).

A novel party receives w and uses the run's k-shot recipe (:class:`GlobalModel` with ``finetune`` True): it has
no θ_old to aggregate with.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from fusion.federated.base import FederatedAlgorithm, LocalBatch, State, Tensors, register, weighted_mean
from fusion.federated.fedavg import GlobalModel
from fusion.federated.local import local_train
from fusion.lazy import torch
from fusion.models.activation import activate
from fusion.models.params import forward, loss_and_grad
from fusion.models.spec import MLPSpec, Spec


@dataclass(frozen=True)
class FedALASettings:
    """``[federated.fedala]`` keys (defaults: PFLlib's ALA)."""

    layers: int = 1  # top layers aggregated adaptively (1: the head); the ones below take w
    share: float = 0.8  # fraction of the party's rows that the weights W learn on (PFLlib's rand_percent 80)
    weight_lr: float = 1.0  # η of the W steps
    weight_epochs: int = 1  # epochs of W steps in every ALA after a party's first
    threshold: float = 0.1  # a party's first ALA stops when its last ``window`` epoch losses have a std below this
    window: int = 10
    max_epochs: int = 100  # cap of a party's first ALA

    def __post_init__(self) -> None:
        if self.layers < 1:
            raise ValueError(f"federated.fedala.layers must be >= 1, got {self.layers}")
        if not 0 < self.share <= 1:
            raise ValueError(f"federated.fedala.share must be a fraction in (0, 1], got {self.share}")
        if not self.weight_lr > 0:
            raise ValueError(f"federated.fedala.weight_lr must be > 0, got {self.weight_lr}")
        for key in ("weight_epochs", "max_epochs"):
            if getattr(self, key) < 0:
                raise ValueError(f"federated.fedala.{key} must be >= 0, got {getattr(self, key)}")
        if not self.threshold >= 0:
            raise ValueError(f"federated.fedala.threshold must be >= 0, got {self.threshold}")
        if self.window < 1:
            raise ValueError(f"federated.fedala.window must be >= 1, got {self.window}")


def split(spec: Spec, layers: int) -> tuple[Spec, MLPSpec] | None:
    """``spec`` cut below its top ``layers`` layers: (the model up to there, whose output the top layers take after
    the activation; the top layers as an MLP), the flat layout of the two being the whole one's cut at the top
    layers' start. None when a convolution is among the top layers."""
    if isinstance(spec, MLPSpec):
        cut = spec.n_layers - layers
        if cut < 1:
            return None
        return MLPSpec(spec.widths[: cut + 1], spec.activation), MLPSpec(spec.widths[cut:], spec.activation)
    k = len(spec.fc) - layers  # hidden Linear layers below the top ones
    if k < 0:
        return None
    bottom = replace(spec, fc=spec.fc[:k], n_out=spec.fc[k], name="")
    return bottom, MLPSpec((spec.fc[k], *spec.fc[k + 1 :], spec.n_out), spec.activation)


@register
class FedALA(FederatedAlgorithm):
    name = "fedala"
    settings = FedALASettings
    personal = True

    def _top(self, spec: Spec) -> int:
        """Start of the adaptively aggregated top layers in the flat layout."""
        if self.opts.layers > spec.n_layers:
            raise ValueError(f"federated.fedala.layers must be <= the model's {spec.n_layers} layers, got {spec}")
        return spec.offsets[-self.opts.layers][0]

    def _share_sizes(self, counts) -> tuple[np.ndarray, np.ndarray]:
        """Rows m (n,) of each party's share and W steps per epoch (n,) (minibatches of ``batch_size``; 0: one)."""
        counts = np.asarray(counts).astype(np.int64)
        m = np.where(counts > 0, np.maximum(1, (self.opts.share * counts + 1e-9).astype(np.int64)), 0)
        b = self.cfg.local().batch_size
        per_epoch = -(-m // b) if b else np.minimum(m, 1)
        return m, per_epoch

    def party_steps(self, counts: np.ndarray) -> np.ndarray:
        """Local steps plus ``weight_epochs`` epochs of W steps (a party's first ALA may take more epochs; they are
        steps of the top layers only and are not counted)."""
        return self.opts.weight_epochs * self._share_sizes(counts)[1] + self.cfg.local().party_steps(counts)

    def init_server(self, spec: Spec, init: np.ndarray, descriptors: np.ndarray, seed: int) -> State:
        self._top(spec)  # refuses too many layers before any round
        return super().init_server(spec, init, descriptors, seed)

    def init_personal(self, down: Tensors, batch: LocalBatch) -> Tensors:
        n, top = len(batch), self._top(batch.spec)
        theta = down["w"].expand(n, -1).clone()
        ones = torch.ones(n, theta.shape[1] - top, dtype=theta.dtype, device=theta.device)
        return {"theta": theta, "weights": ones, "settled": torch.zeros(n, 1, dtype=theta.dtype, device=theta.device)}

    def participant_models(self, down: Tensors, personal: Tensors | None, batch: LocalBatch) -> torch.Tensor:
        return self._adapted(down, personal, batch)[0]  # the local model after ALA, as the round starts from it

    def local_update(self, down: Tensors, personal: Tensors | None, batch: LocalBatch) -> tuple[Tensors, Tensors]:
        start, weights, settled = self._adapted(down, personal, batch)
        theta = local_train(start, batch)
        return {"w": theta}, {"theta": theta, "weights": weights, "settled": settled}

    def _adapted(self, down: Tensors, personal: Tensors, batch: LocalBatch) -> tuple[torch.Tensor, ...]:
        """ALA: (the start θ_old + (w − θ_old) ⊙ W on the top layers and w below (n, P), the learned W, the parties'
        first-ALA-done flags (n, 1))."""
        top = self._top(batch.spec)
        w = down["w"].expand(len(batch), -1)
        old, weights = personal["theta"], personal["weights"].clone()
        settled = personal.get("settled", torch.ones_like(old[:, :1])).clone()
        gap = old[:, top:] - w[:, top:]  # θ_old − w on the top layers
        learn = (old != w).any(1) & (batch.counts > 0)
        if learn.any():
            rows = torch.nonzero(learn).flatten()
            weights[rows] = self._learn(w[rows], gap[rows], weights[rows], settled[rows, 0] > 0, batch, rows)
            settled[rows] = 1
        start = w.clone()
        start[:, top:] = w[:, top:] + gap * (1 - weights)
        return start, weights, settled

    def _learn(self, w, gap, weights, settled, batch: LocalBatch, rows: torch.Tensor) -> torch.Tensor:
        """W (k, P_top) of the parties at ``rows`` of ``batch`` after their ALA epochs (the module docstring)."""
        opts, spec, top, b_run = self.opts, batch.spec, self._top(batch.spec), self.cfg.local().batch_size
        epochs = np.where(settled.cpu().numpy(), opts.weight_epochs, opts.max_epochs)
        if not epochs.any():  # nothing to learn: the parties' generators are left as they are
            return weights
        pos = rows.cpu().numpy()
        counts = np.minimum(batch.counts[rows].cpu().numpy().astype(np.int64), batch.x.shape[1])
        m, per_epoch = self._share_sizes(counts)
        b = np.minimum(b_run, m) if b_run else m  # minibatch rows (the epoch's last minibatch holds the rest)
        idx = torch.zeros((len(pos), int(m.max())), dtype=torch.long, device=batch.x.device)
        for j, (i, n, k) in enumerate(zip(pos, counts, m)):
            idx[j, :k] = torch.as_tensor(batch.rngs[i].permutation(int(n))[: int(k)], device=idx.device)
        x, y = batch.x[rows[:, None], idx], batch.y[rows[:, None], idx]
        cut = split(spec, opts.layers)
        if cut is not None:
            with torch.no_grad():
                x = activate(forward(w[:, :top], cut[0], x), spec.activation)
        losses: list[list[float]] = [[] for _ in pos]
        done, step, work = epochs == 0, 0, {}
        while not done.all():
            live = np.flatnonzero(~done)
            j = step % per_epoch[live]  # each live party's minibatch in its epoch
            size = np.minimum(b[live], m[live] - j * b[live])
            last = j == per_epoch[live] - 1
            for s in np.unique(size):  # parties whose minibatches have s rows: one batched step
                pick = live[size == s]
                sel = torch.as_tensor(pick, device=x.device)
                at = torch.as_tensor((j[size == s] * b[pick])[:, None] + np.arange(s), device=x.device)
                xb, yb = x[sel[:, None], at], y[sel[:, None], at]
                params = w[sel, top:] + gap[sel] * (1 - weights[sel])
                loss_fn = batch.loss_of(batch.descriptors[rows[sel]])
                if cut is not None:
                    loss, grad = loss_and_grad(params, cut[1], xb, yb, loss_fn, work)
                else:
                    loss, grad = loss_and_grad(torch.cat([w[sel, :top], params], 1), spec, xb, yb, loss_fn, work)
                    grad = grad[:, top:]
                weights[sel] = (weights[sel] + opts.weight_lr * grad * gap[sel]).clamp_(0, 1)  # dθ/dW = −gap
                for r, value, end in zip(pick, loss.tolist(), last[size == s]):
                    if end:
                        losses[r].append(value)
            step += 1
            for r in live[last]:
                tail = losses[r][-opts.window :]
                converged = not settled[r] and len(losses[r]) > opts.window and float(np.std(tail)) < opts.threshold
                done[r] = converged or len(losses[r]) >= epochs[r]
        return weights

    def aggregate(self, server: State, uploads: State, weights: np.ndarray, ids: np.ndarray) -> State:
        return {**server, "w": weighted_mean(uploads["w"], weights)}

    def novel(self, server: State, spec: Spec) -> GlobalModel:
        return GlobalModel(server["w"], finetune=True)
