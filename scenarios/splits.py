"""PFLlib-compatible label-skew splits of a labelled pool across parties, each party with its own train/test.

Kinds (``SplitConfig.kind``), as in PFLlib's ``separate_data``:

- ``pathological``: every party gets ``classes_per_party`` classes, dealt round-robin over a shuffled class
  order; each class's samples are shared by the parties that have it (equal shares, or random shares with
  ``balance=False``); when ``parties * classes_per_party`` is less than the number of classes, the classes
  nobody was dealt are left out of the split;
- ``dirichlet``: for each class, proportions ~ Dirichlet(alpha) across parties (a party that already holds
  more than ``N / parties`` samples gets no more, as in PFLlib); the draw is repeated until every party has at
  least ``min_samples`` samples — at most ``max_tries`` times, then a ``ValueError`` names alpha, min_samples
  and parties;
- ``quantity``: labels IID, party sizes ~ Dirichlet(alpha) of the pool, with the same minimum-samples rule.

Then each party's samples are shuffled and split ``train_fraction`` / rest (75/25 by default, like PFLlib's
``train_test_split(train_size=0.75)``: ``n_train = floor(0.75 n)``).

Randomness: the partition (a joint draw over all parties) uses the stream ``default_rng([seed, PARTITION])``;
party ``i``'s train/test shuffle uses ``default_rng([seed, i, TRAIN_TEST])``. Both depend only on the seed (and
the party id), so a split is reproducible and a party's split does not depend on which actor hosts it.

Entry points::

    parts = split_labels(labels, SplitConfig("dirichlet", parties=20, alpha=0.1), seed=1)
    parts[i].train, parts[i].test          # int64 indices into the pool
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

PARTITION = 2**32 - 1  # stream word of the joint partition draw (larger than any party id)
TRAIN_TEST = 101  # stream word of a party's train/test shuffle (distinct from scenarios.Stream)


@dataclass(frozen=True)
class SplitConfig:
    """How a labelled pool is split. ``kind`` in :data:`PARTITIONS`; the other keys as in the module doc."""

    kind: str
    parties: int
    classes_per_party: int = 2
    alpha: float = 0.1
    min_samples: int = 10
    max_tries: int = 100
    balance: bool = True
    train_fraction: float = 0.75

    def __post_init__(self) -> None:
        if self.kind not in PARTITIONS:
            raise ValueError(f"split.kind must be one of {sorted(PARTITIONS)}, got {self.kind!r}")
        if self.parties < 1:
            raise ValueError(f"split.parties must be >= 1, got {self.parties}")
        if self.classes_per_party < 1:
            raise ValueError(f"split.classes_per_party must be >= 1, got {self.classes_per_party}")
        if not self.alpha > 0:
            raise ValueError(f"split.alpha must be > 0, got {self.alpha}")
        if self.min_samples < 0 or self.max_tries < 1:
            raise ValueError(
                f"split.min_samples must be >= 0 and split.max_tries >= 1, got {self.min_samples}, {self.max_tries}"
            )
        if not 0 < self.train_fraction < 1:
            raise ValueError(f"split.train_fraction must be in (0, 1), got {self.train_fraction}")


@dataclass(frozen=True)
class PartySplit:
    """One party's share of the pool: ``train`` and ``test`` indices (int64, disjoint)."""

    party_id: int
    train: np.ndarray
    test: np.ndarray

    @property
    def indices(self) -> np.ndarray:
        return np.concatenate([self.train, self.test])


def pathological(labels: np.ndarray, cfg: SplitConfig, rng: np.random.Generator) -> list[np.ndarray]:
    """Each party gets ``classes_per_party`` classes, dealt round-robin over a shuffled class order."""
    classes = np.unique(labels)
    c = cfg.classes_per_party
    if c > len(classes):
        raise ValueError(f"split.classes_per_party={c} but the pool has only {len(classes)} classes")
    deck = rng.permutation(classes)
    owners: dict[int, list[int]] = {int(k): [] for k in classes}
    for party in range(cfg.parties):
        for t in range(c):
            owners[int(deck[(party * c + t) % len(deck)])].append(party)
    out: list[list[np.ndarray]] = [[] for _ in range(cfg.parties)]
    for k, parties in owners.items():
        idx = rng.permutation(np.flatnonzero(labels == k))
        if not parties:
            continue
        if len(idx) < len(parties):
            raise ValueError(f"class {k} has {len(idx)} samples for {len(parties)} parties (pathological split)")
        if cfg.balance:
            cuts = np.linspace(0, len(idx), len(parties) + 1).astype(int)[1:-1]
        else:  # random shares, each at least one sample
            share = rng.dirichlet(np.ones(len(parties)))
            extra = np.floor(share * (len(idx) - len(parties))).astype(int)
            cuts = np.cumsum(extra + 1)[:-1]
        for party, chunk in zip(parties, np.split(idx, cuts)):
            out[party].append(chunk)
    return [np.concatenate(p) if p else np.zeros(0, np.int64) for p in out]


