"""What the heterogeneous-model (HtFL) algorithms share: a common feature layer, features, local training with
feature terms, class means, and a novel party's start.

The data-free HtFL algorithms (``lg_fedavg``, ``fd``, ``fedproto``, ``fedtgp``, ``fedgh``; as in HtFLlib) let
parties of different architecture families learn together by exchanging things that do not depend on the
architecture: a linear head, class prototypes (mean features per class) or mean logits per class. Every party
keeps its whole model; bodies never leave it.

**The common representation.** A party of family ``f`` trains :func:`feature_spec` ``(f, D)``: its family's
model whose last hidden layer (the feature layer) has ``D`` units, followed by the linear head
``Linear(D, classes)``. When the family's last hidden width already is ``D`` the model is the family's own;
otherwise one hidden layer ``Linear(w, D) + activation`` is appended before the head (an MLP ``mlp-100`` with
``D = 128`` becomes ``[in-100-128-10]``, ``cnn-m`` gets ``fc = (512, 128)``). The features of an input are the
feature layer's activations (D,); the head is the flat layout's last layer. ``D`` is ``[federated]
feature_dim``; 0 (the default) takes the smallest last hidden width among the run's families (100 for
``mlp-100`` + ``cnn-s`` + ``cnn-m``: ``mlp-100`` unchanged, ``cnn-s`` and ``cnn-m`` get a 100-unit layer).

**Personal models.** A party's model starts from its own init, drawn from (run seed, party id) (not the common
init of FedAvg): it is kept in the shard that hosts the party (a personal state) and trained by the run's local training
(:mod:`fusion.federated.local`) every round the party is sampled.

**Novel parties.** A novel party took no part in training and the server holds no body, so its 0-shot model is
the plain init of its family's model (one draw per family from the run seed, :func:`novel_body`) with the
algorithm's shared knowledge as its head: the global head (``lg_fedavg``, ``fedgh``), or the nearest-prototype
classifier of the global prototypes written as a linear head (``fedproto``, ``fedtgp``; :func:`prototype_head`);
``fd`` shares only per-class logits, so its 0-shot model is the plain init. Its k shots: the run's k-shot recipe;
where the head carries the shared knowledge, only the body trains (:class:`HtFLStart`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import numpy as np

from fusion.adapt import Constraint
from fusion.adapt.optimizer import Optimizer
from fusion.adapt.train_config import TrainConfig
from fusion.federated.base import FederatedAlgorithm, FederatedStart, LocalBatch, LossFn, State, Tensors
from fusion.federated.local import local_train
from fusion.lazy import torch
from fusion.models.activation import activate
from fusion.models.loss import RowLoss
from fusion.models.params import features, forward, init_params, loss_and_grad
from fusion.models.spec import CNNSpec, MLPSpec, Spec, body_spec, n_body, spec_from_state, spec_state

_BODY_INIT, _NOVEL_INIT = 0xB0D1, 0x40E1  # stream tags: a party's own model init; a novel party's body


def feature_spec(spec: Spec, dim: int) -> Spec:
    """``spec`` with a last hidden (feature) layer of ``dim`` units before its linear head (unchanged when it has
    one already)."""
    if spec.hidden and spec.hidden[-1] == dim:
        return spec
    if isinstance(spec, CNNSpec):
        return dataclasses.replace(spec, fc=(*spec.fc, dim), name=f"{spec.family}+f{dim}")
    return MLPSpec((*spec.widths[:-1], dim, spec.widths[-1]), spec.activation)


def feature_dim(cfg_dim: int, specs: tuple[Spec, ...]) -> int:
    """``[federated] feature_dim``, or when 0 the smallest last hidden width of the families ``specs``."""
    if cfg_dim:
        return int(cfg_dim)
    widths = [s.hidden[-1] for s in specs if s.hidden]
    if not widths:
        raise ValueError("the HtFL algorithms need a hidden layer to take features from; set federated.feature_dim")
    return min(widths)


def _split_head(head: torch.Tensor, spec: Spec) -> tuple[torch.Tensor, torch.Tensor]:
    """Head parameters (P, classes * D + classes) -> weight (P, classes, D), bias (P, classes)."""
    c, d = spec.weight_shapes[-1]
    return head[:, : c * d].reshape(-1, c, d), head[:, c * d :]


FeatureLoss = Callable[["torch.Tensor", "torch.Tensor", "torch.Tensor"], "torch.Tensor"]  # (feats, logits, y) -> (P,)


def loss_and_grad_features(
    flat: torch.Tensor, spec: Spec, x: torch.Tensor, y: torch.Tensor, loss_fn: FeatureLoss
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-model losses ``loss_fn(features (P, N, D), logits (P, N, classes), y)`` (P,) and d(their sum)/d ``flat``.

    The loss and the head go through autograd; the body's gradient is its vector-Jacobian product with the
    loss's gradient w.r.t. the feature layer's pre-activation, by the batched (for CNNs chunked)
    :func:`fusion.models.params.loss_and_grad` of the body: no graph over the whole network is kept.
    """
    nb, bspec = n_body(spec), body_spec(spec)
    with torch.no_grad():
        z = forward(flat[:, :nb], bspec, x)
    z.requires_grad_(True)
    head = flat[:, nb:].detach().requires_grad_(True)
    with torch.enable_grad():
        feats = activate(z, spec.activation)
        weight, bias = _split_head(head, spec)
        logits = torch.baddbmm(bias.unsqueeze(1), feats, weight.transpose(1, 2))
        losses = loss_fn(feats, logits, y)
        g_z, g_head = torch.autograd.grad(losses.sum(), (z, head))
    _, g_body = loss_and_grad(flat[:, :nb].detach(), bspec, x, None, RowLoss(_weighted_sum, g_z))
    return losses.detach(), torch.cat([g_body, g_head], dim=1)


