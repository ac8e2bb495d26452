"""Nonparametric matching of nets of different widths (fusion/matching/pfnm.py)."""

import numpy as np
import pytest
import torch

from fusion.matching.pfnm import (
    PFNMConfig,
    expand,
    match_models,
    matched_average,
    solve_rect_serial,
    to_width,
)
from fusion.models.params import forward
from fusion.models.spec import MLPSpec

FAN_IN, FAN_OUT, L_TRUE = 4, 3, 200
EXACT = PFNMConfig(sigma=0.05, normalizers=True)
X = torch.linspace(-2, 2, 40)[:, None].repeat(1, FAN_IN) * torch.tensor([1.0, -0.5, 0.3, 2.0])


def sub_copies(widths=(50, 100, 150, 50, 100, 150), noise=0.02, seed=0):
    """Noisy sub-copies of one global net: model j keeps the atoms ``truth[j]`` in a random order."""
    rng = np.random.default_rng(seed)
    w_in, b, w_out, c = (rng.normal(size=s) for s in [(L_TRUE, FAN_IN), L_TRUE, (FAN_OUT, L_TRUE), FAN_OUT])
    models, specs, truth = [], [], []
    for width in widths:
        idx = rng.choice(L_TRUE, width, replace=False)
        eps = lambda shape: rng.normal(scale=noise, size=shape)  # noqa: E731
        flat = np.concatenate(
            [
                (w_in[idx] + eps((width, FAN_IN))).ravel(),
                b[idx] + eps(width),
                (w_out[:, idx] + eps((FAN_OUT, width))).ravel(),
                c,
            ]
        )
        models.append(flat.astype(np.float32))
        specs.append(MLPSpec((FAN_IN, width, FAN_OUT)))
        truth.append(idx)
    return models, specs, truth


def atom_map(matching, truth) -> dict[int, set[int]]:
    """True atom -> the set of global atoms its units were matched to."""
    out: dict[int, set[int]] = {}
    for assigned, idx in zip(matching.assignments, truth):
        for g, t in zip(assigned, idx):
            out.setdefault(int(t), set()).add(int(g))
    return out


def out(params, spec):
    return forward(torch.as_tensor(np.atleast_2d(params)), spec, X)


def test_widths_50_100_150_are_matched_back_to_their_atoms():
    models, specs, truth = sub_copies()
    m = match_models(models, specs, EXACT)
    used = np.unique(np.concatenate(truth))
    assert m.n_atoms == len(used)
    mapping = atom_map(m, truth)
    assert all(len(g) == 1 for g in mapping.values())  # each true atom -> one global atom
    assert len({next(iter(g)) for g in mapping.values()}) == len(used)  # and distinct ones
    for assigned, spec in zip(m.assignments, specs):
        assert len(np.unique(assigned)) == spec.widths[1]
    counts = np.bincount(np.concatenate(truth), minlength=L_TRUE)[used]
    assert sorted(m.popularity.tolist()) == sorted(counts.tolist())
    assert (np.diff(m.popularity) <= 0).all()


def test_blocked_sweeps_through_a_custom_solver_still_recover_the_atoms():
    models, specs, truth = sub_copies(widths=(50, 100, 150) * 4, seed=1)
    calls = []

    def solver(costs):
        calls.append(len(costs))
        return solve_rect_serial(costs)

    m = match_models(models, specs, PFNMConfig(sigma=0.05, normalizers=True, block=4), solver)
    used = len(np.unique(np.concatenate(truth)))
    mapping = atom_map(m, truth)
    split = sum(len(g) > 1 for g in mapping.values())
    assert max(calls) == 4  # one call solves a block of nets
    assert split <= 0.02 * used and m.n_atoms <= used + 0.02 * used


def test_expanded_models_compute_the_same_functions():
    models, specs, _ = sub_copies(seed=2)
    m = match_models(models, specs, EXACT)
    stack = expand(models, specs, m)
    assert stack.shape == (len(models), m.global_spec.n_params)
    for j, (model, spec) in enumerate(zip(models, specs)):
        torch.testing.assert_close(out(stack[j], m.global_spec), out(model, spec), atol=1e-5, rtol=1e-5)


def test_matching_does_not_depend_on_party_order():
    models, specs, _ = sub_copies(seed=3)
    order = np.random.default_rng(4).permutation(len(models))
    a = match_models(models, specs, PFNMConfig())  # paper defaults: the order must not matter there either
    b = match_models([models[i] for i in order], [specs[i] for i in order], PFNMConfig())
    assert a.n_atoms == b.n_atoms
    np.testing.assert_array_equal(a.popularity, b.popularity)
    np.testing.assert_allclose(a.atoms, b.atoms, atol=1e-9)
    np.testing.assert_array_equal(
        expand(models, specs, a)[order], expand([models[i] for i in order], [specs[i] for i in order], b)
    )