def _with_minimum(draw: Callable[[], list[np.ndarray]], cfg: SplitConfig, n: int) -> list[np.ndarray]:
    """Repeat ``draw`` until every party has ``min_samples``; bounded by ``max_tries``."""
    if cfg.min_samples * cfg.parties > n:
        raise ValueError(
            f"cannot give {cfg.parties} parties {cfg.min_samples} samples each from a pool of {n} "
            f"(split.kind={cfg.kind}, alpha={cfg.alpha})"
        )
    for _ in range(cfg.max_tries):
        parts = draw()
        if min(len(p) for p in parts) >= cfg.min_samples:
            return parts
    raise ValueError(
        f"no {cfg.kind} split with alpha={cfg.alpha} gave all {cfg.parties} parties min_samples={cfg.min_samples} "
        f"samples in {cfg.max_tries} tries: raise alpha, lower min_samples or use fewer parties"
    )


def dirichlet(labels: np.ndarray, cfg: SplitConfig, rng: np.random.Generator) -> list[np.ndarray]:
    """Per class, proportions ~ Dirichlet(alpha) over parties (PFLlib's ``dir``)."""
    n, P = len(labels), cfg.parties

    def draw() -> list[np.ndarray]:
        batches: list[list[np.ndarray]] = [[] for _ in range(P)]
        sizes = np.zeros(P, dtype=np.int64)
        for k in np.unique(labels):
            idx = rng.permutation(np.flatnonzero(labels == k))
            prop = rng.dirichlet(np.full(P, cfg.alpha)) * (sizes < n / P)
            prop = prop / prop.sum() if prop.sum() > 0 else np.full(P, 1.0 / P)
            cuts = (np.cumsum(prop) * len(idx)).astype(int)[:-1]
            for party, chunk in enumerate(np.split(idx, cuts)):
                batches[party].append(chunk)
                sizes[party] += len(chunk)
        return [np.concatenate(b) for b in batches]

    return _with_minimum(draw, cfg, n)


def quantity(labels: np.ndarray, cfg: SplitConfig, rng: np.random.Generator) -> list[np.ndarray]:
    """Labels IID, party sizes ~ Dirichlet(alpha) (quantity skew)."""
    n = len(labels)

    def draw() -> list[np.ndarray]:
        idx = rng.permutation(n)
        cuts = (np.cumsum(rng.dirichlet(np.full(cfg.parties, cfg.alpha))) * n).astype(int)[:-1]
        return np.split(idx, cuts)

    return _with_minimum(draw, cfg, n)


PARTITIONS: dict[str, Callable[[np.ndarray, SplitConfig, np.random.Generator], list[np.ndarray]]] = {
    "pathological": pathological,
    "dirichlet": dirichlet,
    "quantity": quantity,
}


def train_test(indices: np.ndarray, party_id: int, seed: int, train_fraction: float = 0.75) -> PartySplit:
    """Shuffle one party's indices with its own stream and split them ``floor(train_fraction n)`` / rest."""
    rng = np.random.default_rng([int(seed), int(party_id), TRAIN_TEST])
    idx = rng.permutation(np.asarray(indices, dtype=np.int64))
    n_train = int(np.floor(train_fraction * len(idx)))
    return PartySplit(int(party_id), idx[:n_train], idx[n_train:])


def split_labels(labels: np.ndarray, cfg: SplitConfig, seed: int) -> list[PartySplit]:
    """Split a pool with ``labels`` (N,) int across ``cfg.parties`` parties: one :class:`PartySplit` per party."""
    labels = np.asarray(labels)
    if labels.ndim != 1:
        raise ValueError(f"labels must be 1-d (N,), got shape {labels.shape}")
    parts = PARTITIONS[cfg.kind](labels, cfg, np.random.default_rng([int(seed), PARTITION]))
    return [train_test(p, i, seed, cfg.train_fraction) for i, p in enumerate(parts)]
