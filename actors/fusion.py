"""The fusion actor: gathers the shards' parameters, screens them, fits every method's warm starter.

Thin: screening is :func:`fusion.screen.screen`, each fit a strategy's (:mod:`fusion.strategies`); the actor
gathers the models in party-id order, builds the strategies' context from the run's layout and calls them.
"""

from __future__ import annotations

import time

import numpy as np
import ray
import torch

from actors.assign import parallel_solvers
from fusion.layout import ModelLayout
from fusion.matching import solve_many_serial
from fusion.matching.pfnm import solve_rect_serial
from fusion.methods import strategy_for
from fusion.models.params import init_params
from fusion.screening.screen import screen
from fusion.strategies import FitContext, FusionConfig
from scenarios import Scenario, training_data


@ray.remote(num_cpus=0, max_restarts=-1, max_task_retries=-1)
class FusionActor:
    """Holds the pretrained models of all training parties; ``fit`` returns the fitted warm starters."""

    def __init__(
        self,
        layout: ModelLayout,
        cfg: FusionConfig,
        seed: int,
        n_chunks: int,
        run: str = "",
        scenario: Scenario | None = None,
        probe: np.ndarray | None = None,
        outputs: str | None = None,
    ) -> None:
        """``layout``: the run's population layout (the models arrive as rows of its stack); ``scenario``
        (optional) supplies probe inputs and, for MAML, the training parties' data; ``probe`` (N, fan_in), when
        given, replaces the scenario's probe inputs; ``outputs`` (``"values"`` or ``"logits"``,
        :class:`fusion.strategies.FitContext`), when given, replaces the scenario's."""
        self.layout, self.cfg, self.seed, self.n_chunks, self.run = layout, cfg, seed, n_chunks, run
        self.scenario, self.probe = scenario, probe
        self.outputs = outputs or (scenario.outputs if scenario is not None else "values")
        self.summary: dict | None = None
        self.error: str | None = None

    def __repr__(self) -> str:
        return "FusionActor(fusion)"

    def fit(self, methods: list[str], *shards: dict) -> dict:
        """``shards``: the shards' pretrain outputs (resolved refs). Returns the fitted warm starters (``fitted``),
        the ``party_id`` (k,) and ``descriptor`` (k, d) of the models fused, and the ``quarantined`` records
        (:class:`fusion.screen.Quarantined`) of the models left out of every fit (:func:`fusion.screen.screen`).

        The actor holds no CPU (it idles through pretraining) and fits on one thread: its ops are small
        (matrices of the inducing points, assignments of one layer's units), and on a node whose cores are
        busy with other work a second OpenMP thread waits at every barrier for a core (200 parties: 17 s on one
        thread, over 15 minutes on two, on the 2-core machine under load). One thread also gives the same
        float rounding on every node.
        """
        torch.set_num_threads(1)
        ids = np.concatenate([s["party_id"] for s in shards])
        order = np.argsort(ids, kind="stable")  # party-id order: independent of the sharding
        ids, models = ids[order], np.concatenate([s["params"] for s in shards])[order]
        descriptors = np.concatenate([s["descriptor"] for s in shards])[order]
        probe = self.probe if self.probe is not None or self.scenario is None else self.scenario.probe_inputs()
        screened = screen(ids, models, descriptors, self.layout, self.seed, probe, self.outputs, self.cfg.outliers)
        ids, models, descriptors = ids[screened.kept], models[screened.kept], descriptors[screened.kept]
        ctx = self._context(ids, probe, parallel_solvers(self.n_chunks, run=self.run))
        fitted, seconds = {}, {}
        for method in methods:
            strategy = strategy_for(method, self.cfg)
            if strategy is None:
                continue
            start = time.perf_counter()
            try:
                fitted[method] = strategy.fit_layout(models, descriptors, ctx)
            except Exception as exc:
                self.error = f"{method}: {type(exc).__name__}: {exc}"
                raise
            seconds[method] = time.perf_counter() - start
        self.summary = {"seconds": seconds, "parties": len(ids), **{m: f.summary() for m, f in fitted.items()}}
        self.summary["quarantined"] = [q.party_id for q in screened.quarantined]
        return {"fitted": fitted, "party_id": ids, "descriptor": descriptors, "quarantined": screened.quarantined}

    def _context(self, ids: np.ndarray, probe: np.ndarray | None, solvers: tuple | None) -> FitContext:
        """The strategies' context for the models of training parties ``ids`` (in that order)."""
        solve_many, solve_rect = solvers or (solve_many_serial, solve_rect_serial)
        return FitContext(
            self.layout.spec,
            self.seed,
            solve_many,
            self.cfg,
            probe,
            tasks=(lambda: self._tasks(ids)) if self.scenario is not None else None,
            solve_rect=solve_rect,
            outputs=self.outputs,
            layout=self.layout,
            groups=tuple(self.layout.groups(self.seed, ids)),
        )

    def _tasks(self, ids: np.ndarray) -> tuple:
        """The training parties' data, for baselines that need it (MAML): a simulation privilege."""
        sc = self.scenario
        _, x, y = training_data(sc, self.seed, ids)

        def init(spec, gen):
            return sc.init_params(gen) if spec == sc.spec else init_params(spec, gen)

        return x, y, sc.loss, init, sc.real_rows(y)

    def report(self) -> dict:
        """Timings and small facts of the last fit."""
        if self.summary is None:
            raise RuntimeError(f"the fusion fit failed ({self.error})" if self.error else "no fit has completed")
        return self.summary
