"""``pfedhn`` (Shamsian, Navon, Fetaya, Chechik, ICML 2021), with PeFLL's descriptor encoder in place of per-party
embeddings (Scott, Zakerinia, Lampert, ICLR 2024): a server hypernetwork maps a party's descriptor to its model.

φ, one flat float32 vector, holds an encoder e and a hypernetwork h::

    z = (τ − μ) / σ                                   descriptor standardized by the training parties' statistics
    e = E2 relu(E1 z)                                 (embed,)  the learned encoder
    a = relu(H2 relu(H1 e))                           (hidden,)
    θ = s ⊙ (O a + o)                                 (n_params,) one Linear(hidden, n_params), scaled by s

s is 1/√fan_in of the layer each parameter belongs to (the scale of ``torch.nn.Linear``'s init), so every output
unit of the last Linear works at the same scale whatever the layer; the output bias o starts at init / s, so at
round 0 every party's θ is the run's common init plus a small descriptor-dependent offset s ⊙ O a.

A round: the server sends each sampled party its θ_i = h(e(τ_i)); the party trains it by the run's local training
(:mod:`fusion.federated.local`) and uploads Δθ_i = θ_i − θ_i^after with its descriptor τ_i (d numbers, so that the
server needs no map from party ids to descriptors). In this engine the shard hosting the party computes θ_i from
the broadcast φ on the server's behalf (one object in the store per round instead of one per party); the costs
count what pFedHN sends, θ_i per sampled party (:meth:`PFedHN.download_bytes`), not φ. The server
takes one Adam step (lr ``server_lr``) on φ along Σ_i c_i J_i^T Δθ_i, c_i = n_i / Σ n, J_i = ∂θ_i/∂φ — the
vector-Jacobian product of pFedHN's update, averaged over the round's parties instead of one step per party.

``server_lr``: Adam moves every entry of φ by about the step size each round whatever its gradient's size, and the
output layer alone has hidden · n_params entries, so the step must be small (10⁻³ by default; a scenario may set
its own, :meth:`scenarios.Scenario.federated_defaults`).

A novel party needs no training to get a model: θ = h(e(τ)) from its descriptor alone (:class:`HyperStart`);
with k shots it fine-tunes that by the run's recipe.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fusion.federated.base import FederatedAlgorithm, FederatedStart, LocalBatch, State, Tensors, register
from fusion.federated.local import local_train
from fusion.lazy import lazy, torch
from fusion.models.spec import MLPSpec

F = lazy("torch.nn.functional")


@dataclass(frozen=True)
class PFedHNSettings:
    """``[federated.pfedhn]`` keys."""

    embed: int = 8  # encoder output e
    hidden: int = 100  # width of the encoder's and the hypernetwork's hidden layers
    server_lr: float = 0.001  # Adam step size of the server on φ (see the module docstring)

    def __post_init__(self) -> None:
        for key in ("embed", "hidden"):
            if getattr(self, key) < 1:
                raise ValueError(f"federated.pfedhn.{key} must be >= 1, got {getattr(self, key)}")
        if not self.server_lr > 0:
            raise ValueError(f"federated.pfedhn.server_lr must be > 0, got {self.server_lr}")


def _shapes(d: int, embed: int, hidden: int, n_params: int) -> list[tuple[int, int]]:
    """(fan_out, fan_in) of φ's Linear layers in order: encoder E1, E2, hypernetwork H1, H2, output O."""
    return [(hidden, d), (embed, hidden), (hidden, embed), (hidden, hidden), (n_params, hidden)]


def encoder_size(d: int, hidden: int, embed: int) -> int:
    """Entries of φ that belong to the encoder (its first ``encoder_size`` entries)."""
    return hidden * d + hidden + embed * hidden + embed


