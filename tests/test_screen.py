"""Screening (fusion/screen.py): which pretrained models enter fusion, with typed records of the others; no Ray."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fusion.layout import ModelLayout
from fusion.models.params import init_params
from fusion.models.probe import probe_outputs
from fusion.models.spec import MLPSpec, spec_for_family
from fusion.screening.outliers import OutlierConfig
from fusion.screening.screen import Quarantined, Reason, TooFewModels, function_values, screen

SPEC = MLPSpec((1, 8, 1))
PROBE = np.linspace(-2, 2, 16, dtype=np.float32)[:, None]


def _similar(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``n`` near-copies of one model (small noise) and descriptors (n, 2) in [0, 1)."""
    base = init_params(SPEC, torch.Generator().manual_seed(seed)).numpy()
    rng = np.random.default_rng(seed)
    models = (base + 0.001 * rng.normal(size=(n, SPEC.n_params))).astype(np.float32)
    return models, rng.uniform(size=(n, 2))


def test_non_finite_models_are_quarantined_with_a_typed_reason():
    models, desc = _similar(5)
    models[[1, 3], 0] = [np.nan, np.inf]

    out = screen(np.arange(10, 15), models, desc, ModelLayout(SPEC), seed=0)

    assert out.kept.tolist() == [0, 2, 4]
    assert out.quarantined == (Quarantined(11, Reason.NON_FINITE), Quarantined(13, Reason.NON_FINITE))
    assert [str(q) for q in out.quarantined] == ["non-finite parameters"] * 2


def test_fewer_than_two_finite_models_is_an_error_naming_the_count():
    models, desc = _similar(3)
    models[:2] = np.nan

    with pytest.raises(TooFewModels, match="only 1 of 3 pretrained models are finite"):
        screen(np.arange(3), models, desc, ModelLayout(SPEC), seed=0)


def test_function_space_outliers_are_quarantined_with_their_discrepancy():
    models, desc = _similar(12)
    models[[4, 9]] *= 100  # garbage: the same weights scaled

    out = screen(np.arange(12), models, desc, ModelLayout(SPEC), 0, PROBE, "values", OutlierConfig(neighbours=5))

    assert out.kept.tolist() == [i for i in range(12) if i not in (4, 9)]
    assert [(q.party_id, q.reason, q.neighbours) for q in out.quarantined] == [
        (4, Reason.OUTLIER, 5),
        (9, Reason.OUTLIER, 5),
    ]
    assert all(q.discrepancy > 100 for q in out.quarantined)
    assert str(out.quarantined[0]).startswith("function-space outlier (discrepancy ")
    assert str(out.quarantined[0]).endswith(" from its 5 nearest tasks)")


def test_without_probe_inputs_or_with_screening_off_only_non_finite_models_are_left_out():
    models, desc = _similar(12)
    models[4] *= 100

    no_probe = screen(np.arange(12), models, desc, ModelLayout(SPEC), 0)
    off = screen(np.arange(12), models, desc, ModelLayout(SPEC), 0, PROBE, "values", OutlierConfig(enabled=False))

    assert len(no_probe.kept) == len(off.kept) == 12


def test_screening_never_leaves_fewer_than_two_models():
    models, desc = _similar(3)
    models[1:] = 3e38  # finite weights whose outputs overflow: every discrepancy is NaN, every model suspect

    out = screen(np.arange(3), models, desc, ModelLayout(SPEC), 0, PROBE, "values", OutlierConfig(neighbours=2))

    assert out.kept.tolist() == [0, 1, 2] and out.quarantined == ()


def test_models_of_mixed_families_are_evaluated_each_by_its_own_family():
    mlp8, mlp16 = spec_for_family("mlp-8", 64, 10), spec_for_family("mlp-16", 64, 10)
    layout = ModelLayout(mlp16, families=(mlp8, mlp16))
    gen = torch.Generator().manual_seed(0)
    small = torch.stack([init_params(mlp8, gen) for _ in range(3)]).numpy()
    large = torch.stack([init_params(mlp16, gen) for _ in range(2)]).numpy()
    rows = np.concatenate([layout.pack(small, mlp8), layout.pack(large, mlp16)])
    probe = np.random.default_rng(0).uniform(size=(5, 64)).astype(np.float32)

    funcs = function_values(rows, [(np.arange(3), mlp8), (np.arange(3, 5), mlp16)], probe, "logits")

    probs = lambda m, spec: torch.softmax(probe_outputs(m, spec, probe).double(), -1).numpy()  # noqa: E731
    np.testing.assert_array_equal(funcs[:3], probs(small, mlp8))
    np.testing.assert_array_equal(funcs[3:], probs(large, mlp16))
