"""``actors.assign.parallel_solvers``: the chunked Ray tasks give exactly what the serial solvers give."""

from __future__ import annotations

import numpy as np

from fusion.matching.alignment import solve_many_serial
from fusion.matching.pfnm import solve_rect_serial


def test_parallel_solvers_equal_the_serial_ones(ray_session):
    from actors.assign import parallel_solvers

    rng = np.random.default_rng(0)
    units = rng.normal(size=(9, 6, 3))
    shared, per_model = rng.normal(size=(6, 3)), rng.normal(size=(9, 6, 3))
    costs = [rng.normal(size=(rng.integers(2, 6), 7)) for _ in range(9)]
    for chunks in (1, 3):  # 1: in process; 3: Ray tasks over slices
        solve_many, solve_rect = parallel_solvers(chunks, min_chunk=2)
        np.testing.assert_array_equal(solve_many(units, shared), solve_many_serial(units, shared))
        np.testing.assert_array_equal(solve_many(units, per_model), solve_many_serial(units, per_model))
        for got, want in zip(solve_rect(costs), solve_rect_serial(costs), strict=True):
            np.testing.assert_array_equal(got, want)
