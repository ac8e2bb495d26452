"""One run: create the actors, pretrain, fuse, broadcast, fine-tune and evaluate, write the results.

Work goes to the shards in calls of ``chunk_parties`` parties (never one call per party): each
finished call moves the progress line, is checkpointed into ``--out`` and, if its shard dies, is
retried on the restarted shard. ``resume=True`` continues a run from its checkpoint.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import NamedTuple

import numpy as np
import ray

from actors import metrics
from cluster.checkpoint import Checkpoint
from cluster.config import ConfigError, RunConfig, dumps_toml, to_dict
from cluster.runtime import (
    check_class_resources,
    check_resources,
    connect,
    dashboard_login_hint,
    disconnect,
    metrics_url,
    party_actor_count,
)
from fusion.evaluate import LOCAL, Scores
from fusion.io import save_warm_starter, write_atomic
from fusion.layout import ModelLayout
from fusion.lazy import lazy
from fusion.methods import is_federated, strategy_for
from fusion.screening.screen import TooFewModels
from fusion.system import NOMINAL, RoundClock, Schedule, left_out_csv, party_classes_of, read_availability, schedule
from scenarios import Scenario, build, model_layout, party_descriptors, with_hidden_width

# torch, matplotlib, pyarrow: imported by a thread while Ray starts (_preload), not before the run's checks
HEAVY = ("actors.party_shard", "actors.fusion", "cluster.rounds", "cluster.results", "cluster.plots")
party_shard, fusion_actor, rounds, results, plots = (lazy(name) for name in HEAVY)

Log = Callable[[str], None]


@dataclass
class RunResult:
    out: Path
    summary: list[dict]
    stages: dict[str, float] = field(default_factory=dict)
    table: str = ""
    dashboard_url: str | None = None
    quarantined: list[int] = field(default_factory=list)
    left_out: dict[str, int] = field(default_factory=dict)  # dropped / late parties (with [[party_classes]])
    shards: list[dict] = field(default_factory=list)  # each party shard's info(): name, resources, node
    costs: dict[str, dict] = field(default_factory=dict)  # method -> its costs.csv row


@dataclass(frozen=True)
class ShardPlan:
    """One party-shard actor: its name, resources and the training / test party ids it hosts."""

    name: str
    cpus: float
    gpus: float
    train: np.ndarray
    test: np.ndarray


def shard_slices(n_train: int, n_test: int, n_shards: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Contiguous slices of the training and the test party ids, one pair per shard."""
    train = np.array_split(np.arange(n_train), n_shards)
    test = np.array_split(np.arange(n_train, n_train + n_test), n_shards)
    return list(zip(train, test))


def plan_shards(cfg: RunConfig, n_actors: int) -> list[ShardPlan]:
    """The party shards: ``n_actors`` alike, or with ``[[party_classes]]`` each class's own actors and parties."""
    cl = cfg.cluster
    if not cfg.party_classes:
        slices = shard_slices(cfg.parties, cfg.test_parties, n_actors)
        return [
            ShardPlan(f"party-shard-{i}", cl.cpus_per_actor, cl.gpus_per_actor, tr, te)
            for i, (tr, te) in enumerate(slices)
        ]
    train, test = np.arange(cfg.parties), np.arange(cfg.parties, cfg.parties + cfg.test_parties)
    train_cls = party_classes_of(cfg.party_classes, cfg.seed, train)
    test_cls = party_classes_of(cfg.party_classes, cfg.seed, test)
    plans = []
    for k, c in enumerate(cfg.party_classes):
        parts = zip(np.array_split(train[train_cls == k], c.actors), np.array_split(test[test_cls == k], c.actors))
        plans += [ShardPlan(f"party-shard-{c.name}-{i}", c.cpus, c.gpus, tr, te) for i, (tr, te) in enumerate(parts)]
    return plans


