"""One run: create the actors, pretrain, fuse, broadcast, fine-tune and evaluate, write the results."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import ray

from actors.fusion import FusionActor
from actors.party_shard import PartyShardActor
from cluster import results
from cluster.config import ConfigError, RunConfig, dumps_toml, to_dict
from cluster.runtime import check_resources, connect, party_actor_count
from fusion.io import save_warm_starter
from scenarios import build

Log = Callable[[str], None]


@dataclass
class RunResult:
    out: Path
    summary: list[dict]
    stages: dict[str, float] = field(default_factory=dict)
    table: str = ""
    dashboard_url: str | None = None


def shard_slices(n_train: int, n_test: int, n_shards: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Contiguous slices of the training and the test party ids, one pair per shard."""
    train = np.array_split(np.arange(n_train), n_shards)
    test = np.array_split(np.arange(n_train, n_train + n_test), n_shards)
    return list(zip(train, test))


def default_out(cfg: RunConfig) -> Path:
    stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
    return Path("runs") / f"{cfg.scenario}-s{cfg.seed}-{stamp}"


def check_out(out: Path) -> None:
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ConfigError(f"output folder {out} already exists and is not empty; choose another --out")


def run(cfg: RunConfig, log: Log = print) -> RunResult:
    out = Path(cfg.out) if cfg.out else default_out(cfg)
    check_out(out)
    scenario = build(cfg.scenario, cfg.scenario_options)
    try:
        scenario.prepare(cfg.seed, cfg.parties, cfg.test_parties)  # data folders, sizes: fail before Ray starts
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    max_k = scenario.max_shots
    if max_k is not None and max(cfg.shots) > max_k:
        raise ConfigError(f"shots={max(cfg.shots)} is more than the {max_k} examples scenario {cfg.scenario} can give")
    stages: dict[str, float] = {}
    clock = time.perf_counter()
    conn = connect(cfg.cluster)
    stages["connect"] = time.perf_counter() - clock
    try:
        n_actors = party_actor_count(cfg.cluster, cfg.parties + cfg.test_parties)
        check_resources(cfg.cluster, n_actors)
        run_id = out.name
        if conn.dashboard_url:
            log(f"Ray dashboard: {conn.dashboard_url}")
        res = _execute(cfg, scenario, run_id, n_actors, stages, log)
    finally:
        if conn.owned:
            ray.shutdown()
    with results.staged_dir(out) as tmp:
        table = results.results_table(res["cols"], run_id, cfg.scenario, cfg.seed, scenario.metric_name)
        results.write_parquet(table, tmp / "results.parquet")
        summary = results.summarize(table, list(cfg.methods))
        results.write_summary_csv(summary, tmp / "summary.csv")
        (tmp / "config.toml").write_text(dumps_toml(to_dict(cfg)))
        if res["model"] is not None:
            kind, state = res["model"]
            save_warm_starter(state, scenario.spec, tmp / "fusion_model.pt", kind=kind)
    text = results.format_summary(summary, scenario.metric_name)
    log(text)
    log(f"wrote {out}/ (results.parquet, summary.csv, config.toml{', fusion_model.pt' if res['model'] else ''})")
    return RunResult(out, summary, stages, text, conn.dashboard_url)


def _execute(cfg: RunConfig, scenario, run_id: str, n_actors: int, stages: dict[str, float], log: Log) -> dict:
    cl = cfg.cluster
    namespace = f"fusion-cluster-{run_id}"
    slices = shard_slices(cfg.parties, cfg.test_parties, n_actors)
    opts = {"num_cpus": cl.cpus_per_actor, "num_gpus": cl.gpus_per_actor, "namespace": namespace, "lifetime": None}
    n_cpus = int(ray.cluster_resources().get("CPU", 1))
    clock = time.perf_counter()
    shards = [
        PartyShardActor.options(name=f"party-shard-{i}", **opts).remote(
            i, scenario, cfg.seed, tr, te, cfg.pretrain, cfg.finetune
        )
        for i, (tr, te) in enumerate(slices)
    ]
    fusion = FusionActor.options(name="fusion", namespace=namespace).remote(scenario.spec, cfg.fusion, cfg.seed, n_cpus)
    try:
        infos = ray.get([s.info.remote() for s in shards])
        stages["actors"] = time.perf_counter() - clock
        devices = sorted({i["device"] for i in infos})
        log(f"{len(shards)} party shards ({', '.join(devices)}): {cfg.parties} training, {cfg.test_parties} test")

        clock = time.perf_counter()
        pre = [s.pretrain.remote() for s in shards]
        _wait_all(pre, "pretrain", log, clock)
        stages["pretrain"] = time.perf_counter() - clock

        clock = time.perf_counter()
        fit = fusion.fit.remote(list(cfg.methods), *pre)
        ray.wait([fit], num_returns=1, fetch_local=False)
        report = ray.get(fusion.report.remote())
        stages["fusion"] = time.perf_counter() - clock
        log(f"fusion: fitted {', '.join(report['seconds'])} in {stages['fusion']:.1f}s")

        clock = time.perf_counter()
        evals = [s.evaluate.remote(fit, list(cfg.methods), list(cfg.shots)) for s in shards]
        _wait_all(evals, "fine-tune + evaluate", log, clock)
        parts = ray.get(evals)
        stages["evaluate"] = time.perf_counter() - clock
        model = ray.get(fusion.export.remote("fusion")) if "fusion" in cfg.methods else None
    finally:
        for actor in [*shards, fusion]:
            ray.kill(actor, no_restart=True)
    cols = {k: [v for p in parts for v in p[k]] for k in ("method", "shots", "party_id", "value")}
    return {"cols": cols, "model": model, "report": report}


def _wait_all(refs: list, stage: str, log: Log, start: float) -> None:
    """Wait for every ref (without fetching), logging progress as shards finish."""
    pending, done = list(refs), 0
    while pending:
        ready, pending = ray.wait(pending, num_returns=1, fetch_local=False)
        done += len(ready)
        log(f"{stage}: {done}/{len(refs)} shards done ({time.perf_counter() - start:.1f}s)")
    ray.get(refs[:0])  # nothing to fetch; errors surface on the later get
