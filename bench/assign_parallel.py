"""Parallel efficiency of the assignment stage: the per-model hidden-unit assignments solved as Ray tasks.

    python -m bench.assign_parallel --models 1000 --hidden 100 --repeats 5

The problems are the ones the fusion actor solves in one alignment iteration: N models' units
(N, hidden, features) against a template. Each model is the template's units permuted and perturbed,
drawn from a fixed seed. Times ``actors.assign.parallel_solvers`` with 1 chunk (in process) and with one
chunk per core (Ray tasks), best of ``--repeats``; efficiency = T1 / (cores x Tp). Ends with one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np


def problems(n_models: int, hidden: int, features: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    template = rng.standard_normal((hidden, features)).astype(np.float32)
    perms = np.argsort(rng.random((n_models, hidden)), axis=1)
    noise = 0.5 * rng.standard_normal((n_models, hidden, features)).astype(np.float32)
    return template[perms] + noise, template


def best_of(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", type=int, default=1000)
    p.add_argument("--hidden", type=int, default=100)
    p.add_argument("--features", type=int, default=3, help="per-unit features (sine [1-h-1]: w, b, v = 3)")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--cores", type=int, default=os.cpu_count() or 1)
    args = p.parse_args(argv)

    import ray

    from actors.assign import parallel_solvers

    units, template = problems(args.models, args.hidden, args.features, seed=0)
    ray.init(address="local", num_cpus=args.cores, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    try:
        serial, parallel = parallel_solvers(1)[0], parallel_solvers(args.cores, min_chunk=1)[0]
        parallel(units[: 2 * args.cores], template)  # start the workers before timing
        expected = serial(units, template)
        if not np.array_equal(parallel(units, template), expected):
            raise SystemExit("the parallel solver disagrees with the serial one")
        t1 = best_of(lambda: serial(units, template), args.repeats)
        tp = best_of(lambda: parallel(units, template), args.repeats)
    finally:
        ray.shutdown()
    eff = t1 / (args.cores * tp)
    print(f"{args.models} models x {args.hidden} units: 1 core {t1:.3f}s, {args.cores} cores {tp:.3f}s, ", end="")
    print(f"speed-up {t1 / tp:.2f}x, parallel efficiency {100 * eff:.0f}%")
    figures = {"models": args.models, "hidden": args.hidden, "cores": args.cores, "t1_s": round(t1, 4)}
    figures |= {"tp_s": round(tp, 4), "speedup": round(t1 / tp, 3), "efficiency": round(eff, 3)}
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
