import numpy as np
import torch

from fusion.matching import align, solve_assignment, solve_many_serial
from fusion.models.params import forward, permute, unit_features
from fusion.models.spec import MLPSpec
from tests.builders import random_stack


def test_solve_assignment_finds_the_optimum():
    cost = np.array([[4.0, 1.0, 3.0], [2.0, 0.0, 5.0], [3.0, 2.0, 2.0]])
    perm = solve_assignment(cost)
    assert sorted(perm) == [0, 1, 2]
    assert cost[np.arange(3), perm].sum() == 5.0


def test_alignment_recovers_a_known_permutation_exactly():
    spec = MLPSpec((1, 20, 1))
    base = random_stack(spec, 1)
    rng = np.random.default_rng(1)
    true = np.stack([rng.permutation(20) for _ in range(5)])
    true[0] = np.arange(20)
    copies = permute(np.repeat(base, 5, axis=0), spec, [true])
    perms = solve_many_serial(unit_features(copies, spec, 0), unit_features(base, spec, 0)[0])
    np.testing.assert_array_equal(np.take_along_axis(true, perms, axis=1), np.tile(np.arange(20), (5, 1)))


def test_permuted_copies_align_to_one_model():
    spec = MLPSpec((2, 16, 8, 1))
    base = random_stack(spec, 1, seed=3)
    rng = np.random.default_rng(2)
    perms = [np.stack([rng.permutation(h) for _ in range(6)]) for h in spec.hidden]
    copies = permute(np.repeat(base, 6, axis=0), spec, perms)
    result = align(copies, spec)
    # Every aligned copy is the same vector (up to one common order), so their mean is a copy too.
    np.testing.assert_allclose(result.aligned, np.repeat(result.aligned[:1], 6, axis=0), atol=1e-6)
    x = torch.randn(9, 2)
    mean = torch.tensor(result.aligned.mean(0, keepdims=True))
    assert torch.allclose(forward(mean, spec, x), forward(torch.tensor(base), spec, x), atol=1e-5)


def test_unaligned_average_of_permuted_copies_is_not_the_model():
    """Why alignment matters: averaging the same net in different unit orders destroys it."""
    spec = MLPSpec((1, 32, 1))
    base = random_stack(spec, 1, seed=4)
    rng = np.random.default_rng(5)
    copies = permute(np.repeat(base, 8, axis=0), spec, [np.stack([rng.permutation(32) for _ in range(8)])])
    x = torch.linspace(-3, 3, 50)[:, None]
    truth = forward(torch.tensor(base), spec, x)
    naive = forward(torch.tensor(copies.mean(0, keepdims=True)), spec, x)
    fused = forward(torch.tensor(align(copies, spec).aligned.mean(0, keepdims=True)), spec, x)
    assert (naive - truth).abs().max() > 10 * (fused - truth).abs().max()
