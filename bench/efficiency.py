"""How much of the machine's arithmetic the sine pretraining uses: one JSON line.

``pretrain_flops_per_s``: ``--parties`` [1-H-1] ReLU parties of ``sine`` (sine-domains, H = ``--hidden``, 100
private points each, their own data and inits from (seed, party id)) pretrained by a party shard's code
(``actors.party_shard.PartyShard.pretrain``, in this process) for ``--steps`` full-batch Adam steps, in calls of
``--chunk`` parties as a run makes them (its ``chunk_parties``). The work is counted by the formula of a dense
forward and backward pass, per party and step, with N points and H hidden units:

    layer 1 (N x H multiply-adds)   2 N H      ReLU                   N H
    layer 2 (N x H multiply-adds)   2 N H
    dL/dw2                          2 N H      dL/dh = g w2           N H
    ReLU slope                        N H      dL/dW1                 2 N H      dL/db1   N H
    total                          12 N H      (+ Adam: 10 flops per parameter, 10 (3 H + 1))

(N = H = 100: 120 kFLOP per party-step.) ``--path`` picks the training path of the ``[1-H-1]`` ReLU nets:
``kernel`` (the default where ``fusion._kernels`` is built: fused C forward and backward passes, the loss's
closed-form gradient, a one-pass Adam), ``torch`` (the torch passes, ``FUSION_KERNELS=0``: the sorted-kinks pass
``fusion.models.params._one_input_relu``, which does less arithmetic than the formula counts) or ``layered`` (the
general layer-by-layer backward pass every other architecture takes).

``sgemm_flops_per_s``: ``torch.mm`` of two 1024 x 1024 float32 matrices (2 * 1024^3 flops each), the best of
``--gemm-repeat`` timed products, in the same process with the same torch threads (``--threads``, default 1: a
party shard's). ``ratio`` = pretrain / sgemm. Times are process CPU seconds (the machine is shared; CPU time is
disturbed less than wall time); wall seconds are printed beside them.

    python -m bench.efficiency                       # 100 parties, 2000 steps, chunks of 25, 1 thread
    python -m bench.efficiency --path torch
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np
import torch

from actors.party_shard import PartyShard
from fusion.adapt.train_config import TrainConfig
from fusion.models import kernels, params
from scenarios import build, make_options

SCENARIO = "sine-domains"


def flops_per_party_step(points: int, hidden: int) -> int:
    """The dense forward + backward of a [1-H-1] net on ``points`` inputs, plus Adam (see the module docstring)."""
    return 12 * points * hidden + 10 * (3 * hidden + 1)


def sgemm(repeat: int) -> tuple[float, float]:
    """(flops per CPU second, per wall second) of the best of ``repeat`` 1024 x 1024 float32 products."""
    a, b = torch.rand(1024, 1024), torch.rand(1024, 1024)
    torch.mm(a, b)  # warm-up
    best_cpu = best_wall = float("inf")
    for _ in range(repeat):
        wall, cpu = time.perf_counter(), time.process_time()
        torch.mm(a, b)
        best_cpu = min(best_cpu, time.process_time() - cpu)
        best_wall = min(best_wall, time.perf_counter() - wall)
    flops = 2 * 1024**3
    return flops / best_cpu, flops / best_wall


def pretrain(args) -> tuple[float, float, int]:
    """(CPU seconds, wall seconds, points per party) of pretraining ``args.parties`` parties in chunks."""
    scenario = build(SCENARIO, make_options(SCENARIO, {"hidden": (args.hidden,)}))
    shard = PartyShard(
        0, scenario, args.seed, np.arange(args.parties), [], TrainConfig(steps=args.steps), TrainConfig(steps=0)
    )
    shard.pretrain(np.arange(min(2, args.parties)))  # warm-up: first calls, allocator
    wall, cpu = time.perf_counter(), time.process_time()
    for chunk in np.array_split(np.arange(args.parties), -(-args.parties // args.chunk)):
        shard.pretrain(chunk)
    points = scenario.options.point_range[1]
    return time.process_time() - cpu, time.perf_counter() - wall, points


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--parties", type=int, default=100)
    ap.add_argument("--steps", type=int, default=2000)
    ap.add_argument("--chunk", type=int, default=25, help="parties per pretrain call (a run's chunk_parties)")
    ap.add_argument("--hidden", type=int, default=100)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--gemm-repeat", type=int, default=20)
    ap.add_argument("--path", choices=("kernel", "torch", "layered"), default="kernel", help="the training path")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args.path != "kernel":
        os.environ["FUSION_KERNELS"] = "0"
    elif not kernels.available():
        sys.exit("fusion._kernels is not built here (pip install -e . with a C compiler); try --path torch")
    if args.path == "layered":
        params._one_input_relu = params._layered_loss_and_grad
    gemm_cpu, gemm_wall = sgemm(args.gemm_repeat)
    cpu, wall, points = pretrain(args)
    work = args.parties * args.steps * flops_per_party_step(points, args.hidden)
    gemm_cpu2, gemm_wall2 = sgemm(args.gemm_repeat)  # again after: the machine's load drifts
    gemm_cpu, gemm_wall = max(gemm_cpu, gemm_cpu2), max(gemm_wall, gemm_wall2)
    out = {
        "path": args.path,
        "parties": args.parties,
        "steps": args.steps,
        "chunk": args.chunk,
        "threads": args.threads,
        "flops": work,
        "pretrain_cpu_s": round(cpu, 3),
        "pretrain_wall_s": round(wall, 3),
        "pretrain_flops_per_s": round(work / cpu),
        "sgemm_flops_per_s": round(gemm_cpu),
        "ratio": round(work / cpu / gemm_cpu, 4),
        "pretrain_flops_per_wall_s": round(work / wall),
        "sgemm_flops_per_wall_s": round(gemm_wall),
    }
    print(json.dumps(out))


if __name__ == "__main__":
    main()
