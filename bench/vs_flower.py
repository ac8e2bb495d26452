"""The pretraining workload of fusion-cluster beside its peers, on the same machine, in one run.

Workload: ``N`` parties of ``sine`` (sine-domains), each with its own descriptor, its own 100 private points,
its own init (all from (seed, party id) exactly as in a run), the same [1-100-1] ReLU MLP, ``steps`` steps of
full-batch Adam (lr 0.01, cosine decay to lr/10: ``fusion.adapt.train_config.TrainConfig``), the amplitude-normalized
MSE.

Peers:

- ``batched``: fusion-cluster's party-shard code (``actors.party_shard.PartyShard.pretrain``) in this process,
  all N parties as one batched tensor program, ``--threads`` torch threads (default 1 core);
- ``ray``: the same through ``--ray-actors`` PartyShard Ray actors (1 CPU each) on a fresh local Ray; the time
  is the pretrain stage (actors created and warm), actor start-up is reported apart;
- ``sequential``: a PFLlib-style loop: one process, one ``torch.nn.Sequential`` per party, trained one after
  the other with ``torch.optim.Adam`` (``--threads`` threads);
- ``flower``: Flower's simulation engine (``flwr.simulation.run_simulation``) with a ``ClientApp`` whose train
  step trains the party's own model from its own init; one round of ``FedAvg`` with every node sampled
  (the aggregation is part of Flower's round, our workload does not need it), 1 CPU per client, on its own
  local Ray. Runs in the separate venv given by ``--flower-python`` (flwr is the optional extra ``bench``);
  skipped with a note when that interpreter cannot import flwr. Reported: the whole ``run_simulation`` wall
  time and the span from the first client's train start to the last one's end.

The sequential loop and the batched program start from the same inits on the same data: the script checks
that they end at the same functions (outputs on x in [-10, 10]; single weights drift apart by float order and
Adam's scale invariance), so the comparison is of equal work.

Timing on a shared machine: ``--repeat R`` keeps the fastest of R runs of the non-Flower peers, and the two
in-process peers also report their process CPU time, which other jobs disturb much less than wall time.

    python -m bench.vs_flower                      # N=100, 500 steps
    python -m bench.vs_flower --parties 1000 --steps 1000 --ray-actors 2
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

from fusion.adapt.train_config import TrainConfig
from fusion.models.params import init_params
from scenarios import Stream, build, make_options, party_rng, party_torch_generator

ROOT = Path(__file__).resolve().parents[1]  # the Flower peer's PYTHONPATH
SCENARIO = "sine-domains"


def workload(n: int, seed: int, hidden: int):
    """Descriptors (N, 2), data x, y (N, 100, 1) and inits (N, n_params), from (seed, party id) as in a run."""
    scenario = build(SCENARIO, make_options(SCENARIO, {"hidden": (hidden,)}))
    desc = np.stack([scenario.descriptor(party_rng(seed, i, Stream.DESCRIPTOR)) for i in range(n)]).astype(np.float32)
    data = [scenario.train_data(d, party_rng(seed, i, Stream.DATA)) for i, d in enumerate(desc)]
    x = np.stack([d[0] for d in data])
    y = np.stack([d[1] for d in data])
    inits = torch.stack([scenario.init_params(party_torch_generator(seed, i, Stream.INIT)) for i in range(n)])
    return scenario, desc, x, y, inits


def sequential_model(flat: torch.Tensor, spec) -> torch.nn.Sequential:
    layers: list[torch.nn.Module] = []
    for i, (fan_in, fan_out) in enumerate(zip(spec.widths[:-1], spec.widths[1:])):
        layers.append(torch.nn.Linear(fan_in, fan_out))
        if i < spec.n_layers - 1:
            layers.append(torch.nn.ReLU())
    net = torch.nn.Sequential(*layers)
    state, pos = {}, 0
    for key, param in net.state_dict().items():
        state[key] = flat[pos : pos + param.numel()].reshape(param.shape).clone()
        pos += param.numel()
    net.load_state_dict(state)
    return net


def train_one(net: torch.nn.Sequential, x: torch.Tensor, y: torch.Tensor, amplitude: float, cfg: TrainConfig):
    """One party's local training: the same recipe as ``fusion.adapt.training.train`` for one model."""
    opt = torch.optim.Adam(net.parameters(), lr=cfg.lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, cfg.steps, eta_min=cfg.lr / 10) if cfg.decay else None
    for _ in range(cfg.steps):
        opt.zero_grad(set_to_none=True)
        (((net(x) - y) ** 2).mean() / amplitude**2).backward()
        opt.step()
        if sched is not None:
            sched.step()
    return torch.cat([p.detach().reshape(-1) for p in net.state_dict().values()])


