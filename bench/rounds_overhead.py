"""Engine overhead of one federated round: FedAvg with ``local_steps = 0`` on Ray, 100 sampled parties, 2 shards.

    python -m bench.rounds_overhead --parties 100 --shards 2 --rounds 50

With no local steps a round is only the engine: sampling, the server's broadcast (one object), one ``fed_round``
call per shard (a LocalBatch from the cached data, ``shard_round``, the uploads stacked), the server's
aggregation in party-id order and the driver's bookkeeping (metrics, progress). A warm-up run draws the shards'
data first. Prints seconds per round (mean over the timed run, and the median gap between rounds) and one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--parties", type=int, default=100, help="training parties, all sampled every round")
    p.add_argument("--shards", type=int, default=2)
    p.add_argument("--rounds", type=int, default=50)
    p.add_argument("--scenario", default="sine")
    args = p.parse_args(argv)
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")

    import ray

    from actors.federated_server import FederatedServerActor, RoundsJob
    from actors.party_shard import PartyShardActor
    from cluster.checkpoint import Checkpoint
    from cluster.rounds import RoundsEngine
    from fusion.adapt.train_config import FinetuneConfig, TrainConfig
    from fusion.federated import ALGORITHMS, FederatedConfig
    from scenarios import build, make_options

    scenario = build(args.scenario, make_options(args.scenario, {}))
    cfg = FederatedConfig(
        rounds=args.rounds, clients_per_round=1.0, local_steps=0, local_epochs=0, checkpoint_every=args.rounds
    )
    ray.init(
        address="local",
        num_cpus=2,
        include_dashboard=False,
        log_to_driver=False,
        logging_level="ERROR",
        namespace="bench",
    )
    try:
        slices = np.array_split(np.arange(args.parties), args.shards)
        shards = [
            PartyShardActor.options(num_cpus=2 / args.shards).remote(
                i, scenario, 0, ids, [], TrainConfig(steps=1), FinetuneConfig(steps=1)
            )
            for i, ids in enumerate(slices)
        ]
        server = FederatedServerActor.remote("bench")
        ray.get([s.info.remote() for s in shards])
        marks: list[float] = []
        with tempfile.TemporaryDirectory() as tmp:
            for name, rounds in (("warm-up", 3), ("timed", args.rounds)):
                ckpt = Checkpoint(Path(tmp) / name, scenario, 0, args.parties)
                ckpt.dir.mkdir(parents=True)
                marks.clear()
                engine = RoundsEngine(
                    shards,
                    slices,
                    server,
                    scenario,
                    0,
                    ckpt,
                    "bench",
                    lambda _: None,
                    lambda r: marks.append(time.perf_counter()),
                )
                job = RoundsJob("fedavg", ALGORITHMS["fedavg"], FederatedConfig(**{**cfg.__dict__, "rounds": rounds}))
                start = time.perf_counter()
                engine.train(job, ["fedavg"])
                total = time.perf_counter() - start
    finally:
        ray.shutdown()
    per_round = total / args.rounds
    gap = float(np.median(np.diff(marks)))
    text = (
        f"rounds engine overhead ({args.scenario}, {scenario.spec.n_params} params, {args.parties} sampled parties, "
        f"{args.shards} shards, local_steps = 0, {args.rounds} rounds):\n"
        f"  {1000 * per_round:.1f} ms per round (whole run incl. start and final save), "
        f"{1000 * gap:.1f} ms median between rounds; goal < 50 ms"
    )
    print(text)
    print(
        json.dumps(
            {
                "bench": "rounds_overhead",
                "ms_per_round": 1000 * per_round,
                "ms_median_gap": 1000 * gap,
                "parties": args.parties,
                "shards": args.shards,
                "rounds": args.rounds,
            }
        )
    )


if __name__ == "__main__":
    main()
