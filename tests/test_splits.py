"""PFLlib-style label-skew splits (scenarios/splits.py) on tiny synthetic labels."""

import numpy as np
import pytest

from cluster.results import weighted_mean_std
from scenarios.splits import SplitConfig, split_labels, train_test


def pool(n_per_class=60, classes=10):
    return np.random.default_rng(0).permutation(np.repeat(np.arange(classes), n_per_class))


def check_partition(labels, parts):
    all_idx = np.concatenate([p.indices for p in parts])
    assert len(np.unique(all_idx)) == len(all_idx)  # no sample in two parties (or twice in one)
    for p in parts:
        assert len(np.intersect1d(p.train, p.test)) == 0
    return all_idx


@pytest.mark.parametrize(
    "cfg",
    [
        SplitConfig("pathological", parties=20, classes_per_party=2),
        SplitConfig("pathological", parties=7, classes_per_party=3, balance=False),
        SplitConfig("dirichlet", parties=20, alpha=0.3, min_samples=10),
        SplitConfig("quantity", parties=15, alpha=1.0, min_samples=5),
    ],
    ids=lambda c: c.kind,
)
def test_every_sample_lands_in_exactly_one_party_and_class_counts_are_kept(cfg):
    labels = pool()
    parts = split_labels(labels, cfg, seed=3)
    assert len(parts) == cfg.parties and [p.party_id for p in parts] == list(range(cfg.parties))
    all_idx = check_partition(labels, parts)
    assert sorted(all_idx.tolist()) == list(range(len(labels)))  # the whole pool is used, so counts are kept
    np.testing.assert_array_equal(np.bincount(labels[all_idx]), np.bincount(labels))
    for p in parts:
        n = len(p.indices)
        assert len(p.train) == int(np.floor(0.75 * n))
        assert n >= cfg.min_samples or cfg.kind == "pathological"


def test_pathological_gives_each_party_its_number_of_classes():
    labels = pool()
    for p in split_labels(labels, SplitConfig("pathological", parties=20, classes_per_party=3), seed=1):
        assert len(np.unique(labels[p.indices])) == 3


def test_dirichlet_small_alpha_skews_labels_and_honours_the_minimum():
    labels = pool(n_per_class=100)
    parts = split_labels(
        labels, SplitConfig("dirichlet", parties=10, alpha=0.05, min_samples=20, max_tries=500), seed=2
    )
    assert min(len(p.indices) for p in parts) >= 20
    # with alpha = 0.05 a typical party is dominated by one class; IID would give ~10% per class
    top_share = [np.bincount(labels[p.indices]).max() / len(p.indices) for p in parts]
    assert np.median(top_share) > 0.5


def test_splits_are_deterministic_for_a_seed_and_differ_across_seeds():
    labels = pool()
    cfg = SplitConfig("dirichlet", parties=12, alpha=0.5, min_samples=5)
    a, b, c = (split_labels(labels, cfg, seed=s) for s in (4, 4, 5))
    assert all(np.array_equal(x.train, y.train) and np.array_equal(x.test, y.test) for x, y in zip(a, b))
    assert not all(np.array_equal(x.train, y.train) for x, y in zip(a, c))
    # a party's own train/test shuffle depends on (seed, party id) only
    t1, t2 = train_test(np.arange(40), 3, seed=9), train_test(np.arange(40), 3, seed=9)
    assert np.array_equal(t1.train, t2.train) and len(t1.test) == 10


def test_impossible_minimum_fails_with_a_clear_error():
    labels = pool(n_per_class=10)  # 100 samples
    with pytest.raises(ValueError, match=r"alpha=0.01.*min_samples=9.*11 parties|11 parties.*9 samples"):
        split_labels(labels, SplitConfig("dirichlet", parties=11, alpha=0.01, min_samples=9), seed=0)
    with pytest.raises(ValueError, match=r"alpha=0.01 .*parties min_samples=8.*3 tries"):
        split_labels(labels, SplitConfig("dirichlet", parties=12, alpha=0.01, min_samples=8, max_tries=3), seed=0)
    with pytest.raises(ValueError, match="cannot give 11 parties 10 samples each from a pool of 100"):
        split_labels(labels, SplitConfig("quantity", parties=11, min_samples=10), seed=0)
    with pytest.raises(ValueError, match="classes_per_party"):
        split_labels(labels, SplitConfig("pathological", parties=3, classes_per_party=11), seed=0)
    with pytest.raises(ValueError, match="split.kind"):
        SplitConfig("shards", parties=3)


def test_weighted_mean_and_std_of_party_metrics():
    mean, std = weighted_mean_std(np.array([1.0, 0.5]), np.array([30, 10]))
    assert mean == pytest.approx(0.875) and std == pytest.approx(0.25)
    with pytest.raises(ValueError):
        weighted_mean_std(np.array([1.0]), np.array([0.0]))


def test_pathological_with_few_parties_leaves_undealt_classes_out():
    labels = pool()
    parts = split_labels(labels, SplitConfig("pathological", parties=2, classes_per_party=2), seed=0)
    used = np.concatenate([p.indices for p in parts])
    assert len(np.unique(labels[used])) == 4 and len(used) == 4 * 60


def test_exdir_gives_each_party_at_most_its_classes_and_keeps_every_sample():
    labels = np.repeat(np.arange(10), 200)
    cfg = SplitConfig("exdir", parties=12, classes_per_party=3, alpha=0.5, min_samples=10)
    parts = split_labels(labels, cfg, seed=3)
    assert sorted(np.concatenate([p.indices for p in parts]).tolist()) == list(range(len(labels)))
    assert all(len(np.unique(labels[p.indices])) <= 3 for p in parts)
    assert all(len(p.indices) >= 10 for p in parts)


def test_shard_gives_each_party_its_shards_of_the_label_sorted_pool():
    labels = np.repeat(np.arange(10), 100)
    parts = split_labels(labels, SplitConfig("shard", parties=10, shards_per_party=2), seed=1)
    assert all(len(p.indices) == 100 for p in parts)
    assert all(len(np.unique(labels[p.indices])) <= 2 for p in parts)  # a shard of 50 sorted labels holds one class
    assert sorted(np.concatenate([p.indices for p in parts]).tolist()) == list(range(len(labels)))
    with pytest.raises(ValueError, match="shards_per_party"):
        SplitConfig("shard", parties=2, shards_per_party=0)
