"""The federated server: one actor that owns the server state of the rounds under way and publishes each broadcast.

Thin: the round's arithmetic is :func:`fusion.federated.rounds.server_round`, the same function the in-process
runner calls. The driver (:mod:`cluster.rounds`) asks for ``broadcast`` once per round (its result is one object in
the store, which every sampled shard reads) and hands the shards' result refs to ``aggregate``, so uploads go from
the shards to the server without passing through the driver.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import numpy as np
import ray

from fusion.federated.base import FederatedAlgorithm, FederatedConfig, State
from fusion.federated.rounds import Costs, close_round, keeps_state
from fusion.models.spec import MLPSpec
from fusion.system import RoundClock


@dataclass(frozen=True)
class RoundsJob:
    """One training run of rounds: its key (``training_key()``), the algorithm class, the shared ``[federated]``
    settings, the algorithm's own and the simulated clock of its rounds. Small: it travels with every shard call."""

    key: str
    algorithm: type[FederatedAlgorithm]
    cfg: FederatedConfig
    settings: Any = None
    clock: RoundClock = RoundClock()

    def build(self) -> FederatedAlgorithm:
        return self.algorithm(self.cfg, self.settings)

    @property
    def keeps_state(self) -> bool:
        """Whether shards keep state of this training's parties between rounds (personal or optimizer states)."""
        return keeps_state(self.algorithm, self.cfg)


class FederatedServer:
    """Server states by training key. After a restart it holds none: every call then answers "lost" (None or
    ``{"lost": ["server"]}``) and the driver rolls the run back to its last save."""

    def __init__(self, run: str = "") -> None:
        self.run = run
        self.jobs: dict[str, dict] = {}

    def __repr__(self) -> str:
        return f"FederatedServer({', '.join(self.jobs) or 'idle'})"

    def start(
        self,
        job: RoundsJob,
        spec: MLPSpec,
        init: np.ndarray,
        descriptors: np.ndarray,
        seed: int,
        saved: dict | None = None,
    ) -> int:
        """Begin ``job`` from the common ``init`` (n_params,) and the training descriptors (n, d), or from a saved
        ``{"round", "server", "costs"}``; returns the next round."""
        algo = job.build()
        if saved:
            server, costs, round_ = dict(saved["server"]), Costs(**saved["costs"]), int(saved["round"])
        else:
            server, costs, round_ = algo.init_server(spec, init, descriptors, seed), Costs(), 0
        self.jobs[job.key] = {"algo": algo, "server": server, "costs": costs, "next": round_, "down": None}
        return round_

    def broadcast(self, key: str, round_: int) -> State | None:
        """What the sampled parties of ``round_`` download (None when this process lost the state)."""
        job = self.jobs.get(key)
        if job is None or job["next"] != round_:
            return None
        job["down"] = job["algo"].broadcast(job["server"])
        return job["down"]

    def aggregate(self, key: str, round_: int, needed: int, clock: RoundClock, *parts: dict) -> dict:
        """The server's step on the shards' ``parts`` (resolved refs, in any order: aggregated in party-id order) of
        a round that needs ``needed`` uploads (:func:`fusion.federated.rounds.close_round` on ``clock``).

        Returns ``{"round", "costs", "upload_bytes", "aggregated", "duration"}`` (this round's) or ``{"lost": [...]}``.
        """
        job = self.jobs.get(key)
        lost = [p["lost"] for p in parts if "lost" in p]
        if job is None or job["next"] != round_ or job["down"] is None:
            lost.append("server")
        if lost:
            return {"lost": lost}
        algo, costs = job["algo"], job["costs"]
        job["server"], outcome = close_round(algo, job["server"], list(parts), clock, needed, costs.sim_time)
        costs.add(algo.download_bytes(job["down"]), outcome)
        job["next"], job["down"] = round_ + 1, None
        return {
            "round": round_,
            "costs": dataclasses.asdict(costs),
            **{k: outcome[k] for k in ("upload_bytes", "aggregated", "duration")},
        }

    def state(self, key: str) -> dict | None:
        """``{"round": next round, "server": State, "costs": {...}}`` to save, or None after a restart."""
        job = self.jobs.get(key)
        if job is None:
            return None
        return {"round": job["next"], "server": job["server"], "costs": dataclasses.asdict(job["costs"])}

    def end(self, key: str) -> None:
        self.jobs.pop(key, None)


FederatedServerActor = ray.remote(num_cpus=0, max_restarts=-1, max_task_retries=-1)(FederatedServer)
