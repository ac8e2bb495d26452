"""Assignment problems solved in parallel as Ray tasks over chunks of models.

:func:`parallel_solvers` gives both solver kinds the fusion strategies take (:data:`fusion.matching.SolveMany`
for square template assignments, :data:`fusion.matching.pfnm.SolveRect` for nonparametric matching) on one code path:
the problems are put in the object store once and ~``n_chunks`` slices of them are solved as tasks.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np
import ray

from actors import metrics
from fusion.matching.alignment import SolveMany, solve_many_serial
from fusion.matching.pfnm import SolveRect, solve_rect_serial

SliceSolve = Callable[[Any, int, int], Any]  # (problems, lo, hi) -> solutions of problems lo..hi-1


def _many_slice(problems: tuple[np.ndarray, np.ndarray], lo: int, hi: int) -> np.ndarray:
    units, template = problems  # template (units, features) shared, or (n, units, features) per model
    return solve_many_serial(units[lo:hi], template if template.ndim == 2 else template[lo:hi])


def _rect_slice(costs: list[np.ndarray], lo: int, hi: int) -> list[np.ndarray]:
    return solve_rect_serial(costs[lo:hi])


def _timed(solve: SliceSolve, problems: Any, lo: int, hi: int, run: str) -> Any:
    start = time.perf_counter()
    out = solve(problems, lo, hi)
    metrics.assignment_seconds(run, time.perf_counter() - start)
    return out


# Zero logical CPUs: the party shards hold the cluster's CPUs for their lifetime but sit idle while
# the fusion actor works, and the caller bounds the number of chunks by the CPU count.
_solve_chunk = ray.remote(num_cpus=0)(_timed)


def _chunked(solve: SliceSolve, join: Callable[[list], Any], n_chunks: int, min_chunk: int, run: str):
    def solve_all(problems: Any, n: int) -> Any:
        chunks = max(1, min(n_chunks, n // min_chunk))
        if chunks == 1:
            return _timed(solve, problems, 0, n, run)
        ref = ray.put(problems)
        bounds = np.linspace(0, n, chunks + 1).astype(int)
        return join(ray.get([_solve_chunk.remote(solve, ref, int(a), int(b), run) for a, b in zip(bounds, bounds[1:])]))

    return solve_all


# Problems per task at least: a task's share must pay for its worker's start (~0.8 CPU s and seconds of wall, the
# first time) and the put of the problems. 200 models of 100 units (~75 ms serial per pass): in process.
MIN_CHUNK = 128


def parallel_solvers(n_chunks: int, min_chunk: int = MIN_CHUNK, run: str = "") -> tuple[SolveMany, SolveRect]:
    """``(solve_many, solve_rect)`` that split their independent problems into ~``n_chunks`` Ray tasks of at least
    ``min_chunk`` problems (fewer problems: solved in process).

    >>> solve_many, solve_rect = parallel_solvers(2)  # doctest: +SKIP
    >>> perms = solve_many(units, template)            # (n, units) as fusion.matching.solve_many_serial
    """
    many = _chunked(_many_slice, np.concatenate, n_chunks, min_chunk, run)
    rect = _chunked(_rect_slice, lambda parts: [c for p in parts for c in p], n_chunks, min_chunk, run)
    return (lambda units, template: many((units, template), len(units))), (lambda costs: rect(costs, len(costs)))