def run_sequential(args) -> dict:
    start, cpu = time.perf_counter(), time.process_time()  # data generation included, as in the other peers
    scenario, desc, x, y, inits = workload(args.parties, args.seed, args.hidden)
    cfg = TrainConfig(steps=args.steps)
    out = [
        train_one(
            sequential_model(inits[i], scenario.spec),
            torch.from_numpy(x[i]),
            torch.from_numpy(y[i]),
            float(desc[i, 0]),
            cfg,
        )
        for i in range(args.parties)
    ]
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu
    return {"seconds": wall, "cpu_seconds": cpu, "params": torch.stack(out).numpy()}


def run_batched(args) -> dict:
    from actors.party_shard import PartyShard

    scenario = workload(1, args.seed, args.hidden)[0]
    shard = PartyShard(
        0, scenario, args.seed, np.arange(args.parties), [], TrainConfig(steps=args.steps), TrainConfig(steps=0)
    )
    start, cpu = time.perf_counter(), time.process_time()
    res = shard.pretrain()
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu
    return {"seconds": wall, "cpu_seconds": cpu, "params": res["params"]}


def run_ray(args) -> dict:
    import ray

    from actors.party_shard import PartyShardActor

    scenario = workload(1, args.seed, args.hidden)[0]
    t0 = time.perf_counter()
    ray.init(address="local", num_cpus=args.ray_actors, include_dashboard=False, log_to_driver=False)
    try:
        ids = np.array_split(np.arange(args.parties), args.ray_actors)
        cfg = TrainConfig(steps=args.steps)
        actors = [
            PartyShardActor.options(num_cpus=1).remote(k, scenario, args.seed, part, [], cfg, TrainConfig(steps=0))
            for k, part in enumerate(ids)
        ]
        ray.get([a.info.remote() for a in actors])
        t1 = time.perf_counter()
        results = ray.get([a.pretrain.remote() for a in actors])
        t2 = time.perf_counter()
    finally:
        ray.shutdown()
    return {
        "seconds": t2 - t1,
        "startup_seconds": t1 - t0,
        "params": np.concatenate([r["params"] for r in results]),
    }


def run_flower_here(args) -> dict:
    """Inside the flwr venv: Flower's simulation engine, one ClientApp per party, one FedAvg round."""
    from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
    from flwr.clientapp import ClientApp
    from flwr.serverapp import Grid, ServerApp
    from flwr.serverapp.strategy import FedAvg
    from flwr.simulation import run_simulation

    n, seed, steps, hidden = args.parties, args.seed, args.steps, args.hidden
    spans: dict[str, float] = {}

    client = ClientApp()

    @client.train()
    def train(msg: Message, context: Context) -> Message:
        t_start = time.time()
        pid = int(context.node_config["partition-id"])
        scenario = build(SCENARIO, make_options(SCENARIO, {"hidden": (hidden,)}))
        desc = scenario.descriptor(party_rng(seed, pid, Stream.DESCRIPTOR)).astype(np.float32)
        x, y = scenario.train_data(desc, party_rng(seed, pid, Stream.DATA))
        net = sequential_model(scenario.init_params(party_torch_generator(seed, pid, Stream.INIT)), scenario.spec)
        train_one(net, torch.from_numpy(x), torch.from_numpy(y), float(desc[0]), TrainConfig(steps=steps))
        metrics = MetricRecord({"num-examples": len(x), "t0": t_start, "t1": time.time()})
        content = RecordDict({"arrays": ArrayRecord(net.state_dict()), "metrics": metrics})
        return Message(content=content, reply_to=msg)

    def span(records: list[RecordDict], key: str) -> MetricRecord:
        t0 = min(r["metrics"]["t0"] for r in records)
        t1 = max(r["metrics"]["t1"] for r in records)
        spans.update(t0=t0, t1=t1, clients=len(records))
        return MetricRecord({"span": t1 - t0})

    server = ServerApp()

    @server.main()
    def main(grid: Grid, context: Context) -> None:
        scenario = build(SCENARIO, make_options(SCENARIO, {"hidden": (hidden,)}))
        initial = sequential_model(init_params(scenario.spec, torch.Generator().manual_seed(0)), scenario.spec)
        strategy = FedAvg(
            fraction_train=1.0,
            fraction_evaluate=0.0,
            min_train_nodes=n,
            min_available_nodes=n,
            train_metrics_aggr_fn=span,
        )
        strategy.start(grid=grid, initial_arrays=ArrayRecord(initial.state_dict()), num_rounds=1)

    backend = {
        "client_resources": {"num_cpus": 1, "num_gpus": 0.0},
        "init_args": {"address": "local", "num_cpus": args.flower_cpus, "log_to_driver": False},
    }
    start = time.perf_counter()
    run_simulation(server_app=server, client_app=client, num_supernodes=n, backend_config=backend)
    total = time.perf_counter() - start
    if spans.get("clients") != n:
        raise RuntimeError(f"Flower trained {spans.get('clients')} of {n} clients")
    return {"seconds": total, "fit_span_seconds": spans["t1"] - spans["t0"]}


