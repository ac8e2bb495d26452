"""The population layout (fusion/layout.py): groups, packing and target families of every kind of run, no Ray."""

from __future__ import annotations

import numpy as np
import pytest

from fusion.layout import LayoutKind, ModelLayout, party_families, party_widths
from fusion.models.spec import MLPSpec, spec_for_family
from fusion.models.widths import own_width

WIDE = MLPSpec((1, 12, 1))
MLP8, MLP16 = spec_for_family("mlp-8", 64, 10), spec_for_family("mlp-16", 64, 10)
CNN = spec_for_family("cnn-s", 64, 10)


def _rows(groups):
    return {str(spec): rows.tolist() for rows, spec in groups}


def test_a_uniform_layout_is_one_group_whose_rows_are_the_models_themselves():
    layout = ModelLayout(WIDE)
    params = np.arange(3 * WIDE.n_params, dtype=np.float32).reshape(3, -1)

    groups, packed = layout.groups(0, np.array([5, 6, 7])), layout.pack(params, WIDE)

    assert layout.kind is LayoutKind.UNIFORM and layout.needs == ()
    assert _rows(groups) == {"1-12-1": [0, 1, 2]}
    assert (packed == params).all() and (layout.unpack(packed, WIDE) == params).all()
    assert layout.target_groups(0, np.arange(4))[0][1] == WIDE and layout.target_families == (WIDE,)


def test_a_target_equal_to_the_parties_own_model_is_the_uniform_layout():
    assert ModelLayout(WIDE, target=WIDE).kind is LayoutKind.UNIFORM


def test_mixed_widths_group_each_party_by_its_own_draw_whatever_the_other_parties():
    layout = ModelLayout(WIDE, widths=(4, 8, 12))
    ids = np.arange(60)

    whole = layout.groups(3, ids)
    half = layout.groups(3, ids[30:])

    widths = party_widths(3, ids, (4, 8, 12))
    for rows, spec in whole:
        assert (widths[rows] == spec.widths[1]).all()
    for rows, spec in half:
        assert (widths[30:][rows] == spec.widths[1]).all()
    assert layout.kind is LayoutKind.WIDTHS and layout.needs == ("mixed_widths",)
    assert (layout.widths_of(3, ids) == widths).all() and ModelLayout(WIDE).widths_of(3, ids) is None


def test_models_of_mixed_widths_travel_embedded_at_the_widest_and_unpack_to_their_own_width():
    layout = ModelLayout(WIDE, widths=(4, 12))
    narrow = MLPSpec((1, 4, 1))
    params = np.random.default_rng(0).normal(size=(2, narrow.n_params)).astype(np.float32)

    rows = layout.pack(params, narrow)

    assert rows.shape == (2, WIDE.n_params)
    assert (layout.unpack(rows, narrow) == params).all()
    assert not own_width(rows, WIDE, 12)[:, 4:12].any()  # the units beyond the party's width are zero
    assert layout.target_groups(0, np.arange(5))[0][1] == WIDE  # warm starts travel at the widest


def test_mixed_families_pack_zero_padded_and_novel_parties_receive_their_own_family():
    layout = ModelLayout(CNN, families=(MLP8, CNN))
    ids = np.arange(40)
    params = np.ones((3, MLP8.n_params), np.float32)

    packed = layout.pack(params, MLP8)
    groups, targets = layout.groups(1, ids), layout.target_groups(1, ids)

    assert packed.shape == (3, CNN.n_params) and not packed[:, MLP8.n_params :].any()
    assert (layout.unpack(packed, MLP8) == params).all()
    fam = party_families(1, ids, 2)
    assert _rows(groups) == {str(MLP8): np.flatnonzero(fam == 0).tolist(), str(CNN): np.flatnonzero(fam == 1).tolist()}
    assert _rows(targets) == _rows(groups) and layout.target_families == (MLP8, CNN)
    assert layout.kind is LayoutKind.FAMILIES and layout.needs == ("mixed_families",)


def test_a_target_family_is_received_by_every_novel_party():
    among = ModelLayout(CNN, target=MLP8, families=(MLP8, CNN))
    outside = ModelLayout(CNN, target=MLP16, families=(MLP8, CNN))
    cross = ModelLayout(CNN, target=MLP8)

    for layout, target in ((among, MLP8), (outside, MLP16), (cross, MLP8)):
        assert _rows(layout.target_groups(0, np.arange(6))) == {str(target): list(range(6))}
        assert layout.target_families == (target,)
    assert among.needs == ("mixed_families",) and outside.needs == ("mixed_families", "cross_family")
    assert cross.kind is LayoutKind.CROSS and cross.needs == ("cross_family",)


@pytest.mark.parametrize(
    ("layout", "message"),
    [
        (dict(spec=WIDE, widths=(4, 12), families=(MLP8, MLP16)), "cannot be combined with widths"),
        (dict(spec=WIDE, widths=(4, 12), target=MLP8), "target_arch cannot be combined with widths"),
        (dict(spec=WIDE, widths=(4, 8)), "the widest net"),
    ],
)
def test_combinations_no_run_supports_are_refused(layout, message):
    with pytest.raises(ValueError, match=message):
        ModelLayout(**layout)


def test_stack_makes_each_architecture_once_as_one_batch_and_packs_it():
    layout = ModelLayout(WIDE, widths=(4, 12))
    ids = np.arange(10)
    calls = []

    def make(rows, spec):
        calls.append((len(rows), spec.widths[1]))
        return np.full((len(rows), spec.n_params), float(spec.widths[1]), np.float32)

    stack = layout.stack(7, ids, make)

    widths = party_widths(7, ids, (4, 12))
    assert sorted(calls) == sorted((int((widths == w).sum()), w) for w in (4, 12))
    for row, w in zip(stack, widths):
        assert (own_width(row[None], WIDE, w) == w).all()


def test_novel_parties_of_mixed_widths_get_models_made_at_their_own_width():
    layout = ModelLayout(WIDE, widths=(4, 12))
    ids = np.arange(20, 30)

    made = layout.novel(0, ids, WIDE, lambda rows, spec: np.ones((len(rows), spec.n_params)))
    plain = ModelLayout(WIDE).novel(0, ids, WIDE, lambda rows, spec: np.ones((len(rows), spec.n_params)))

    nonzero = (made != 0).sum(1)
    widths = party_widths(0, ids, (4, 12))
    assert (nonzero == np.array([3 * w + 1 for w in widths])).all()  # w_in, bias, w_out of w units; one out bias
    assert (plain == 1).all()