def generated_size(n_phi: int, d: int, embed: int, hidden: int) -> int:
    """n_params of the models a φ of ``n_phi`` entries generates (descriptors of ``d`` entries): the inverse of the
    layout of :func:`_shapes`."""
    fixed = encoder_size(d, hidden, embed) + hidden * embed + hidden + hidden * hidden + hidden
    n_params, rest = divmod(n_phi - fixed, hidden + 1)
    if rest or n_params < 1:
        raise ValueError(
            f"φ has {n_phi} entries, not a pfedhn layout for descriptors of {d} (embed {embed}, hidden {hidden})"
        )
    return n_params


def _layers(phi: torch.Tensor, shapes: list[tuple[int, int]]) -> list[tuple[torch.Tensor, torch.Tensor]]:
    out, pos = [], 0
    for fan_out, fan_in in shapes:
        weight = phi[pos : pos + fan_out * fan_in].view(fan_out, fan_in)
        pos += fan_out * fan_in
        out.append((weight, phi[pos : pos + fan_out]))
        pos += fan_out
    if pos != phi.numel():
        raise ValueError(f"φ has {phi.numel()} entries, its layout {pos}")
    return out


def output_scale(spec: MLPSpec) -> torch.Tensor:
    """s (n_params,): 1/√fan_in of each parameter's layer."""
    return torch.cat([torch.full((fo * fi + fo,), fi**-0.5) for fi, fo in zip(spec.widths[:-1], spec.widths[1:])])


def generate(phi: torch.Tensor, z: torch.Tensor, embed: int, hidden: int, scale: torch.Tensor) -> torch.Tensor:
    """θ (m, n_params) from standardized descriptors ``z`` (m, d); differentiable in ``phi``."""
    (e1, c1), (e2, c2), (h1, b1), (h2, b2), (o, bo) = _layers(phi, _shapes(z.shape[1], embed, hidden, len(scale)))
    e = F.linear(torch.relu(F.linear(z, e1, c1)), e2, c2)
    a = torch.relu(F.linear(torch.relu(F.linear(e, h1, b1)), h2, b2))
    return F.linear(a, o, bo) * scale


def init_phi(spec: MLPSpec, init: np.ndarray, d: int, embed: int, hidden: int, seed: int) -> np.ndarray:
    """φ with ``torch.nn.Linear``'s init, except the output bias: init / s (θ at round 0 ≈ init)."""
    g = torch.Generator().manual_seed(int(seed))
    parts = []
    for fan_out, fan_in in _shapes(d, embed, hidden, spec.n_params):
        parts.append((torch.rand(fan_out * fan_in + fan_out, generator=g) * 2 - 1) * fan_in**-0.5)
    parts[-1][-spec.n_params :] = torch.as_tensor(init, dtype=torch.float32) / output_scale(spec)
    return torch.cat(parts).numpy()


def _own_copy(a) -> torch.Tensor:
    """A float32 tensor of our own (arrays from the object store are read-only)."""
    if isinstance(a, torch.Tensor):
        return a.detach().to(torch.float32).clone()
    return torch.from_numpy(np.array(a, np.float32))


class HyperStart(FederatedStart):
    """θ = h(e((τ − μ)/σ); φ) for any descriptor τ; fine-tuned freely by the run's k-shot recipe."""

    kind = "hyper_start"

    def __init__(self, phi, mu, sd, scale, embed: int, hidden: int) -> None:
        self.phi, self.mu, self.sd, self.scale = map(_own_copy, (phi, mu, sd, scale))
        self.embed, self.hidden = int(embed), int(hidden)

    def predict(self, descriptors: np.ndarray) -> np.ndarray:
        z = (torch.as_tensor(np.asarray(descriptors, np.float32)) - self.mu) / self.sd
        with torch.no_grad():
            return generate(self.phi, z, self.embed, self.hidden, self.scale).numpy()

    def export(self) -> dict:
        tensors = {"phi": self.phi, "mu": self.mu, "sd": self.sd, "scale": self.scale}
        return {**tensors, "embed": self.embed, "hidden": self.hidden}

    @classmethod
    def restore(cls, state: dict) -> HyperStart:
        return cls(state["phi"], state["mu"], state["sd"], state["scale"], state["embed"], state["hidden"])


