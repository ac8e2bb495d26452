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
- ``quantity``: labels IID, party sizes ~ Dirichlet(alpha) of the pool, with the same minimum-samples rule;
- ``exdir``: PFLlib's extended Dirichlet: every party first draws ``classes_per_party`` distinct classes (redrawn
  until every class is held by at least max(1, C·parties / classes / 2) parties), then each class is shared by
  Dirichlet(alpha) proportions over the parties that hold it, with ``dirichlet``'s cap and minimum-samples rule;
- ``shard``: Flower's shard partitioner: the pool sorted by label is cut into ``parties · shards_per_party``
  equal shards and every party receives ``shards_per_party`` of them at random.

Then each party's samples are shuffled and split ``train_fraction`` / rest (75/25 by default, like PFLlib's
``train_test_split(train_size=0.75)``: ``n_train = floor(0.75 n)``).

Randomness: the partition (a joint draw over all parties) uses the stream ``default_rng([seed, PARTITION])``;
party ``i``'s train/test shuffle uses ``default_rng([seed, i, TRAIN_TEST])``. Both depend only on the seed (and
the party id), so a split is reproducible and a party's split does not depend on which actor hosts it.

A split can also come from a file (:func:`read_partition`): any partition given as row indices, e.g. PFLlib's own
generator's output, so a run reproduces another tool's exact split.

Entry points::

    parts = split_labels(labels, SplitConfig("dirichlet", parties=20, alpha=0.1), seed=1)
    parts[i].train, parts[i].test          # int64 indices into the pool
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

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
    shards_per_party: int = 2  # ``shard``: how many label-sorted shards each party receives

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
        if self.shards_per_party < 1:
            raise ValueError(f"split.shards_per_party must be >= 1, got {self.shards_per_party}")
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


def dirichlet(
    labels: np.ndarray, cfg: SplitConfig, rng: np.random.Generator, holders: dict[int, np.ndarray] | None = None
) -> list[np.ndarray]:
    """Per class, proportions ~ Dirichlet(alpha) over parties (PFLlib's ``dir``); with ``holders`` (class -> (P,)
    bool), only over the parties that hold the class (``exdir``)."""
    n, P = len(labels), cfg.parties

    def draw() -> list[np.ndarray]:
        batches: list[list[np.ndarray]] = [[] for _ in range(P)]
        sizes = np.zeros(P, dtype=np.int64)
        for k in np.unique(labels):
            idx = rng.permutation(np.flatnonzero(labels == k))
            allowed = (sizes < n / P) if holders is None else (sizes < n / P) & holders[int(k)]
            prop = rng.dirichlet(np.full(P, cfg.alpha)) * allowed
            fallback = np.ones(P) if holders is None else holders[int(k)].astype(float)
            prop = prop / prop.sum() if prop.sum() > 0 else fallback / fallback.sum()
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


def exdir(labels: np.ndarray, cfg: SplitConfig, rng: np.random.Generator) -> list[np.ndarray]:
    """``classes_per_party`` classes per party, then Dirichlet(alpha) over each class's holders (PFLlib's ``exdir``)."""
    classes, P, C = np.unique(labels), cfg.parties, cfg.classes_per_party
    if C > len(classes):
        raise ValueError(f"split.classes_per_party={C} but the pool has only {len(classes)} classes")
    need = max(C * P // len(classes) // 2, 1)
    for _ in range(cfg.max_tries):
        held = np.zeros((P, len(classes)), bool)
        for party in range(P):
            held[party, rng.choice(len(classes), C, replace=False)] = True
        if held.sum(axis=0).min() >= need:
            break
    else:
        raise ValueError(
            f"no exdir split gave every class {need} holders with {P} parties of {C} classes in {cfg.max_tries} "
            "tries: raise classes_per_party or use more parties"
        )
    return dirichlet(labels, cfg, rng, {int(k): held[:, j] for j, k in enumerate(classes)})


def shard(labels: np.ndarray, cfg: SplitConfig, rng: np.random.Generator) -> list[np.ndarray]:
    """The pool sorted by label in ``parties · shards_per_party`` equal shards, ``shards_per_party`` per party."""
    n_shards = cfg.parties * cfg.shards_per_party
    if n_shards > len(labels):
        raise ValueError(f"{n_shards} shards (parties x shards_per_party) from a pool of only {len(labels)} samples")
    order = np.argsort(labels, kind="stable")
    pieces = np.array_split(order, n_shards)
    deal = rng.permutation(n_shards).reshape(cfg.parties, cfg.shards_per_party)
    return [np.concatenate([pieces[j] for j in row]) for row in deal]


PARTITIONS: dict[str, Callable[[np.ndarray, SplitConfig, np.random.Generator], list[np.ndarray]]] = {
    "pathological": pathological,
    "dirichlet": dirichlet,
    "quantity": quantity,
    "exdir": exdir,
    "shard": shard,
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


def read_partition(path: str | Path, labels: np.ndarray, parties: int) -> list[PartySplit]:
    """The first ``parties`` parties of a partition file over a pool with ``labels`` (N,).

    The file is an ``.npz`` with ``client<K>_train`` and ``client<K>_test`` (int row indices into the pool, K = 0, 1,
    ...; the pool of an image source is its train images followed by its test images), optionally
    ``client<K>_train_labels`` / ``client<K>_test_labels`` (checked against the pool's labels) and
    ``num_clients``. Party K is client K, its rows in the file's order. Raises ``ValueError`` naming the problem.
    """
    path = Path(path).expanduser()
    try:
        data = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise ValueError(f"scenario.partition = {str(path)!r}: cannot read it as .npz ({exc})") from None
    with data:
        keys = set(data.files)
        clients = 0
        while f"client{clients}_train" in keys and f"client{clients}_test" in keys:
            clients += 1
        if "num_clients" in keys and int(data["num_clients"]) != clients:
            raise ValueError(
                f"scenario.partition = {str(path)!r}: num_clients = {int(data['num_clients'])} but it holds "
                f"client0..client{clients - 1} train/test arrays"
            )
        if parties > clients:
            raise ValueError(
                f"scenario.partition = {str(path)!r} has {clients} clients; the run asks for {parties} parties "
                "(parties + test_parties)"
            )
        out, seen = [], np.zeros(len(labels), bool)
        for k in range(parties):
            rows = {}
            for part in ("train", "test"):
                idx = np.asarray(data[f"client{k}_{part}"])
                if idx.ndim != 1 or not np.issubdtype(idx.dtype, np.integer):
                    raise ValueError(f"scenario.partition: client{k}_{part} must be a 1-d integer array")
                if len(idx) and (idx.min() < 0 or idx.max() >= len(labels)):
                    raise ValueError(
                        f"scenario.partition: client{k}_{part} has rows outside the pool's 0..{len(labels) - 1}"
                    )
                if f"client{k}_{part}_labels" in keys and not np.array_equal(
                    labels[idx], data[f"client{k}_{part}_labels"]
                ):
                    raise ValueError(
                        f"scenario.partition: client{k}_{part}_labels disagree with the pool's labels at those rows "
                        "(another source, or another row order?)"
                    )
                if seen[idx].any() or len(np.unique(idx)) != len(idx):
                    raise ValueError(f"scenario.partition: client{k}_{part} repeats rows held by another part")
                seen[idx] = True
                rows[part] = idx.astype(np.int64)
            if not len(rows["train"]) or not len(rows["test"]):
                raise ValueError(f"scenario.partition: client{k} needs at least one train and one test row")
            out.append(PartySplit(k, rows["train"], rows["test"]))
    return out
