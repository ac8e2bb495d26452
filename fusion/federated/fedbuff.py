"""``fedbuff`` (Nguyen et al. 2022, "Federated Learning with Buffered Asynchronous Aggregation"): the server steps
after every ``buffer`` (K) updates that arrive, each weighted down by its staleness, on the simulated clock.

A sampled party downloads the global model w and its version v, trains it by the run's local training and uploads
its change Δ = w_local − w and v. Uploads arrive at their simulated times (:func:`fusion.system.party_times`, with
no deadline: an asynchronous server waits for nobody). In the order they arrive, every K of them make one server
step

    w ← w + server_lr · (1/K) Σ_k Δ_k / sqrt(1 + s_k),    s_k = (server version now) − v_k,

and the version goes up by one. The round (one wave of sampled parties, all starting from the model of the round's
start) ends at the time of its last server step; uploads left over (fewer than K) stay in the buffer, with their
arrival times, and join the next round's in arrival order. So a slow party's update lands rounds later, staler and
weighed less, while the fast ones keep the server moving.

A novel party receives the global model and fine-tunes it on its shots (as ``fedavg_ft``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fusion.federated.base import FederatedAlgorithm, LocalBatch, State, Tensors, register
from fusion.federated.fedavg import GlobalModel
from fusion.federated.local import local_train
from fusion.models.spec import MLPSpec


@dataclass(frozen=True)
class FedBuffSettings:
    """``[federated.fedbuff]``: ``buffer`` K, the uploads per server step; ``server_lr`` the server's step size."""

    buffer: int = 5
    server_lr: float = 1.0

    def __post_init__(self) -> None:
        if self.buffer < 1:
            raise ValueError(f"federated.fedbuff.buffer must be >= 1, got {self.buffer}")
        if not self.server_lr > 0:
            raise ValueError(f"federated.fedbuff.server_lr must be > 0, got {self.server_lr}")


@register
class FedBuff(FederatedAlgorithm):
    name = "fedbuff"
    settings = FedBuffSettings
    asynchronous = True

    def init_server(self, spec: MLPSpec, init: np.ndarray, descriptors: np.ndarray, seed: int) -> State:
        w = np.asarray(init, np.float32).copy()
        return {
            "w": w,
            "version": np.zeros(1, np.float64),
            "pending.d": np.zeros((0, len(w)), np.float32),  # buffered changes (m, P), in arrival order
            "pending.t": np.zeros(0, np.float64),  # their arrival times on the simulated clock (m,)
            "pending.v": np.zeros(0, np.float64),  # the versions they started from (m,)
        }

    def broadcast(self, server: State) -> State:
        return {"w": server["w"], "version": server["version"]}

    def download_bytes(self, down: State) -> int:
        return int(np.asarray(down["w"]).nbytes)

    def local_update(self, down: Tensors, personal: Tensors | None, batch: LocalBatch) -> tuple[Tensors, None]:
        start = down["w"].expand(len(batch), -1)
        version = down["version"].reshape(1, 1).expand(len(batch), 1)
        return {"d": local_train(start, batch) - start, "v": version}, None

    def aggregate(self, server: State, uploads: State, weights: np.ndarray, ids: np.ndarray) -> State:
        raise NotImplementedError("fedbuff is asynchronous: its server steps in aggregate_async")

    def aggregate_async(
        self, server: State, uploads: State, weights: np.ndarray, ids: np.ndarray, arrival: np.ndarray, t: float
    ) -> tuple[State, float, int]:
        k, lr = self.opts.buffer, self.opts.server_lr
        new_d = uploads.get("d", np.zeros((0, len(server["w"])), np.float32))
        new_v = uploads["v"][:, 0].astype(np.float64) if "v" in uploads else np.zeros(0)
        d = np.concatenate([server["pending.d"], new_d])
        when = np.concatenate([server["pending.t"], np.asarray(arrival, np.float64)])
        started = np.concatenate([server["pending.v"], new_v])
        order = np.argsort(when, kind="stable")  # ties: the buffered first, then party-id order
        w, version = server["w"].astype(np.float64), float(server["version"][0])
        end, used = t, 0
        while len(order) - used >= k:
            step = order[used : used + k]
            scale = 1.0 / np.sqrt(1.0 + (version - started[step]))
            w = w + lr * (scale[:, None] * d[step].astype(np.float64)).mean(axis=0)
            version += 1.0
            end, used = float(when[step[-1]]), used + k
        if used == 0 and len(new_d):
            end = float(np.max(arrival))  # no step this round: the next starts when this round's uploads are in
        rest = order[used:]
        return (
            {
                "w": w.astype(np.float32),
                "version": np.array([version]),
                "pending.d": d[rest],
                "pending.t": when[rest],
                "pending.v": started[rest],
            },
            end,
            used,
        )

    def novel(self, server: State, spec: MLPSpec) -> GlobalModel:
        return GlobalModel(server["w"], finetune=True)