def best_of(fn, args) -> dict:
    """Run ``fn(args)`` ``--repeat`` times and keep the fastest (the least disturbed on a shared machine)."""
    runs = [fn(args) for _ in range(args.repeat)]
    best = min(runs, key=lambda r: r["seconds"])
    if args.repeat > 1:
        best = {**best, "all_seconds": [round(r["seconds"], 3) for r in runs]}
    return best


def run_flower(args) -> dict:
    """Run the Flower peer in the flwr interpreter; returns its JSON line or {'skipped': reason}."""
    python = args.flower_python
    if not python or not Path(python).exists():
        return {"skipped": f"no Flower interpreter at {python!r} (pip install 'fusion-cluster[bench]' in a venv)"}
    check = subprocess.run([python, "-c", "import flwr"], capture_output=True, text=True)
    if check.returncode != 0:
        return {"skipped": f"{python} cannot import flwr"}
    cmd = [python, "-m", "bench.vs_flower", "--peer-only", "flower", *forwarded(args)]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=args.flower_timeout)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines:
        return {"skipped": f"Flower run failed (exit {proc.returncode}): {proc.stderr.strip()[-800:]}"}
    return json.loads(lines[-1])


def same_work(args, a: np.ndarray, b: np.ndarray) -> dict:
    """How far the batched and the sequential training ended apart, in parameters and in function.

    Exact agreement is not expected over many steps: the two compute the same sums in different orders, and
    Adam turns a gradient of 1e-12 versus 0 (a nearly dead unit) into a full step, so single weights drift apart.
    """
    from fusion.models.params import forward

    scenario, desc, _, _, _ = workload(args.parties, args.seed, args.hidden)
    x = torch.linspace(-10, 10, 200)[:, None]
    with torch.no_grad():
        fa, fb = (forward(torch.as_tensor(p), scenario.spec, x) for p in (a, b))
    nrmse = ((fa - fb) ** 2).mean(dim=(1, 2)).sqrt() / torch.as_tensor(desc[:, 0])
    return {
        "max_param_diff": float(np.abs(a - b).max()),
        "median_output_nrmse": float(nrmse.median()),
        "max_output_nrmse": float(nrmse.max()),
    }


