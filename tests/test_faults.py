"""Fault injection (fusion/faults.py): who is hit and what they upload, drawn from (seed, party id); no Ray."""

from __future__ import annotations

import numpy as np
import pytest

from fusion.faults import FaultConfig, corrupt_parties, training_targets, uploads
from fusion.layout import ModelLayout, party_widths
from fusion.models.params import init_params
from fusion.models.spec import MLPSpec
from fusion.models.widths import embed
from fusion.streams import Stream, party_torch_generator

WIDE = MLPSpec((1, 8, 1))


def test_which_parties_are_corrupt_depends_on_each_party_alone():
    cfg = FaultConfig(corrupt_share=0.3)
    ids = np.arange(200)

    hit = corrupt_parties(cfg, 4, ids)

    assert 0.2 < hit.mean() < 0.4
    assert (corrupt_parties(cfg, 4, ids[::-1]) == hit[::-1]).all()
    assert not corrupt_parties(FaultConfig(), 4, ids).any()


@pytest.mark.parametrize(("kind", "scale"), [("scaled", 100.0), ("flipped", -1.0)])
def test_scaled_and_flipped_garbage_transforms_the_trained_weights(kind, scale):
    params = np.random.default_rng(0).normal(size=(4, WIDE.n_params)).astype(np.float32)
    corrupt = np.array([False, True, False, True])

    out = uploads(
        FaultConfig(corrupt_share=0.5, corrupt_kind=kind), 0, np.arange(4), params, corrupt, ModelLayout(WIDE), None
    )

    np.testing.assert_array_equal(out[corrupt], params[corrupt] * scale)
    np.testing.assert_array_equal(out[~corrupt], params[~corrupt])


def test_random_garbage_is_an_untrained_model_of_the_partys_own_width_and_nan_parties_upload_nan():
    layout = ModelLayout(WIDE, widths=(4, 8))
    ids = np.arange(10, 16)
    params = np.ones((6, WIDE.n_params), np.float32)
    corrupt = np.array([True, False, True, False, True, False])
    init = init_params  # the plain init: init(spec, generator)

    out = uploads(FaultConfig(nan_parties=(11,), corrupt_share=0.5), 0, ids, params, corrupt, layout, init)

    for row, pid, w in zip(np.flatnonzero(corrupt), ids[corrupt], party_widths(0, ids[corrupt], (4, 8))):
        own = MLPSpec((1, int(w), 1))
        want = embed(init(own, party_torch_generator(0, pid, Stream.FAULTS)).numpy()[None], own, 8)[0]
        np.testing.assert_array_equal(out[row], want)
    assert np.isnan(out[1]).all() and (out[[3, 5]] == 1).all()


def test_shuffled_targets_permute_only_the_real_rows_of_the_corrupt_parties():
    y = np.arange(2 * 6, dtype=np.float32).reshape(2, 6, 1)
    real = np.array([[True] * 4 + [False] * 2, [True] * 6])
    cfg = FaultConfig(corrupt_share=0.5, corrupt_kind="shuffled")

    out = training_targets(cfg, 1, np.array([0, 1]), y, real, np.array([True, False]))

    assert sorted(out[0, :4, 0].tolist()) == y[0, :4, 0].tolist() and (out[0, :4] != y[0, :4]).any()
    assert (out[0, 4:] == y[0, 4:]).all()
    assert (out[1] == y[1]).all()
    assert training_targets(FaultConfig(), 1, np.array([0, 1]), y, real, np.array([True, False])) is y
