"""Assignment problems solved in parallel as Ray tasks over chunks of models."""

from __future__ import annotations

import time

import numpy as np
import ray

from actors import metrics
from fusion.matching import SolveMany, solve_many_serial
from fusion.pfnm import SolveRect, solve_rect_serial


# Zero logical CPUs: the party shards hold the cluster's CPUs for their lifetime but sit idle while
# the fusion actor works, and the caller bounds the number of chunks by the CPU count.
@ray.remote(num_cpus=0)
def _solve_chunk(units: np.ndarray, template: np.ndarray, lo: int, hi: int, run: str = "") -> np.ndarray:
    start = time.perf_counter()
    tmpl = template if template.ndim == 2 else template[lo:hi]
    perms = solve_many_serial(units[lo:hi], tmpl)
    metrics.assignment_seconds(run, time.perf_counter() - start)
    return perms


def parallel_solver(n_chunks: int, min_chunk: int = 16, run: str = "") -> SolveMany:
    """A ``solve_many`` that puts the units once and solves ~``n_chunks`` slices of them as tasks."""

    def solve_many(units: np.ndarray, template: np.ndarray) -> np.ndarray:
        n = len(units)
        chunks = max(1, min(n_chunks, n // min_chunk))
        if chunks == 1:
            start = time.perf_counter()
            perms = solve_many_serial(units, template)
            metrics.assignment_seconds(run, time.perf_counter() - start)
            return perms
        units_ref, template_ref = ray.put(units), ray.put(template)
        bounds = np.linspace(0, n, chunks + 1).astype(int)
        pairs = zip(bounds[:-1], bounds[1:])
        refs = [_solve_chunk.remote(units_ref, template_ref, int(a), int(b), run) for a, b in pairs]
        return np.concatenate(ray.get(refs))

    return solve_many


@ray.remote(num_cpus=0)
def _solve_rect_chunk(costs: list[np.ndarray], run: str = "") -> list[np.ndarray]:
    start = time.perf_counter()
    cols = solve_rect_serial(costs)
    metrics.assignment_seconds(run, time.perf_counter() - start)
    return cols


def parallel_solve_rect(n_chunks: int, min_chunk: int = 16, run: str = "") -> SolveRect:
    """A ``solve_rect`` that solves ~``n_chunks`` slices of the list of independent cost matrices as tasks."""

    def solve_rect(costs: list[np.ndarray]) -> list[np.ndarray]:
        n = len(costs)
        chunks = max(1, min(n_chunks, n // min_chunk))
        if chunks == 1:
            start = time.perf_counter()
            cols = solve_rect_serial(costs)
            metrics.assignment_seconds(run, time.perf_counter() - start)
            return cols
        bounds = np.linspace(0, n, chunks + 1).astype(int)
        refs = [_solve_rect_chunk.remote(costs[a:b], run) for a, b in zip(bounds[:-1], bounds[1:])]
        return [cols for part in ray.get(refs) for cols in part]

    return solve_rect
