"""The fusion actor: gathers the shards' parameters, fits every method's warm starter."""

from __future__ import annotations

import time

import numpy as np
import ray
import torch

from actors.assign import parallel_solvers
from fusion.matching.alignment import solve_many_serial
from fusion.matching.pfnm import solve_rect_serial
from fusion.methods import strategy_for
from fusion.models.params import init_params
from fusion.models.probe import probe_outputs
from fusion.models.spec import Spec
from fusion.screening.outliers import function_outliers, outliers_of
from fusion.screening.quarantine import finite_models
from fusion.strategies import FitContext, FusionConfig
from fusion.strategies.by_family import fit_strategy
from scenarios import Scenario, party_widths, training_data


@ray.remote(num_cpus=0, max_restarts=-1, max_task_retries=-1)
class FusionActor:
    """Holds the pretrained models of all training parties; ``fit`` returns the fitted warm starters."""

    def __init__(
        self,
        spec: Spec,
        cfg: FusionConfig,
        seed: int,
        n_chunks: int,
        run: str = "",
        scenario: Scenario | None = None,
        widths: tuple[int, ...] = (),
        probe: np.ndarray | None = None,
        outputs: str | None = None,
        target: Spec | None = None,
    ) -> None:
        """``scenario`` (optional) supplies probe inputs and, for MAML, the training parties' data;
        ``probe`` (N, fan_in), when given, replaces the scenario's probe inputs; ``outputs`` (``"values"`` or
        ``"logits"``, :class:`fusion.strategies.FitContext`), when given, replaces the scenario's; ``target``: the
        warm starts' architecture when not ``spec`` (:attr:`fusion.strategies.FitContext.target`).

        ``widths``: a run that mixes hidden widths; each party's is drawn from (seed, party id), ``spec`` is the
        widest and the models arrive embedded in it.
        """
        self.spec, self.cfg, self.seed, self.n_chunks, self.run = spec, cfg, seed, n_chunks, run
        self.widths = tuple(widths)
        self.scenario, self.probe, self.target = scenario, probe, target
        self.outputs = outputs or (scenario.outputs if scenario is not None else "values")
        self.summary: dict | None = None
        self.error: str | None = None

    def __repr__(self) -> str:
        return "FusionActor(fusion)"

    def fit(self, methods: list[str], *shards: dict) -> dict:
        """``shards``: the shards' pretrain outputs (resolved refs). Returns fitted models and timings.

        The actor holds no CPU (it idles through pretraining) and fits on one thread: its ops are small
        (matrices of the inducing points, assignments of one layer's units), and on a node whose cores are
        busy with other work a second OpenMP thread waits at every barrier for a core (200 parties: 17 s on one
        thread, over 15 minutes on two, on the 2-core machine under load). One thread also gives the same
        float rounding on every node.

        Models with non-finite parameters are quarantined: left out of every strategy's fit.
        """
        torch.set_num_threads(1)
        ids = np.concatenate([s["party_id"] for s in shards])
        order = np.argsort(ids, kind="stable")  # party-id order: independent of the sharding
        ids, models = ids[order], np.concatenate([s["params"] for s in shards])[order]
        descriptors = np.concatenate([s["descriptor"] for s in shards])[order]
        ok = finite_models(models)
        if ok.sum() < 2:
            raise ValueError(f"only {int(ok.sum())} of {len(ids)} pretrained models are finite; fusion needs 2")
        reasons = {int(i): "non-finite parameters" for i in ids[~ok]}
        ids, models, descriptors = ids[ok], models[ok], descriptors[ok]
        probe = self.probe if self.probe is not None or self.scenario is None else self.scenario.probe_inputs()
        if probe is not None and self.cfg.outliers.enabled:
            # (models of mixed widths travel embedded at the widest spec: the same functions)
            if self._mixed:  # each model through its own family's forward pass
                funcs = probe_outputs(models, self._context(ids, probe, None).families, probe).double()
                funcs = (torch.softmax(funcs, -1) if self.outputs == "logits" else funcs).numpy()
                bad, score = outliers_of(funcs, descriptors, self.outputs, self.cfg.outliers)
            else:
                bad, score = function_outliers(models, self.spec, probe, descriptors, self.outputs, self.cfg.outliers)
            if len(ids) - bad.sum() < 2:
                bad[:] = False  # never leave fewer than two models: the detector has nothing to compare with
            reasons.update(
                {
                    int(i): f"function-space outlier (discrepancy {s:.3g} from its {self.cfg.outliers.neighbours} "
                    "nearest tasks)"
                    for i, s in zip(ids[bad], score[bad])
                }
            )
            ids, models, descriptors = ids[~bad], models[~bad], descriptors[~bad]
        quarantined = np.array(sorted(reasons), np.int64)
        ctx = self._context(ids, probe, parallel_solvers(self.n_chunks, run=self.run))
        fitted, seconds = {}, {}
        for method in methods:
            strategy = strategy_for(method, self.cfg)
            if strategy is None:
                continue
            start = time.perf_counter()
            try:
                fitted[method] = fit_strategy(strategy, models, descriptors, ctx)
            except Exception as exc:
                self.error = f"{method}: {type(exc).__name__}: {exc}"
                raise
            seconds[method] = time.perf_counter() - start
        self.summary = {"seconds": seconds, "parties": len(ids), **{m: f.summary() for m, f in fitted.items()}}
        self.summary["quarantined"] = quarantined.tolist()
        return {
            "fitted": fitted,
            "party_id": ids,
            "descriptor": descriptors,
            "quarantined": quarantined,
            "reasons": [reasons[int(i)] for i in quarantined],
        }

    @property
    def _mixed(self) -> bool:
        return self.scenario is not None and self.scenario.mixed

    def _context(self, ids: np.ndarray, probe: np.ndarray | None, solvers: tuple | None) -> FitContext:
        """The strategies' context for the models of training parties ``ids`` (in that order)."""
        solve_many, solve_rect = solvers or (solve_many_serial, solve_rect_serial)
        families = target = None
        if self._mixed:  # packed models: each family's rows, and the families novel parties receive
            families = tuple((spec, rows) for rows, spec in self.scenario.family_groups(self.seed, ids))
        elif self.target != self.spec:
            target = self.target
        return FitContext(
            self.spec,
            self.seed,
            solve_many,
            self.cfg,
            probe,
            tasks=(lambda: self._tasks(ids)) if self.scenario is not None and not self._mixed else None,
            widths=party_widths(self.seed, ids, self.widths) if self.widths else None,
            solve_rect=solve_rect,
            outputs=self.outputs,
            target=target,
            families=families,
            target_families=self.scenario.target_families if self._mixed else (),
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
