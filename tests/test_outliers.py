"""Garbage models are found by their functions; a clean set of related models loses nobody."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fusion.models.params import init_params, layers
from fusion.models.spec import MLPSpec
from fusion.screening.outliers import OutlierConfig, function_outliers

SPEC = MLPSpec((1, 16, 1))
PROBE = np.linspace(-3, 3, 64, dtype=np.float32)[:, None]


def related_models(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``n`` nets computing a · f(x) for one random f and amplitudes a in [1, 3] (the descriptor), each with its
    own hidden-unit order and a little noise: related tasks, independently stored."""
    gen = torch.Generator().manual_seed(seed)
    base = init_params(SPEC, gen)
    amps = torch.linspace(1, 3, n)
    models = []
    for a in amps:
        m = base.clone().unsqueeze(0)
        (w1, b1), (w2, b2) = layers(m, SPEC)
        w2.mul_(a)
        b2.mul_(a)
        perm = torch.randperm(16, generator=gen)
        w1.copy_(w1[:, perm]), b1.copy_(b1[:, perm]), w2.copy_(w2[:, :, perm])
        models.append(m[0] + 0.002 * torch.randn(SPEC.n_params, generator=gen))
    return torch.stack(models).numpy(), amps.numpy()[:, None]


def test_a_clean_set_of_related_models_loses_nobody():
    models, desc = related_models(60)
    bad, score = function_outliers(models, SPEC, PROBE, desc)
    assert not bad.any()
    assert score.max() < 0.05


@pytest.mark.parametrize("kind", ["random", "scaled", "flipped"])
def test_garbage_models_are_found_and_only_they(kind):
    models, desc = related_models(60)
    corrupt = np.zeros(60, bool)
    corrupt[[3, 17, 30, 44, 58, 59]] = True
    if kind == "scaled":
        models[corrupt] *= 100
    elif kind == "flipped":
        models[corrupt] *= -1
    else:
        gen = torch.Generator().manual_seed(7)
        models[corrupt] = torch.stack([init_params(SPEC, gen) for _ in range(corrupt.sum())]).numpy()
    bad, _ = function_outliers(models, SPEC, PROBE, desc)
    np.testing.assert_array_equal(bad, corrupt)


def test_class_probability_outliers_for_classifiers():
    spec = MLPSpec((2, 8, 3))
    gen = torch.Generator().manual_seed(1)
    base = init_params(spec, gen) * 4
    models = np.stack([(base + 0.01 * torch.randn(spec.n_params, generator=gen)).numpy() for _ in range(30)])
    models[5] = -models[5]
    probe = np.random.default_rng(0).normal(size=(50, 2)).astype(np.float32)
    bad, _ = function_outliers(models, spec, probe, np.zeros((30, 1)), outputs="logits")
    assert bad.tolist() == [i == 5 for i in range(30)]


def test_disabled_detection_flags_nothing():
    models, desc = related_models(20)
    models[0] *= 100
    bad, _ = function_outliers(models, SPEC, PROBE, desc, cfg=OutlierConfig(enabled=False))
    assert not bad.any()


def test_no_basis_no_flags_when_neighbours_disagree():
    gen = torch.Generator().manual_seed(2)
    models = torch.stack([init_params(SPEC, gen) for _ in range(12)]).numpy()  # unrelated functions
    models[0] *= 100
    bad, score = function_outliers(models, SPEC, PROBE, np.arange(12.0)[:, None])
    assert np.median(score) > OutlierConfig().floor
    assert not bad.any()