def _weighted_sum(pred: torch.Tensor, _, weights: torch.Tensor) -> torch.Tensor:
    """Per model, the sum of its outputs weighted by ``weights`` (P, N, out): backpropagates ``weights``."""
    return (pred * weights).sum(dim=(1, 2))


def train_features(model: torch.Tensor, batch: LocalBatch, loss_of: Callable[[LossFn], FeatureLoss]) -> torch.Tensor:
    """Train a stack (n, n_params) by the run's local training (:func:`fusion.federated.local.local_train`: epochs
    of minibatches, or steps) on a loss of features and logits, ``loss_of(task loss of the parties trained)``."""

    def grad(w: torch.Tensor, parts: list, rows: torch.Tensor | None) -> torch.Tensor:
        (x, y), task = parts[0], batch.loss if rows is None else batch.loss_of(batch.descriptors[rows])
        return loss_and_grad_features(w, batch.spec, x, y, loss_of(task))[1]

    return local_train(model, batch, grad=grad)


def server_train(
    params: np.ndarray, loss_fn: Callable[[torch.Tensor], torch.Tensor], steps: int, lr: float
) -> np.ndarray:
    """The server's own training (a global head, a prototype generator): ``steps`` full-batch Adam steps at ``lr`` on
    ``loss_fn(params (n_params,)) -> scalar``, deterministic; returns float32 (n_params,)."""
    w = torch.tensor(np.asarray(params, np.float32))
    opt = Optimizer(TrainConfig(lr=lr, decay=False), w, steps, fused=False)
    for _ in range(steps):
        leaf = w.detach().requires_grad_(True)
        with torch.enable_grad():
            (grad,) = torch.autograd.grad(loss_fn(leaf), leaf)
        opt.step(grad)
    return w.numpy().astype(np.float32)


def head_init(dim: int, n_classes: int, seed: int, tag: int) -> np.ndarray:
    """``torch.nn.Linear(dim, n_classes)``'s init as a flat head (n_classes * dim + n_classes,), from (seed, tag)."""
    gen = torch.Generator().manual_seed(int(np.random.default_rng([seed, tag]).integers(2**62)))
    return init_params(MLPSpec((dim, n_classes)), gen).numpy()


