"""End-to-end runs on the session's Ray instance (2 CPUs, 1 logical GPU)."""

from __future__ import annotations

import json

import numpy as np
import pyarrow.parquet as pq
import pytest

from cluster.cli import main
from cluster.config import ConfigError, resolve
from cluster.pipeline import run
from fusion.io import load_warm_starter
from fusion.methods import DEFAULT_METHODS

SMALL = {
    "scenario": {"name": "sine", "hidden": [16], "train_points": 40},
    "parties": 12,
    "test_parties": 6,
    "shots": [0, 5],
    "seed": 3,
    "pretrain": {"steps": 150},
    "finetune": {"steps": 20},
    "fusion": {"gp": {"max_steps": 30, "inducing": 16}, "align_iters": 5, "refit_steps": 100},
}


def small(tmp_path, name: str, **over):
    return resolve({**SMALL, "out": str(tmp_path / name), **over})


def values(result) -> np.ndarray:
    table = pq.read_table(result.out / "results.parquet").sort_by(
        [("method", "ascending"), ("shots", "ascending"), ("party_id", "ascending")]
    )
    return np.asarray(table["value"].to_pylist())


def test_cli_run_writes_every_file(ray_session, tmp_path, capsys):
    cfg_path = tmp_path / "small.toml"
    cfg_path.write_text(
        '[scenario]\nname = "sine"\nhidden = [16]\ntrain_points = 40\n'
        "[pretrain]\nsteps = 150\n[finetune]\nsteps = 20\n"
        "[fusion]\nalign_iters = 5\nrefit_steps = 100\n[fusion.gp]\nmax_steps = 30\n"
    )
    out = tmp_path / "run"
    code = main(
        [
            "run",
            str(cfg_path),
            "--parties",
            "12",
            "--test-parties",
            "6",
            "--shots",
            "0,5",
            "--seed",
            "1",
            "--party-actors",
            "2",
            "--out",
            str(out),
        ]
    )
    assert code == 0
    printed = capsys.readouterr().out
    assert "nrmse" in printed and "fusion_noalign" in printed
    assert sorted(p.name for p in out.iterdir()) == [
        "checkpoint",
        "config.toml",
        "costs.csv",
        "fusion_model.pt",
        "metric_vs_shots.png",
        "metric_vs_upload.png",
        "partition.png",
        "quarantined.csv",
        "results.parquet",
        "summary.csv",
        "timing.json",
        "warm_starts.png",
    ]
    timing = json.loads((out / "timing.json").read_text())
    stages = {"setup", "connect", "actors", "pretrain", "fusion", "evaluate", "teardown", "write"}
    assert set(timing["stages_s"]) == stages and timing["wall_s"] >= sum(timing["stages_s"].values()) * 0.99
    assert printed.strip().splitlines()[-1].startswith("timing: ")
    table = pq.read_table(out / "results.parquet")
    assert {"run_id", "scenario", "seed", "method", "shots", "party_id", "metric", "value"} <= set(table.column_names)
    assert table.num_rows == len(DEFAULT_METHODS) * 2 * 6
    pairs = set(zip(table["method"].to_pylist(), table["shots"].to_pylist()))
    assert pairs == {(m, k) for m in DEFAULT_METHODS for k in (0, 5)}
    assert np.isfinite(table["value"].to_numpy()).all()
    summary = (out / "summary.csv").read_text().splitlines()
    assert summary[0] == "method,shots,mean,std,n,median,p10,p90,worst10" and len(summary) == 1 + 10
    model, spec = load_warm_starter(out / "fusion_model.pt")
    assert spec.widths == (1, 16, 1) and model.predict(np.array([[1.0, 0.9]])).shape == (1, spec.n_params)
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".partial")]


def test_results_do_not_depend_on_the_sharding(ray_session, tmp_path):
    one = run(small(tmp_path, "one", party_actors=1), log=lambda _: None)
    three = run(small(tmp_path, "three", party_actors=3, cpus_per_actor=0.5), log=lambda _: None)
    np.testing.assert_array_equal(values(one), values(three))


def test_gpu_fractions_schedule_on_logical_gpus(ray_session):
    import ray

    from actors.party_shard import PartyShardActor
    from fusion.adapt.train_config import TrainConfig
    from scenarios import build, make_options

    sc = build("sine", make_options("sine", {"hidden": [4]}))
    shards = [
        PartyShardActor.options(num_cpus=0, num_gpus=0.25).remote(i, sc, 0, [i], [], TrainConfig(1), TrainConfig(1))
        for i in range(4)
    ]
    infos = ray.get([s.info.remote() for s in shards], timeout=600)  # a bound, not a speed target
    assert [i["gpu_ids"] for i in infos] == [["0"]] * 4
    assert {i["device"] for i in infos} == {"cpu"}  # no CUDA here: the shard falls back to the CPU
    for s in shards:
        ray.kill(s)


def test_more_gpu_than_any_node_offers_is_refused(ray_session, tmp_path):
    with pytest.raises(ConfigError, match="largest node offers 1 GPUs"):
        run(small(tmp_path, "gpu", gpus_per_actor=2.0), log=lambda _: None)
    with pytest.raises(ConfigError, match="need 3 CPUs but the cluster has 2"):
        run(small(tmp_path, "gpu", party_actors=3), log=lambda _: None)
    with pytest.raises(ConfigError, match="need 1.5 GPUs but the cluster has 1"):
        run(small(tmp_path, "gpu", party_actors=3, cpus_per_actor=0.5, gpus_per_actor=0.5), log=lambda _: None)
    assert not (tmp_path / "gpu").exists()