def test_matched_average_of_sub_copies_keeps_the_shared_atoms():
    models, specs, truth = sub_copies(noise=0.0, seed=5)
    m = match_models(models, specs, EXACT)
    fused = matched_average(models, specs, m)
    # the average of the models' outputs is what the fused model computes when the units agree exactly
    mean_out = torch.stack([out(mod, s) for mod, s in zip(models, specs)]).mean(0)
    torch.testing.assert_close(out(fused, m.global_spec), mean_out, atol=1e-4, rtol=1e-4)


def test_to_width_keeps_the_most_popular_atoms_and_wider_keeps_the_function():
    models, specs, _ = sub_copies(seed=6)
    m = match_models(models, specs, EXACT)
    stack = expand(models, specs, m)
    narrow = to_width(stack, m.global_spec, 30, importance=m.popularity)
    spec30 = MLPSpec((FAN_IN, 30, FAN_OUT))
    assert narrow.shape == (len(models), spec30.n_params)
    # the full global width with popularity ranking is only a reordering-free copy
    np.testing.assert_array_equal(to_width(stack, m.global_spec, m.n_atoms, importance=m.popularity), stack)
    wide_spec = MLPSpec((FAN_IN, m.n_atoms + 7, FAN_OUT))
    wide = to_width(stack, m.global_spec, m.n_atoms + 7, rng=np.random.default_rng(0))
    torch.testing.assert_close(out(wide, wide_spec), out(stack, m.global_spec), atol=1e-5, rtol=1e-5)
    # a strict ranking keeps exactly the top slots, in canonical order
    w_in = stack[:, : m.n_atoms * FAN_IN].reshape(len(models), m.n_atoms, FAN_IN)
    ranked = to_width(stack, m.global_spec, 30, importance=-np.arange(m.n_atoms, dtype=float))
    np.testing.assert_array_equal(ranked[:, : 30 * FAN_IN].reshape(len(models), 30, FAN_IN), w_in[:, :30])
    # ranking by popularity: ties are broken towards the units a model has (absent = zero units go last), so a
    # model keeps more of its own units than the first 30 canonical slots hold
    kept = (np.abs(narrow[:, : 30 * FAN_IN].reshape(len(models), 30, FAN_IN)).sum(-1) > 0).sum(1)
    first = (np.abs(w_in[:, :30]).sum(-1) > 0).sum(1)
    assert (kept >= first).all() and (kept > first).any()


def test_a_single_model_comes_back_exactly():
    models, specs, _ = sub_copies(widths=(37,), seed=7)
    m = match_models(models, specs)
    assert m.n_atoms == 37
    torch.testing.assert_close(out(matched_average(models, specs, m), m.global_spec), out(models[0], specs[0]))


def test_config_and_input_errors():
    with pytest.raises(ValueError, match="sigma"):
        PFNMConfig(sigma=0)
    with pytest.raises(ValueError, match="block"):
        PFNMConfig(block=0)
    with pytest.raises(ValueError, match="single-hidden-layer"):
        match_models([np.zeros(MLPSpec((1, 3, 3, 1)).n_params)], [MLPSpec((1, 3, 3, 1))])
    with pytest.raises(ValueError, match="same inputs"):
        match_models([np.zeros(7), np.zeros(9)], [MLPSpec((1, 2, 1)), MLPSpec((2, 2, 1))])


def test_cutting_with_a_function_space_refit_stays_closer_to_the_wide_model():
    models, specs, _ = sub_copies(seed=8)
    m = match_models(models, specs, EXACT)
    stack = expand(models, specs, m)
    spec40 = MLPSpec((FAN_IN, 40, FAN_OUT))
    plain = to_width(stack, m.global_spec, 40, importance=m.popularity)
    refit = to_width(stack, m.global_spec, 40, importance=m.popularity, refit_x=X.numpy())
    np.testing.assert_array_equal(refit[:, : spec40.offsets[1][0]], plain[:, : spec40.offsets[1][0]])  # same units
    wide = out(stack, m.global_spec)
    err_plain = (out(plain, spec40) - wide).pow(2).mean()
    err_refit = (out(refit, spec40) - wide).pow(2).mean()
    assert err_refit < 0.5 * err_plain