def real_labels(y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Labels ``y`` (P, N) with padding -1 -> (labels clamped at 0 (P, N) long, real (P, N) float)."""
    real = (y >= 0).to(torch.float32)
    return y.clamp(min=0).long(), real


def class_means(values: torch.Tensor, y: torch.Tensor, n_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-party class means of ``values`` (P, N, D) over the real rows of ``y`` (P, N): (P, classes, D) (0 for a
    class the party does not hold) and the class counts (P, classes)."""
    labels, real = real_labels(y)
    onehot = torch.nn.functional.one_hot(labels, n_classes).to(values.dtype) * real.unsqueeze(-1)  # (P, N, C)
    counts = onehot.sum(1)
    sums = torch.bmm(onehot.transpose(1, 2), values)
    return sums / counts.clamp(min=1).unsqueeze(-1), counts


def class_weighted_mean(means: np.ndarray, counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Server side: per class, the mean of the parties' class means weighted by their class counts.

    ``means`` (n, classes, D), ``counts`` (n, classes) -> (classes, D) float32 (0 where nobody holds the class) and
    the class totals (classes,) float64 — the class means of the pooled data, in float64 in party-id order."""
    counts = np.asarray(counts, np.float64)
    total = counts.sum(0)
    pooled = np.einsum("nc,ncd->cd", counts, np.asarray(means, np.float64)) / np.maximum(total, 1e-12)[:, None]
    return pooled.astype(np.float32), total


def pull_to(target: torch.Tensor, have: torch.Tensor, values: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Mean squared distance (P,) of each real row's ``values`` (P, N, D) to ``target[y]`` (classes, D), over
    the rows whose class the server has (``have`` (classes,) bool); 0 for a party with none of them."""
    labels, real = real_labels(y)
    use = real * have.to(real.dtype)[labels]
    sq = ((values - target[labels]) ** 2).mean(-1)
    return (sq * use).sum(1) / use.sum(1).clamp(min=1)


def prototype_head(protos: np.ndarray, have: np.ndarray) -> np.ndarray:
    """Nearest-prototype classification as a linear head: argmin_c |f - p_c|² = argmax_c (2 p_c·f - |p_c|²), so
    weight 2 p_c and bias -|p_c|² ((classes, D) -> flat (classes * D + classes,)); a class without a prototype
    gets bias -1e4 (never chosen while another class has one)."""
    p = np.asarray(protos, np.float64)
    bias = np.where(np.asarray(have, bool), -(p**2).sum(1), -1e4)
    return np.concatenate([(2 * p).ravel(), bias]).astype(np.float32)


def party_inits(spec: Spec, seed: int, ids: np.ndarray) -> torch.Tensor:
    """Each party's own model init (n, n_params), a function of (seed, party id)."""
    gens = [
        torch.Generator().manual_seed(int(np.random.default_rng([seed, int(i), _BODY_INIT]).integers(2**62)))
        for i in ids
    ]
    return torch.stack([init_params(spec, g) for g in gens])


def novel_body(spec: Spec, seed: int) -> np.ndarray:
    """The plain init (n_params,) of family model ``spec`` that novel parties start from (one per run seed)."""
    gen = torch.Generator().manual_seed(int(np.random.default_rng([seed, _NOVEL_INIT]).integers(2**62)))
    return init_params(spec, gen).numpy()


class HtFLStart(FederatedStart):
    """A novel party's model: ``params`` (n_params,) of ``spec`` for every novel party (a plain body and the
    shared head); its shots train the body only (``body_only``) or everything, by the run's k-shot recipe.
    ``download`` is the bytes a novel party receives from the server (the shared part)."""

    kind = "htfl_start"

    def __init__(self, params: np.ndarray, spec: Spec, body_only: bool, download: int) -> None:
        self.params, self.spec = np.asarray(params, np.float32), spec
        self.body_only, self.download = bool(body_only), int(download)

    def predict(self, descriptors: np.ndarray) -> np.ndarray:
        return np.tile(self.params, (len(descriptors), 1))

    def constraint_for(self, start: torch.Tensor) -> Constraint:
        if not self.body_only:
            return Constraint()
        mask = torch.zeros(start.shape[-1], dtype=torch.bool, device=start.device)
        mask[: n_body(self.spec)] = True
        return Constraint(mask=mask)

    def export(self) -> dict:
        return {"params": torch.tensor(self.params), **spec_state(self.spec), "body_only": self.body_only,
                "download": self.download}  # fmt: skip

    @classmethod
    def restore(cls, state: dict) -> HtFLStart:
        return cls(state["params"].numpy(), spec_from_state(state), bool(state["body_only"]), int(state["download"]))


class HtFLAlgorithm(FederatedAlgorithm):
    """The shared frame of the HtFL algorithms: personal whole models on :func:`feature_spec`, one local training
    per round with the algorithm's loss (:meth:`local_loss`) from the model :meth:`prepare` makes of the kept one,
    then :meth:`upload`. Subclasses write ``prepare`` (default: as kept), ``local_loss`` (default: the task loss),
    ``upload``, ``aggregate``, ``broadcast`` and ``novel_head``."""

    personal = True
    mixed_families = True
    classification = True
    body_only_shots = True  # a novel party's shots train the body under the shared head

    def model_spec(self, spec: Spec) -> Spec:
        if not self.cfg.feature_dim:
            raise ValueError(f"{self.name}: federated.feature_dim is unresolved (the engine sets it from the families)")
        return feature_spec(spec, self.cfg.feature_dim)

    def classes(self, spec: Spec) -> int:
        return spec.fan_out

    def init_personal(self, down: Tensors, batch: LocalBatch) -> Tensors:
        return {"model": party_inits(batch.spec, batch.seed, batch.ids).to(batch.x.device)}

    def prepare(self, model: torch.Tensor, down: Tensors, batch: LocalBatch) -> torch.Tensor:
        return model

    def local_loss(self, down: Tensors, task: LossFn) -> FeatureLoss:
        """The local objective from the broadcast ``down`` and the parties' task loss ``task``."""
        return lambda feats, logits, y: task(logits, y)

    def upload(self, model: torch.Tensor, batch: LocalBatch) -> Tensors:
        """The uploads (n, ...) of the trained models: default their class prototypes and class counts."""
        with torch.no_grad():
            protos, counts = class_means(features(model, batch.spec, batch.x), batch.y, self.classes(batch.spec))
        return {"protos": protos, "counts": counts}

    def local_update(self, down: Tensors, personal: Tensors | None, batch: LocalBatch) -> tuple[Tensors, Tensors]:
        model = self.prepare(personal["model"], down, batch)
        model = train_features(model, batch, lambda task: self.local_loss(down, task))
        return self.upload(model, batch), {"model": model}

    def participant_models(self, down: Tensors, personal: Tensors | None, batch: LocalBatch) -> torch.Tensor:
        return self.prepare(personal["model"], down, batch)  # its kept model, as the round starts from it

    def novel_head(self, server: dict, spec: Spec) -> np.ndarray | None:
        """The head (classes * D + classes,) a novel party receives, or None (it keeps its init's)."""
        return None

    def novel(self, server: dict, spec: Spec) -> HtFLStart:
        """``spec``: the novel party's family (its model is :meth:`model_spec` of it)."""
        model = self.model_spec(spec)
        params = novel_body(model, int(server["seed"]))
        head = self.novel_head(server, model)
        if head is not None:
            params[n_body(model) :] = head
        download = 0 if head is None else 4 * head.size
        return HtFLStart(params, model, self.body_only_shots and head is not None, download)


class SharedHead(HtFLAlgorithm):
    """A server that holds one head over the common feature layer (drawn with ``head_tag`` from the run seed),
    broadcast and put on every sampled party's body (LG-FedAvg, FedGH)."""

    head_tag = 0

    def init_server(self, spec: Spec, init: np.ndarray, descriptors: np.ndarray, seed: int) -> State:
        return {"head": head_init(self.cfg.feature_dim, spec.fan_out, seed, self.head_tag), "seed": np.array(seed)}

    def broadcast(self, server: State) -> State:
        return {"head": server["head"]}

    def prepare(self, model, down: Tensors, batch: LocalBatch):
        model = model.clone()
        model[:, n_body(batch.spec) :] = down["head"]
        return model


class SharedPrototypes(HtFLAlgorithm):
    """A server that broadcasts class prototypes; each party's features are pulled toward its classes' ones with
    weight ``lam`` (FedProto, FedTGP)."""

    def broadcast(self, server: State) -> State:
        return {"protos": server["protos"], "have": server["have"]}

    def local_loss(self, down: Tensors, task: LossFn):
        lam, have = self.opts.lam, down["have"] > 0
        return lambda feats, logits, y: task(logits, y) + lam * pull_to(down["protos"], have, feats, y)