@register
class PFedHN(FederatedAlgorithm):
    name = "pfedhn"
    settings = PFedHNSettings

    def init_server(self, spec: MLPSpec, init: np.ndarray, descriptors: np.ndarray, seed: int) -> State:
        desc = np.asarray(descriptors, np.float64)
        sd = desc.std(axis=0)
        phi = init_phi(spec, init, desc.shape[1], self.opts.embed, self.opts.hidden, seed)
        return {
            "phi": phi,
            "mu": desc.mean(axis=0).astype(np.float32),
            "sd": np.where(sd > 0, sd, 1.0).astype(np.float32),  # a constant descriptor entry stays as it is
            "scale": output_scale(spec).numpy(),
            "adam_m": np.zeros_like(phi),
            "adam_v": np.zeros_like(phi),
            "adam_t": np.zeros(1, np.float32),
        }

    def broadcast(self, server: State) -> State:
        return {k: server[k] for k in ("phi", "mu", "sd")}

    def download_bytes(self, down: State) -> int:
        """θ_i (float32, n_params) per sampled party: what pFedHN's server sends (φ stays on the server)."""
        return 4 * generated_size(len(down["phi"]), len(down["mu"]), self.opts.embed, self.opts.hidden)

    def local_update(self, down: Tensors, personal: Tensors | None, batch: LocalBatch) -> tuple[Tensors, None]:
        z = (batch.descriptors.to(down["phi"].dtype) - down["mu"]) / down["sd"]
        scale = output_scale(batch.spec).to(batch.x.device)
        with torch.no_grad():  # one party at a time: a party's θ must not depend on which others share its shard
            theta = torch.cat([generate(down["phi"], row[None], self.opts.embed, self.opts.hidden, scale) for row in z])
        after = local_train(theta, batch)
        return {"delta": theta - after, "descriptor": batch.descriptors.to(theta.dtype)}, None

    def participant_models(self, down: Tensors, personal: Tensors | None, batch: LocalBatch) -> torch.Tensor:
        z = (batch.descriptors.to(down["phi"].dtype) - down["mu"]) / down["sd"]
        scale = output_scale(batch.spec).to(batch.x.device)
        with torch.no_grad():  # θ_i, the model the server generates for the party
            return torch.cat([generate(down["phi"], row[None], self.opts.embed, self.opts.hidden, scale) for row in z])

    def aggregate(self, server: State, uploads: State, weights: np.ndarray, ids: np.ndarray) -> State:
        phi = torch.tensor(server["phi"], requires_grad=True)
        z = (torch.as_tensor(uploads["descriptor"]) - torch.as_tensor(server["mu"])) / torch.as_tensor(server["sd"])
        c = torch.as_tensor(np.asarray(weights, np.float64) / np.sum(weights), dtype=torch.float32)
        with torch.enable_grad():
            theta = generate(phi, z, self.opts.embed, self.opts.hidden, torch.as_tensor(server["scale"]))
            (grad,) = torch.autograd.grad(theta, phi, grad_outputs=c[:, None] * torch.as_tensor(uploads["delta"]))
        return {**server, **_adam(server, grad.numpy(), self.opts.server_lr)}

    def novel(self, server: State, spec: MLPSpec) -> HyperStart:
        return HyperStart(server["phi"], server["mu"], server["sd"], server["scale"], self.opts.embed, self.opts.hidden)


def _adam(server: State, grad: np.ndarray, lr: float, beta1: float = 0.9, beta2: float = 0.999) -> State:
    """One Adam step of φ with its moments kept in the server state (so a resumed run continues exactly)."""
    t = float(server["adam_t"][0]) + 1
    m = beta1 * server["adam_m"] + (1 - beta1) * grad
    v = beta2 * server["adam_v"] + (1 - beta2) * grad * grad
    step = lr / (1 - beta1**t) * m / (np.sqrt(v / (1 - beta2**t)) + 1e-8)
    f32 = lambda a: np.asarray(a, np.float32)  # noqa: E731
    return {"phi": f32(server["phi"] - step), "adam_m": f32(m), "adam_v": f32(v), "adam_t": f32([t])}