def chunks(ids: np.ndarray, size: int) -> list[np.ndarray]:
    """``ids`` in contiguous pieces of at most ``size`` (none when ``ids`` is empty)."""
    return np.array_split(ids, -(-len(ids) // size)) if len(ids) else []


def default_out(cfg: RunConfig) -> Path:
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    return Path("runs") / f"{cfg.scenario}-s{cfg.seed}-{stamp}"


def check_out(out: Path) -> None:
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ConfigError(f"output folder {out} already exists and is not empty; choose another --out (or --resume it)")


class Preflight(NamedTuple):
    """What the checks before Ray leave for the run: the config with its output folder, the prepared scenario, its
    population layout, with ``[[party_classes]]`` the simulated schedule of pretraining, and the rounds' clock."""

    cfg: RunConfig
    out: Path
    scenario: Scenario
    layout: ModelLayout
    plan: Schedule | None
    clock: RoundClock


def preflight(cfg: RunConfig, resume: bool = False) -> Preflight:
    """Every check of a run that needs no Ray: the output folder, the scenario (built and prepared: data folders,
    sizes), shots against what the scenario can give, widths, and the party classes' schedule. A bad value raises
    :class:`ConfigError`. :func:`run` starts with it; ``fusion-cluster run --check`` calls it alone."""
    out = Path(cfg.out) if cfg.out else default_out(cfg)
    if not resume:
        check_out(out)
    cfg = dataclasses.replace(cfg, out=str(out))
    scenario = build(cfg.scenario, cfg.scenario_options)
    try:
        layout = model_layout(scenario, cfg.widths)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    if cfg.widths:  # models of every width travel embedded at the widest (fusion/models/widths.py)
        scenario = with_hidden_width(scenario, max(cfg.widths))
    try:
        scenario.prepare(cfg.seed, cfg.parties, cfg.test_parties)  # data folders, sizes: fail before Ray starts
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    max_k = scenario.max_shots
    if max_k is not None and max(cfg.shots) > max_k:
        raise ConfigError(f"shots={max(cfg.shots)} is more than the {max_k} examples scenario {cfg.scenario} can give")
    plan = None
    if cfg.party_classes:
        plan = schedule(cfg.party_classes, cfg.system, cfg.seed, np.arange(cfg.parties), cfg.pretrain.steps)
        if len(plan.reporting) < 2:
            raise ConfigError(
                f"only {len(plan.reporting)} of {cfg.parties} training parties report by system.deadline="
                f"{cfg.system.deadline:g} (drops and stragglers); fusion needs at least 2"
            )
    try:
        trace = read_availability(cfg.system.availability) if cfg.system.availability else None
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    clock = RoundClock(cfg.party_classes or NOMINAL, cfg.system, trace)
    return Preflight(cfg, out, scenario, layout, plan, clock)


def run(cfg: RunConfig, log: Log = print, resume: bool = False, started: float | None = None) -> RunResult:
    """Run (or with ``resume``, continue from the checkpoint in ``cfg.out``) and write the results.

    ``started``: the ``time.perf_counter()`` at which the command began (the CLI's; default: now), the start of the
    wall time in ``timing.json``.
    """
    started = time.perf_counter() if started is None else started
    cfg, out, scenario, layout, plan, round_clock = preflight(cfg, resume)
    ckpt = Checkpoint(out, scenario, cfg.seed, cfg.parties)
    fit_methods = [m for m in cfg.methods if strategy_for(m, cfg.fusion) is not None]
    saved = ckpt.load_pretrained() if resume else []  # a bad checkpoint fails here, before Ray starts
    fitted = ckpt.load_fitted(fit_methods) if resume else None
    run_id = out.name
    stages: dict[str, float] = {}
    clock = time.perf_counter()
    stages["setup"] = clock - started  # imports, config, checks: everything before Ray
    with ThreadPoolExecutor(1) as pool:  # the heavy imports while this thread waits for Ray's processes
        preload = pool.submit(lambda: [importlib.import_module(name) for name in HEAVY])
        conn = connect(cfg.cluster)
        preload.result()
    stages["connect"] = time.perf_counter() - clock
    try:
        if cfg.party_classes:
            check_class_resources(cfg.party_classes)
            n_actors = sum(c.actors for c in cfg.party_classes)
        else:
            n_actors = party_actor_count(cfg.cluster, cfg.parties + cfg.test_parties)
            check_resources(cfg.cluster, n_actors)
        if cfg.faults.crash_shard >= n_actors:
            raise ConfigError(f"faults.crash_shard={cfg.faults.crash_shard} but the run has {n_actors} party shards")
        if not resume:
            ckpt.start(dumps_toml(to_dict(cfg)))
        metrics.stage_seconds(run_id, "connect", stages["connect"])
        if conn.dashboard_url:
            log(f"Ray dashboard: {conn.dashboard_url}")
            hint = dashboard_login_hint()
            if hint:
                log(hint)
        endpoint = metrics_url()
        if endpoint:
            log(f'Prometheus metrics (this node): {endpoint}  (series ray_{metrics.PREFIX}*, run="{run_id}")')
        with metrics.keep_gauges_fresh():
            res = _execute(cfg, scenario, layout, run_id, n_actors, stages, log, ckpt, saved, fitted, plan, round_clock)
    except BaseException:
        disconnect(conn)
        raise
    with ThreadPoolExecutor(1) as pool:  # results and plots are written while Ray shuts down
        writing = pool.submit(_write_results, cfg, scenario, res, plan, out, run_id)
        disconnect(conn)
        stages["teardown"] = time.perf_counter() - res["evaluated_at"]  # actors stopped, Ray shut down
        summary, participating, written, stages["write"] = writing.result()
    text = results.format_summary(summary, scenario.metric_name) if summary else "(no novel parties in this run)"
    if participating:
        text += "\n\n" + participating_table(participating, scenario.metric_name)
    if cfg.report.target is not None:
        text += "\n\n" + results.format_times(summary + participating, scenario.metric_name, cfg.report.target)
    log(text)
    wall = time.perf_counter() - started
    write_atomic(out / TIMING_JSON, lambda tmp: tmp.write_text(timing_json(wall, stages)))
    written.append(TIMING_JSON)
    left_out = {}
    if plan is not None:
        left_out = {why: int((plan.left_out_reason == why).sum()) for why in ("dropped", "late")}
        log(
            f"left out of fusion: {left_out['dropped']} dropped, {left_out['late']} late (system.deadline="
            f"{cfg.system.deadline:g}); {len(plan.reporting)} of {cfg.parties} training parties fused (left_out.csv)"
        )
    log(f"wrote {out}/ ({', '.join(written)}; config.toml and checkpoint/ since the start)")
    log(timing_line(wall, stages))
    return RunResult(
        out,
        summary,
        stages,
        text,
        conn.dashboard_url,
        [q.party_id for q in res["quarantined"]],
        left_out,
        res["shards"],
        res["costs"],
    )


def participating_table(rows: list[dict], metric: str) -> str:
    """The participating protocol's rows as a printed table: each rounds method at its last and best round."""
    key = "weighted_mean" if rows and "weighted_mean" in rows[0] else "mean"
    last = {r["method"]: r for r in rows if r["protocol"] == "participating"}
    best = {r["method"]: r for r in rows if r["protocol"] == "participating_best_optimistic"}
    head = [f"{metric} of the training parties on their own held-out rows (PFLlib's protocol)", "last round", "best"]
    body = [
        [m, f"{r[key]:.4f} ± {r['std']:.4f} (round {r['round']})", f"{best[m][key]:.4f} (round {best[m]['round']})"]
        for m, r in last.items()
    ]
    widths = [max(len(row[i]) for row in [head, *body]) for i in range(3)]
    fmt = lambda row: "  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip()  # noqa: E731
    note = "(best: chosen on the same held-out rows, an optimistic figure)"
    return "\n".join([fmt(head), fmt(["-" * w for w in widths]), *map(fmt, body), note])


def _novel_points(cfg: RunConfig, res: dict) -> dict[str, list[dict]]:
    """The novel protocol's point of each method with a learning curve for rounds.parquet: its test parties at 0
    shots after its last round (a one-shot method's: round 1), with the method's costs."""
    cols, out = res["cols"], {}
    for method in res["curves"]:
        rows = [i for i, (m, k) in enumerate(zip(cols.method, cols.shots)) if m == method and k == 0]
        if rows:
            costs = {k: res["costs"][method][k] for k in (*results.ROUND_COSTS, "sim_time")}
            out[method] = [
                {
                    "round": int(res["costs"][method]["rounds"]),
                    "protocol": "novel",
                    "party_id": np.array([cols.party_id[i] for i in rows]),
                    "value": np.array([cols.value[i] for i in rows]),
                    **costs,
                }
            ]
    return out


def _write_results(cfg: RunConfig, scenario, res: dict, plan, out: Path, run_id: str) -> tuple:
    """Write the run's files into ``out`` (staged, then renamed). Returns the novel protocol's summary rows, the
    participating protocol's, the files written and the seconds it took."""
    clock = time.perf_counter()
    written = ["results.parquet", "summary.csv", "costs.csv", "quarantined.csv", plots.SHOTS_PNG, plots.UPLOAD_PNG]
    with results.staged_dir(out) as tmp:
        table = results.results_table(res["cols"], run_id, cfg.scenario, cfg.seed, scenario.metric_name)
        results.write_parquet(table, tmp / "results.parquet")
        test_ids = np.arange(cfg.parties, cfg.parties + cfg.test_parties)
        weights = scenario.party_weights(cfg.seed, test_ids)
        weights = None if weights is None else dict(zip(test_ids.tolist(), weights.tolist()))
        summary = results.summarize(table, list(cfg.methods), weights, scenario.lower_is_better)
        results.write_costs_csv(res["costs"], list(cfg.methods), tmp / "costs.csv")
        if summary:  # (a rounds-only run without novel parties has none)
            curves = results.upload_curves(res["curves"]) if res["curves"] else None
            plots.plot_metric_vs_upload(summary, res["costs"], scenario.metric_name, tmp / plots.UPLOAD_PNG, curves)
        (tmp / "quarantined.csv").write_text(results.quarantine_csv(res["quarantined"]))
        if plan is not None:
            (tmp / "left_out.csv").write_text(left_out_csv(plan, cfg.party_classes))
            written.append("left_out.csv")
        if summary:
            plots.plot_metric_vs_shots(summary, scenario.metric_name, tmp / plots.SHOTS_PNG, cfg.report.band)
        else:
            written = [w for w in written if w not in (plots.SHOTS_PNG, plots.UPLOAD_PNG)]
        every = np.arange(cfg.parties + cfg.test_parties)
        counts = scenario.label_counts(cfg.seed, every)
        descriptors = party_descriptors(scenario, cfg.seed, every) if counts is None else None
        plots.plot_partition(counts, descriptors, cfg.parties, tmp / plots.PARTITION_PNG)
        written.append(plots.PARTITION_PNG)
        participating, tw = [], None
        if res["curves"]:
            train_ids = np.arange(cfg.parties)
            tw = scenario.party_weights(cfg.seed, train_ids)
            tw = None if tw is None else dict(zip(train_ids.tolist(), tw.tolist()))
            curves = {m: list(c) for m, c in res["curves"].items()}
            for m, pts in _novel_points(cfg, res).items():
                curves[m] = curves.get(m, []) + pts
            results.write_parquet(
                results.rounds_table(curves, run_id, cfg.scenario, cfg.seed, scenario.metric_name),
                tmp / "rounds.parquet",
            )
            participating = results.participating_rows(res["curves"], tw, scenario.lower_is_better)
            means = results.curve_means(res["curves"], tw)
            if means:
                plots.plot_metric_vs_round(means, scenario.metric_name, tmp / plots.ROUND_PNG)
                written += ["rounds.parquet", plots.ROUND_PNG]
            else:
                written.append("rounds.parquet")
        if cfg.report.target is not None:
            timed = results.with_time_to_target(
                summary + participating, res["costs"], res["curves"], cfg.report.target, scenario.lower_is_better, tw
            )
            summary, participating = timed[: len(summary)], timed[len(summary) :]
        if _plot_time(summary, res, tw, scenario.metric_name, cfg.report.target, tmp / plots.TIME_PNG):
            written.append(plots.TIME_PNG)
        results.write_summary_csv(summary + participating, tmp / "summary.csv")
        if plots.plot_warm_starts(scenario, res["shown"], cfg.seed, shown_parties(cfg), tmp / plots.WARM_STARTS_PNG):
            written.append(plots.WARM_STARTS_PNG)
        if "fusion" in res["fitted"]:
            save_warm_starter(res["fitted"]["fusion"], scenario.target_spec, tmp / "fusion_model.pt")
            written.append("fusion_model.pt")
    return summary, participating, written, time.perf_counter() - clock


def _plot_time(summary: list[dict], res: dict, tw, metric: str, target: float | None, path: Path) -> bool:
    """``metric_vs_time.png`` (:func:`cluster.plots.plot_metric_vs_time`): the rounds methods' participating curves
    and every method's 0-shot novel mean at its simulated time. False (nothing written) when there is nothing to
    draw or no rounds method (a one-shot run's methods each have one time)."""
    means, times = results.curve_means(res["curves"], tw), results.curve_times(res["curves"])
    curves = {m: (times[m], mean) for m, (_, mean, _) in means.items()}
    if not res["curves"]:
        return False
    points = {}
    for r in summary:
        if r["shots"] == 0 and np.isfinite(r["mean"]) and r["method"] in res["costs"]:
            value = r.get("weighted_mean", r["mean"])
            points[r["method"]] = (float(res["costs"][r["method"]]["sim_time"]), float(value))
    if not curves and not points:
        return False
    plots.plot_metric_vs_time(curves, points, metric, path, target)
    return True


TIMING_JSON = "timing.json"
WORK_STAGES = ("pretrain", "fusion", "federated", "evaluate", "participating")  # the methods' own work
_TIMING_ORDER = (
    "setup",
    "connect",
    "actors",
    "pretrain",
    "fusion",
    "federated",
    "evaluate",
    "participating",
    "teardown",
    "write",
)


def timing_json(wall: float, stages: dict[str, float]) -> str:
    """``timing.json``: ``{"wall_s": ..., "stages_s": {stage: seconds}}`` in the order the stages run."""
    ordered = {k: round(stages[k], 3) for k in _TIMING_ORDER if k in stages}
    ordered.update({k: round(v, 3) for k, v in stages.items() if k not in ordered})
    return json.dumps({"wall_s": round(wall, 3), "stages_s": ordered}, indent=1) + "\n"


def timing_line(wall: float, stages: dict[str, float]) -> str:
    """The one-line timing summary a run prints last."""
    parts = " + ".join(f"{k} {stages[k]:.1f}" for k in _TIMING_ORDER if k in stages)
    outside = wall - sum(stages.get(k, 0.0) for k in WORK_STAGES)
    return f"timing: {wall:.1f}s wall = {parts} s; {outside:.1f}s outside the work stages ({TIMING_JSON})"


def _bar(stage: str, done: int, total: int, unit: str, seconds: float, width: int = 30) -> str:
    """One tqdm-style line: ``stage: 40%|############        | 20/50 parties [3.1s<4.6s]``."""
    frac = done / total if total else 1.0
    eta = f"<{seconds / done * (total - done):.1f}s" if 0 < done < total else ""
    filled = int(round(width * frac))
    bar = "#" * filled + " " * (width - filled)
    return f"{stage}: {100 * frac:3.0f}%|{bar}| {done}/{total} {unit} [{seconds:.1f}s{eta}]"


class _Progress:
    """A stage's progress in ``unit``: on a terminal (``log`` is ``print`` and stdout a TTY) one bar redrawn in place;
    otherwise lines: the first, then at most one a second, and always the last (``lines=False``: none)."""

    def __init__(self, stage: str, total: int, log: Log, unit: str = "parties", lines: bool = True) -> None:
        self.stage, self.total, self.log, self.done, self.unit, self.lines = stage, total, log, 0, unit, lines
        self.start = self.last = time.perf_counter()
        self.tty = log is print and sys.stdout.isatty()
        if self.tty and total:
            self._draw(0.0)

    def _draw(self, seconds: float) -> None:
        end = "\n" if self.done >= self.total else ""
        sys.stdout.write("\r" + _bar(self.stage, self.done, self.total, self.unit, seconds) + end)
        sys.stdout.flush()

    def add(self, n: int) -> None:
        self.done += n
        now = time.perf_counter()
        if self.tty:
            self._draw(now - self.start)
        elif self.lines and (now - self.last >= 1.0 or self.done == self.total or self.last == self.start):
            self.last = now
            self.log(f"{self.stage}: {self.done}/{self.total} {self.unit} ({now - self.start:.1f}s)")


def _as_done(refs):
    """``(ref, result)`` of each of ``refs`` in the order they finish."""
    pending = list(refs)
    while pending:
        ready, pending = ray.wait(pending, num_returns=1)
        yield ready[0], ray.get(ready[0])


def _stage(stages: dict[str, float], run_id: str, name: str, start: float) -> None:
    stages[name] = time.perf_counter() - start
    metrics.stage_seconds(run_id, name, stages[name])


def _execute(
    cfg: RunConfig,
    scenario,
    layout: ModelLayout,
    run_id: str,
    n_actors: int,
    stages: dict[str, float],
    log: Log,
    ckpt,
    saved,
    fitted_saved,
    plan: Schedule | None,
    round_clock: RoundClock,
) -> dict:
    namespace = f"fusion-cluster-{run_id}"
    shard_plans = plan_shards(cfg, n_actors)
    slices = [(p.train, p.test) for p in shard_plans]
    opts = {"namespace": namespace, "lifetime": None}
    n_cpus = int(ray.cluster_resources().get("CPU", 1))
    clock = time.perf_counter()
    shards = [
        party_shard.PartyShardActor.options(name=p.name, num_cpus=p.cpus, num_gpus=p.gpus, **opts).remote(
            i,
            scenario,
            cfg.seed,
            p.train,
            p.test,
            cfg.pretrain,
            cfg.finetune,
            run=run_id,
            faults=cfg.faults,
            name=p.name,
            layout=layout,
        )
        for i, p in enumerate(shard_plans)
    ]
    one_shot = [m for m in cfg.methods if strategy_for(m, cfg.fusion) is not None]  # fitted on pretrained models
    federated = [m for m in cfg.methods if is_federated(m)]
    fusion = None
    try:
        infos = ray.get([s.info.remote() for s in shards])
        _stage(stages, run_id, "actors", clock)
        if one_shot:  # started once the shards are up: its imports overlap pretraining, not their start
            fusion = fusion_actor.FusionActor.options(name="fusion", namespace=namespace).remote(
                layout, cfg.fusion, cfg.seed, n_cpus, run=run_id, scenario=scenario
            )
        devices = sorted({i["device"] for i in infos})
        nodes = len({i["node_id"] for i in infos})
        log(
            f"{len(shards)} party shards on {nodes} node(s) ({', '.join(devices)}): "
            f"{cfg.parties} training, {cfg.test_parties} test parties; actors in namespace {namespace}"
        )
        fit_ref, fitted, quarantine, uploaded, fit_seconds = None, {}, (), np.zeros(0, np.int64), {}
        part_refs: list = []
        if one_shot:  # pretraining and fusion, as a run without federated methods has them
            fit_ref, fitted, quarantine, uploaded, fit_seconds, part_refs = _pretrain_and_fuse(
                cfg, shards, slices, fusion, stages, run_id, log, ckpt, saved, fitted_saved, plan
            )
        fed = None
        if federated:
            started_at = time.perf_counter()
            train_slices = [tr for tr, _ in slices]
            fed = rounds.train_federated(
                federated,
                cfg.federated,
                scenario,
                layout,
                cfg.seed,
                shards,
                train_slices,
                namespace,
                run_id,
                ckpt,
                cfg.test_parties,
                log,
                round_clock,
            )
            _stage(stages, run_id, "federated", started_at)
            fit_ref = ray.put({"fitted": {**fitted, **fed.starts}})
        elif fit_ref is None:  # cold_start alone
            fit_ref = ray.put({"fitted": {}})

        clock = time.perf_counter()
        cols, shown = _evaluate(cfg, shards, slices, fit_ref, run_id, log)
        if fed is not None:  # a start without a 0-shot model (FedRep's untrained head) scores n/a at 0 shots
            from fusion.federated.base import no_zero_shot

            blank = no_zero_shot(dataclasses.asdict(cols), fed.starts)["value"]
            cols = dataclasses.replace(cols, value=blank)
        _stage(stages, run_id, "evaluate", clock)
        oneshot_scores = []
        if fed is not None and one_shot and cfg.report.participating_oneshot:  # the participating protocol too
            clock = time.perf_counter()
            log(f"participating: {', '.join(one_shot)} and local on the {cfg.parties} training parties' held-out rows")
            calls = [s.participating.remote(fit_ref, one_shot, *part_refs) for s in shards]
            oneshot_scores = ray.get(calls)
            _stage(stages, run_id, "participating", clock)
        evaluated_at = time.perf_counter()
        restarted = [i["index"] for i in ray.get([s.info.remote() for s in shards]) if i["restarted"]]
        if restarted:
            log(f"party shards restarted during the run (their calls were retried): {restarted}")
    finally:
        for actor in [*shards, *([fusion] if fusion is not None else [])]:
            ray.kill(actor, no_restart=True)
    costs = oneshot_costs(cfg, layout, uploaded, stages.get("pretrain", 0.0), fit_seconds, plan, round_clock)
    curves = {}
    if fed is not None:
        costs.update(fed.costs)
        local = oneshot_points(oneshot_scores, costs, len(uploaded) * cfg.pretrain.steps, pretrain_end(cfg, plan))
        every = {**fed.curves, **local}
        curves = {m: every[m] for m in [*cfg.methods, LOCAL] if m in every}
    starts = {**fitted, **(fed.starts if fed is not None else {})}
    return {
        "cols": cols,
        "shown": shown,
        "fitted": starts,
        "quarantined": quarantine,
        "shards": infos,
        "costs": costs,
        "curves": curves,
        "evaluated_at": evaluated_at,
    }


def _pretrain_and_fuse(cfg, shards, slices, fusion, stages, run_id, log, ckpt, saved, fitted, plan) -> tuple:
    """Pretrain every training party (but those ``saved``) and fit the one-shot methods (unless ``fitted``).

    Returns (ref of ``{"fitted": ...}``, fitted starters, the quarantine records, ids of the models uploaded, fit
    seconds by method, refs of the pretraining answers).
    """
    clock = time.perf_counter()
    reporting = None if plan is None else plan.reporting
    if plan is not None:
        n_drop, n_late = ((plan.left_out_reason == w).sum() for w in ("dropped", "late"))
        log(f"system: {n_drop} training parties drop out, {n_late} miss the deadline; {len(reporting)} report")
    parts, part_refs = _pretrain(cfg, shards, slices, saved, ckpt, log, reporting)
    _stage(stages, run_id, "pretrain", clock)

    ids = np.concatenate([p["party_id"] for p in parts])
    clock, seconds = time.perf_counter(), {}
    if fitted is None:
        one_shot = [m for m in cfg.methods if not is_federated(m)]
        fit_ref = fusion.fit.remote(one_shot, *part_refs)
        progress = _Progress(
            "fusion", sum(strategy_for(m, cfg.fusion) is not None for m in one_shot), log, "methods", lines=False
        )  # a bar on a terminal
        try:
            fit_out = ray.get(fit_ref)
        except TooFewModels as exc:  # raised in the fusion actor: a property of the run, not a bug
            raise ConfigError(str(getattr(exc, "cause", exc))) from None
        fitted, quarantine = fit_out["fitted"], fit_out["quarantined"]
        progress.add(len(fitted))
        ckpt.save_fitted(fitted)
        ckpt.save_quarantine(quarantine)
        seconds = ray.get(fusion.report.remote())["seconds"]
        each = ", ".join(f"{m} ({s:.1f}s)" for m, s in seconds.items())
        log(f"fusion: fitted {each} in {time.perf_counter() - clock:.1f}s")
    else:
        fit_ref = ray.put({"fitted": fitted})
        quarantine = ckpt.load_quarantine()
        log(f"fusion: {', '.join(fitted)} loaded from the checkpoint")
    _stage(stages, run_id, "fusion", clock)
    metrics.quarantined(run_id, len(quarantine))
    for why in sorted({q.reason for q in quarantine}, key=lambda r: r.value):
        which = [q.party_id for q in quarantine if q.reason is why]
        log(f"quarantined {len(which)} training parties ({why.value}): {which[:20]}{' ...' if len(which) > 20 else ''}")
    for method, starter in fitted.items():
        if starter.summary().get("objective") is not None:
            metrics.meta_objective(run_id, method, float(starter.summary()["objective"]))
    return fit_ref, fitted, quarantine, ids, seconds, part_refs


def oneshot_points(parts: list, costs: dict[str, dict], local_steps: int, local_time: float) -> dict[str, list[dict]]:
    """The participating protocol's point of each one-shot method and of ``local`` (the shards'
    :meth:`PartyShard.participating` answers ``parts``), as a learning curve of one point: at round = the method's
    rounds in costs.csv (1; ``local`` 0: it never communicates), with its costs and simulated time (``local``: no
    bytes, the pretraining's ``local_steps``, at ``local_time``, the end of pretraining) and no training loss."""
    cols: dict[str, tuple[list, list]] = {}
    for part in parts:
        for m, pid, v in zip(part.method, part.party_id, part.value):
            cols.setdefault(m, ([], []))
            cols[m][0].append(int(pid))
            cols[m][1].append(float(v))
    out = {}
    local = dict(rounds=0, upload_bytes=0, download_bytes=0, party_steps=local_steps, aggregated=0, sim_time=local_time)
    for m, (pids, vals) in cols.items():
        order = np.argsort(pids, kind="stable")
        c = costs.get(m, local)
        out[m] = [
            {
                "round": int(c["rounds"]),
                "party_id": np.asarray(pids)[order],
                "value": np.asarray(vals)[order],
                "loss": np.full(len(pids), np.nan),
                **{k: int(c[k]) for k in results.ROUND_COSTS},
                "sim_time": float(c["sim_time"]),
            }
        ]
    return out


def oneshot_costs(
    cfg: RunConfig,
    layout: ModelLayout,
    uploaded,
    pretrain_s: float,
    fit_seconds: dict,
    plan: Schedule | None = None,
    clock: RoundClock | None = None,
) -> dict[str, dict]:
    """The costs row of every one-shot method: one upload of each pretrained model (of training parties
    ``uploaded`` (n,), each of its own family), one warm-start download per novel party (of the family it
    receives), the pretraining's steps, one round, the models fused (``aggregated``); ``cold_start`` costs nothing.

    ``wall_s``: the pretraining stage (shared by every one-shot method, as its compute is) plus the method's own fit.
    ``sim_time`` (:func:`oneshot_time`): when the last model reaches fusion on the simulated clock.
    """
    out = {}
    uploaded = np.asarray(uploaded, np.int64)
    for m in cfg.methods:
        if is_federated(m):
            continue
        if strategy_for(m, cfg.fusion) is None:  # cold_start: a random init, nothing sent
            out[m] = dict(
                rounds=0, upload_bytes=0, download_bytes=0, party_steps=0, aggregated=0, sim_time=0.0, wall_s=0.0
            )
            continue
        test_ids = np.arange(cfg.parties, cfg.parties + cfg.test_parties)
        groups = layout.family_groups(cfg.seed, uploaded)
        out[m] = dict(
            rounds=1,
            upload_bytes=sum(len(r) * rounds.model_bytes(s) for r, s in groups),
            download_bytes=sum(len(r) * rounds.model_bytes(s) for r, s in layout.target_groups(cfg.seed, test_ids)),
            party_steps=len(uploaded) * cfg.pretrain.steps,
            aggregated=len(uploaded),
            sim_time=oneshot_time(
                cfg, uploaded, max((rounds.model_bytes(s) for _, s in groups), default=0), plan, clock
            ),
            wall_s=pretrain_s + fit_seconds.get(m, 0.0),
        )
    return out


def oneshot_time(
    cfg: RunConfig, uploaded: np.ndarray, model_bytes: int, plan: Schedule | None, clock: RoundClock | None
) -> float:
    """A one-shot method on the simulated clock: the end of pretraining (:func:`pretrain_end`) plus the slowest
    reporting class's one upload of a model (latency + bytes / bandwidth)."""
    return pretrain_end(cfg, plan) + (clock or RoundClock()).upload_time(cfg.seed, uploaded, model_bytes)


def pretrain_end(cfg: RunConfig, plan: Schedule | None) -> float:
    """When pretraining ends on the simulated clock: ``system.deadline`` when a party is left out (fusion waits for
    it until then), else the last reporting party's finish (``pretrain.steps`` for the nominal class)."""
    if plan is None:
        return float(cfg.pretrain.steps)
    if cfg.system.deadline > 0 and (plan.left_out_reason != "").any():
        return float(cfg.system.deadline)
    return float(plan.time[plan.left_out_reason == ""].max()) if len(plan.reporting) else 0.0


def _pretrain(
    cfg: RunConfig, shards, slices, saved: list[dict], ckpt, log: Log, reporting: np.ndarray | None = None
) -> tuple[list[dict], list]:
    """Pretrain every party not in ``saved``; checkpoint each finished call. Returns all parts and their refs.

    ``reporting``: the training parties whose models reach fusion (None: all); the others (dropped, late on
    the simulated clock) are not trained at all — their models would never be used.
    """
    saved_ids = np.concatenate([p["party_id"] for p in saved]) if saved else np.zeros(0, np.int64)
    jobs = {}
    for shard, (train_ids, _) in zip(shards, slices):
        todo = train_ids[~np.isin(train_ids, saved_ids)]
        if reporting is not None:
            todo = todo[np.isin(todo, reporting)]
        for chunk in chunks(todo, cfg.cluster.chunk_parties):
            jobs[shard.pretrain.remote(chunk)] = len(chunk)
    if saved:
        left = sum(jobs.values())
        log(f"checkpoint: {len(saved_ids)} of {cfg.parties} training parties pretrained already, {left} to go")
    parts, progress = list(saved), _Progress("pretrain", sum(jobs.values()), log)
    for ref, part in _as_done(jobs):
        ckpt.save_pretrained(part)
        parts.append(part)
        progress.add(jobs[ref])
    return parts, [ray.put(p) for p in saved] + list(jobs)


def _evaluate(cfg: RunConfig, shards, slices, fit_ref, run_id: str, log: Log) -> tuple[Scores, dict]:
    """Fine-tune and evaluate every test party; rows sorted by (method, shots, party id) whatever the sharding.
    Returns the scores and the shown parties' 0-shot models ``{method: {party id: (spec, params (n_params,))}}``."""
    jobs = {}
    for shard, (_, test_ids) in zip(shards, slices):
        for chunk in chunks(test_ids, cfg.cluster.chunk_parties):
            jobs[shard.evaluate.remote(fit_ref, list(cfg.methods), list(cfg.shots), chunk, shown_parties(cfg))] = len(
                chunk
            )
    progress, parts = _Progress("fine-tune + evaluate", cfg.test_parties, log), []
    sums: dict[tuple[str, int], list[float]] = {}
    for ref, part in _as_done(jobs):
        parts.append(part)
        for m, k, v in zip(part.method, part.shots, part.value):
            acc = sums.setdefault((m, k), [0.0, 0])
            acc[0], acc[1] = acc[0] + v, acc[1] + 1
        for (m, k), (total, n) in sums.items():
            metrics.warm_start_metric(run_id, m, k, total / n)
        progress.add(jobs[ref])
    cols = {k: [v for p in parts for v in getattr(p, k)] for k in ("method", "shots", "party_id", "value")}
    rank = {m: i for i, m in enumerate(cfg.methods)}
    order = np.lexsort((cols["party_id"], cols["shots"], [rank[m] for m in cols["method"]]))
    scores = Scores(**{k: [v[i] for i in order] for k, v in cols.items()})
    shown: dict[str, dict[int, tuple]] = {}  # method -> party id -> (spec, params (n_params,))
    for part in parts:
        for method, (spec, pids, params) in part.shown.items():
            shown.setdefault(method, {}).update({int(p): (spec, row) for p, row in zip(pids, params)})
    return scores, shown


def shown_parties(cfg: RunConfig) -> list[int]:
    """The test parties whose 0-shot models ``warm_starts.png`` draws."""
    return list(range(cfg.parties, cfg.parties + min(3, cfg.test_parties)))