def forwarded(args) -> list[str]:
    return [
        f"--parties={args.parties}",
        f"--steps={args.steps}",
        f"--seed={args.seed}",
        f"--hidden={args.hidden}",
        f"--flower-cpus={args.flower_cpus}",
    ]


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--parties", type=int, default=100)
    p.add_argument("--steps", type=int, default=500)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--hidden", type=int, default=100)
    p.add_argument("--threads", type=int, default=1, help="torch threads of the in-process peers")
    p.add_argument("--ray-actors", type=int, default=2, help="PartyShard actors for the 'ray' peer (0: skip)")
    p.add_argument("--flower-python", default="/work/venv-flwr/bin/python", help="interpreter with flwr ('' to skip)")
    p.add_argument("--flower-cpus", type=int, default=os.cpu_count() or 1, help="CPUs of Flower's Ray")
    p.add_argument("--flower-timeout", type=float, default=3600)
    p.add_argument("--repeat", type=int, default=1, help="runs of each non-Flower peer; the fastest is kept")
    p.add_argument("--skip", default="", help="comma list of peers to skip: batched,ray,sequential,flower")
    p.add_argument("--peer-only", choices=["flower"], help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.parties < 1 or args.steps < 1 or args.ray_actors < 0 or args.repeat < 1:
        p.error("--parties, --steps and --repeat must be >= 1, --ray-actors >= 0")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    if args.peer_only == "flower":
        print(json.dumps(run_flower_here(args)))
        return 0
    torch.set_num_threads(args.threads)
    skip = {s for s in args.skip.split(",") if s}
    print(
        f"workload: {args.parties} sine parties, [1-{args.hidden}-1] MLP, 100 points each, {args.steps} full-batch "
        f"Adam steps; machine: {os.cpu_count()} cores (shared: timings are noisy)",
        flush=True,
    )
    res: dict[str, dict] = {}
    if "batched" not in skip:
        res["batched"] = best_of(run_batched, args)
        b = res["batched"]
        print(
            f"fusion-cluster batched (1 process, {args.threads} thread): {b['seconds']:.2f} s "
            f"({b['cpu_seconds']:.2f} s CPU)",
            flush=True,
        )
    if "ray" not in skip and args.ray_actors:
        res["ray"] = best_of(run_ray, args)
        r = res["ray"]
        print(
            f"fusion-cluster on Ray ({args.ray_actors} PartyShard actors): {r['seconds']:.2f} s "
            f"(+{r['startup_seconds']:.2f} s Ray and actor start-up)",
            flush=True,
        )
    if "sequential" not in skip:
        res["sequential"] = best_of(run_sequential, args)
        q = res["sequential"]
        print(
            f"PFLlib-style sequential loop ({args.threads} thread): {q['seconds']:.2f} s "
            f"({q['cpu_seconds']:.2f} s CPU)",
            flush=True,
        )
    if "flower" not in skip:
        res["flower"] = run_flower(args)
        f = res["flower"]
        if "skipped" in f:
            print(f"Flower: skipped: {f['skipped']}", flush=True)
        else:
            print(
                f"Flower simulation ({args.flower_cpus} CPUs, 1 per client): {f['seconds']:.2f} s total, "
                f"{f['fit_span_seconds']:.2f} s from first to last client fit",
                flush=True,
            )
    line: dict = {"parties": args.parties, "steps": args.steps, "hidden": args.hidden, "threads": args.threads}
    for name, r in res.items():
        line.update({f"{name}_{k}": round(v, 3) for k, v in r.items() if isinstance(v, float)})
        if "all_seconds" in r:
            line[f"{name}_all_seconds"] = r["all_seconds"]
        if "skipped" in r:
            line[f"{name}_skipped"] = r["skipped"]
    if "batched" in res and "sequential" in res:
        same = same_work(args, res["batched"]["params"], res["sequential"]["params"])
        line.update(same)
        print(
            f"same work: max |params(batched) - params(sequential)| = {same['max_param_diff']:.2e}; outputs on "
            f"x in [-10, 10] differ by {same['median_output_nrmse']:.2e} (median) / {same['max_output_nrmse']:.2e} "
            "(max) RMSE/amplitude",
            flush=True,
        )
    ours = {k: res[k]["seconds"] for k in ("batched", "ray") if k in res}
    peers = {}
    if "sequential" in res:
        peers["sequential"] = res["sequential"]["seconds"]
    if "seconds" in res.get("flower", {}):
        peers["flower"] = res["flower"]["seconds"]
        peers["flower_fit_span"] = res["flower"]["fit_span_seconds"]
    for peer, peer_secs in peers.items():
        for name, secs in ours.items():
            ratio = peer_secs / secs
            line[f"ratio_{peer}_over_{name}"] = round(ratio, 2)
            print(f"{peer} / fusion-cluster {name}: {ratio:.1f}x")
    if "batched" in res and "sequential" in res:
        ratio = res["sequential"]["cpu_seconds"] / res["batched"]["cpu_seconds"]
        line["ratio_sequential_over_batched_cpu"] = round(ratio, 2)
        print(f"sequential / fusion-cluster batched, CPU time (less sensitive to other load): {ratio:.1f}x")
    print(json.dumps(line))
    return 0


if __name__ == "__main__":
    sys.exit(main())
