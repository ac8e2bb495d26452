"""PFLlib-style label skew (``digits-split``): one pool of digit images split across the parties.

All images of the source (its train and test splits pooled; with ``pool = N`` a random N of them, drawn from the
run seed) are split across the run's parties with :mod:`scenarios.splits` — ``pathological`` (``classes_per_party``
digits each), ``dirichlet`` (Dirichlet(alpha) per digit across parties, at least ``min_samples`` each), ``quantity``
(IID labels, Dirichlet sizes), ``exdir`` (``classes_per_party`` classes each, Dirichlet over each class's holders)
or ``shard`` (label-sorted shards) — and each party's share 75/25 into its own train and test part. With
``partition = FILE`` the parties' train/test rows come from that file instead (PFLlib's own split, say:
:func:`scenarios.splits.read_partition`). A party's descriptor is the class proportions (10,) of its train part
(what it can publish about its data without publishing the data); the model is ``[in-100-10]`` over all ten digits
(cross-entropy, argmax over all ten); the metric is accuracy on the party's own test part.

Feature shift (``shift = true``): every party sees its images rotated by one of ``angles`` and with its ink scaled,
both drawn from (seed, party id) (rotated-MNIST's domains); its descriptor carries the rotation and the intensity,
so a meta-model over descriptors can use them. With ``split = "quantity"`` (IID labels) parties then share their
label set and differ only in their features.

Training parties pretrain on their train part; test parties get their k shots from their train part (the
first k of a shuffle, their SHOTS stream; a party with fewer than k train examples gets all of them, padded)
and are evaluated on their test part. Reported like PFLlib: the run
summary's ``weighted_mean`` is the mean accuracy weighted by each test party's number of test samples
(:meth:`party_weights`), next to the std across parties.

Parties hold different numbers of samples; to train them as one batch every party's arrays are padded to the
run's largest part with label ``-1``, which :meth:`loss` and :meth:`metric` ignore. The split is a joint draw
over all parties, made in :meth:`prepare` (driver side, before the scenario is sent to the actors) from the run
seed; it does not depend on how parties are spread over actors.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fusion.lazy import torch
from fusion.models.spec import Spec
from scenarios import digit_sources
from scenarios.base import Scenario, Stream, model_families, model_specs, party_rng
from scenarios.splits import PARTITIONS, PartySplit, SplitConfig, read_partition, split_labels

N_CLASSES = 10
PAD = -1  # label of padding examples (ignored by loss and metric)
POOL_STREAM = 2**32 - 2  # stream word of the ``pool`` draw (not a party id, not the partition's)


@dataclass(frozen=True)
class DigitsSplitOptions:
    """``[scenario]`` keys of ``digits-split`` (the split keys as in :class:`scenarios.splits.SplitConfig`)."""

    split: str = "dirichlet"  # pathological | dirichlet | quantity | exdir | shard
    alpha: float = 0.1
    classes_per_party: int = 2
    min_samples: int = 10
    balance: bool = True
    shards_per_party: int = 2  # split = "shard": label-sorted shards per party
    source: str = "sklearn"  # "sklearn" (8x8, offline), "mnist" or "fashion-mnist" (idx files in data_dir)
    data_dir: str = ""
    pool: int = 0  # 0: every image of the source; N: a random N of them (drawn from the run seed) are split
    partition: str = ""  # an .npz of each party's train/test rows (scenarios.splits.read_partition) instead of a split
    inputs: str = "unit"  # "unit": pixels in [0, 1]; "centered": (x - 0.5) / 0.5, PFLlib's transform
    # feature shift: each party's images rotated by one of ``angles`` (degrees; rotated-MNIST's domains) and their
    # ink scaled by a factor in ``intensity`` (low, high), both drawn from (seed, party id); the descriptor carries them
    shift: bool = False
    angles: tuple[float, ...] = (0.0, 15.0, 30.0, 45.0, 60.0, 75.0)
    intensity: tuple[float, float] = (1.0, 1.0)
    hidden: tuple[int, ...] = (100,)
    archs: tuple[str, ...] = ()  # architecture families (mlp-<w>, cnn-s, cnn-m) instead of ``hidden``; several: each
    # party's drawn from (seed, party id)
    target_arch: str = ""  # the family novel parties receive ("": their own)

    @property
    def specs(self) -> tuple[Spec, Spec]:
        """The parties' model (``archs``' family, or ``[in, *hidden, 10]``) and the novel parties' (``target_arch``)."""
        n_in = digit_sources.SOURCES[self.source][0]
        return model_specs(self.archs, self.target_arch, self.hidden, n_in, N_CLASSES)

    def split_config(self, parties: int) -> SplitConfig:
        """The split of the pool across ``parties`` parties these options ask for."""
        return SplitConfig(
            self.split,
            parties,
            self.classes_per_party,
            self.alpha,
            self.min_samples,
            balance=self.balance,
            shards_per_party=self.shards_per_party,
        )

    @property
    def families(self) -> tuple[Spec, ...]:
        """The specs of ``archs`` when they are several (a run of mixed families), else ()."""
        return model_families(self.archs, digit_sources.SOURCES[self.source][0], N_CLASSES)

    def __post_init__(self) -> None:
        hidden = (self.hidden,) if isinstance(self.hidden, int) else tuple(self.hidden)
        object.__setattr__(self, "hidden", hidden)
        archs = (self.archs,) if isinstance(self.archs, str) else tuple(self.archs)
        object.__setattr__(self, "archs", archs)
        if not hidden or any(int(h) < 1 for h in hidden):
            raise ValueError(f"scenario.hidden must be positive widths, got {self.hidden}")
        if self.split not in PARTITIONS:
            raise ValueError(f"scenario.split must be one of {', '.join(sorted(PARTITIONS))}, got {self.split!r}")
        if self.source not in digit_sources.SOURCES:
            raise ValueError(f"scenario.source must be one of {', '.join(digit_sources.SOURCES)}, got {self.source!r}")
        self.specs  # noqa: B018  (checks archs and target_arch)
        if self.pool < 0:
            raise ValueError(f"scenario.pool must be >= 0 (0: every image), got {self.pool}")
        if self.partition and self.pool:
            raise ValueError("scenario.partition gives every party's rows: it cannot be combined with scenario.pool")
        object.__setattr__(self, "angles", tuple(float(a) for a in self.angles))
        object.__setattr__(self, "intensity", tuple(float(c) for c in self.intensity))
        if self.shift and not self.angles:
            raise ValueError("scenario.angles must name at least one angle (degrees) when scenario.shift is on")
        if len(self.intensity) != 2 or not 0 < self.intensity[0] <= self.intensity[1]:
            raise ValueError(f"scenario.intensity must be [low, high] with 0 < low <= high, got {list(self.intensity)}")
        if self.inputs not in digit_sources.INPUTS:
            raise ValueError(f"scenario.inputs must be one of {', '.join(digit_sources.INPUTS)}, got {self.inputs!r}")
        if self.min_samples < 4:
            raise ValueError(
                f"scenario.min_samples must be >= 4 (a 75/25 split needs a test sample), got {self.min_samples}"
            )
        self.split_config(1)  # checks the split keys


def shifted(x: np.ndarray, angle: float, ink: float, centered: bool = False) -> np.ndarray:
    """Square images ``x`` (m, side * side) rotated by ``angle`` degrees (bilinear, the corners filled with
    background) with their ink scaled by ``ink`` (clipped to the pixel range); ``centered``: pixels in [-1, 1]."""
    from scipy.ndimage import rotate

    if not len(x):  # no images (0 shots): nothing to rotate, and reshape(0, -1) cannot infer the width
        return np.asarray(x, np.float32)
    side = int(round(np.sqrt(x.shape[1])))
    unit = (x * 0.5 + 0.5) if centered else x
    img = unit.reshape(len(x), side, side)
    if angle:
        img = rotate(img, angle, axes=(1, 2), reshape=False, order=1, mode="constant", cval=0.0)
    img = np.clip(img * ink, 0.0, 1.0).reshape(len(x), -1).astype(np.float32)
    return (img - np.float32(0.5)) / np.float32(0.5) if centered else img


def _pad(x: np.ndarray, y: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """``x`` (m, in), ``y`` (m,) -> (n, in), (n,) with zero inputs and label :data:`PAD` after the m examples."""
    px = np.zeros((n, x.shape[1]), np.float32)
    py = np.full(n, PAD, np.int64)
    px[: len(x)], py[: len(y)] = x, y
    return px, py


class DigitsSplitScenario(Scenario):
    """Descriptor (10,) class proportions; ``x`` (N, in) float32; ``y`` (N,) int64 (``-1`` = padding)."""

    name = "digits-split"
    metric_name = "accuracy"
    lower_is_better = False
    outputs = "logits"
    readout_shots = True

    def __init__(self, options: DigitsSplitOptions = DigitsSplitOptions()) -> None:
        super().__init__(*options.specs, families=options.families, own_target=not options.target_arch)
        self.options = options
        self.parts: list[PartySplit] | None = None
        self.keep: np.ndarray | None = None  # with ``pool``: the images of the source in the run's pool

    def _pool(self) -> tuple[np.ndarray, np.ndarray]:
        x, y = digit_sources.pooled(self.options.source, self.options.data_dir, self.options.inputs)
        if self.keep is not None:
            return x[self.keep], y[self.keep]
        return x, y

    def prepare(self, seed: int, n_train: int, n_test: int) -> None:
        """Split the pool across the ``n_train + n_test`` parties (a joint draw from the run seed); with ``pool``,
        the pool is a random ``pool`` of the source's images (a draw from the run seed's stream of its own)."""
        o = self.options
        self.keep = None
        _, labels = self._pool()
        if o.pool:
            if o.pool > len(labels):
                raise ValueError(f"scenario.pool = {o.pool} is more than the {len(labels)} images of {o.source}")
            self.keep = np.sort(np.random.default_rng([seed, POOL_STREAM]).choice(len(labels), o.pool, replace=False))
            labels = labels[self.keep]
        if o.partition:  # the parties' rows as given: the file's clients 0 .. n_train + n_test - 1
            self.parts = read_partition(self._partition_path(), labels, n_train + n_test)
        else:
            self.parts = split_labels(labels, o.split_config(n_train + n_test), seed)
        self.n_train_max = max(len(p.train) for p in self.parts)
        self.n_test_max = max(len(p.test) for p in self.parts)

    def _partition_path(self) -> Path:
        """``partition`` as given, or, when it is a relative path that does not exist from here, inside ``data_dir``
        (a config can name the file of the data folder that ``--data-dir`` gives)."""
        given = Path(self.options.partition).expanduser()
        inside = Path(self.options.data_dir).expanduser() / given
        if not given.is_absolute() and not given.exists() and self.options.data_dir and inside.exists():
            return inside
        return given

    def _part(self, party_id: int) -> PartySplit:
        if self.parts is None:
            raise RuntimeError("digits-split: call prepare(seed, n_train, n_test) before asking for party data")
        if not 0 <= party_id < len(self.parts):
            raise ValueError(f"digits-split: party {party_id} is not one of the {len(self.parts)} prepared parties")
        return self.parts[party_id]

    @property
    def max_shots(self) -> int | None:
        """No limit: a test party whose train part has fewer than k examples gets all of them, padded (see
        :meth:`party_shot_data`). Under Dirichlet(0.1) over hundreds of parties the smallest part has a handful of
        examples (4–11 with 200 MNIST parties), which would otherwise cap every party's k."""
        return None

    def party_shift(self, seed: int, party_id: int) -> tuple[float, float]:
        """A party's feature shift: (rotation in degrees, ink intensity factor), from (seed, party id); (0, 1)
        without ``shift``."""
        o = self.options
        if not o.shift:
            return 0.0, 1.0
        rng = party_rng(seed, party_id, Stream.SHIFT)
        return float(o.angles[rng.integers(len(o.angles))]), float(rng.uniform(*o.intensity))

    def party_descriptor(self, seed: int, party_id: int) -> np.ndarray:
        """Class proportions (10,) of the party's train part; with ``shift``, then its rotation / 90 degrees and its
        intensity factor (12,)."""
        _, labels = self._pool()
        counts = np.bincount(labels[self._part(party_id).train], minlength=N_CLASSES)
        props = counts / max(1, counts.sum())
        if not self.options.shift:
            return props
        angle, ink = self.party_shift(seed, party_id)
        return np.concatenate([props, [angle / 90.0, ink]])

    def _images(self, seed: int, party_id: int, idx: np.ndarray) -> np.ndarray:
        """The pool's images at ``idx`` as party ``party_id`` sees them (its feature shift applied)."""
        x, _ = self._pool()
        if not self.options.shift:
            return x[idx]
        return shifted(x[idx], *self.party_shift(seed, party_id), centered=self.options.inputs == "centered")

    def party_train_data(self, seed, party_id, descriptor):
        _, y = self._pool()
        idx = self._part(party_id).train
        return _pad(self._images(seed, party_id, idx), y[idx], self.n_train_max)

    def party_shot_data(self, seed, party_id, descriptor, k):
        _, y = self._pool()
        train = self._part(party_id).train
        idx = party_rng(seed, party_id, Stream.SHOTS).permutation(train)[:k]
        return _pad(self._images(seed, party_id, idx), y[idx], k)  # k rows; PAD after a small party's train part

    def party_eval_data(self, seed, party_id, descriptor):
        _, y = self._pool()
        idx = self._part(party_id).test
        return _pad(self._images(seed, party_id, idx), y[idx], self.n_test_max)

    def party_weights(self, seed: int, ids: np.ndarray) -> np.ndarray:
        """Test samples of each party (n,): the weights of the PFLlib-style mean."""
        return np.array([len(self._part(int(i)).test) for i in ids], np.float64)

    def label_counts(self, seed: int, ids: np.ndarray) -> np.ndarray:
        _, labels = self._pool()
        return np.stack([np.bincount(labels[self._part(int(i)).indices], minlength=N_CLASSES) for i in ids])

    def probe_inputs(self):
        """512 unlabeled images of the pool (a fixed draw; labels never used). With ``shift``, the parties' domains:
        image i rotated by ``angles[i % len(angles)]``, its ink scaled by the middle of ``intensity``."""
        x, _ = self._pool()
        probe = x[np.random.default_rng(12345).choice(len(x), min(512, len(x)), replace=False)]
        o = self.options
        if not o.shift:
            return probe
        centered, ink = o.inputs == "centered", float(np.mean(o.intensity))
        rows = [np.arange(i, len(probe), len(o.angles)) for i in range(len(o.angles))]
        out = np.empty_like(probe)
        for angle, idx in zip(o.angles, rows):
            out[idx] = shifted(probe[idx], angle, ink, centered=centered)
        return out

    # The per-descriptor draws of the Scenario interface are not used: parties are entities of the split.
    def descriptor(self, rng):
        raise NotImplementedError("digits-split parties come from the split: use party_descriptor")

    def train_data(self, descriptor, rng):
        raise NotImplementedError("digits-split parties come from the split: use party_train_data")

    def shot_data(self, descriptor, k, rng):
        raise NotImplementedError("digits-split parties come from the split: use party_shot_data")

    def eval_data(self, descriptor, rng):
        raise NotImplementedError("digits-split parties come from the split: use party_eval_data")

    def loss(self, pred, y, descriptors):
        """Cross-entropy over the ten digits, mean over each party's real examples: (P,)."""
        valid = y >= 0
        logp = torch.log_softmax(pred, dim=-1)
        nll = -logp.gather(-1, y.clamp(min=0).long().unsqueeze(-1)).squeeze(-1)
        return (nll * valid).sum(dim=1) / valid.sum(dim=1).clamp(min=1)

    def real_rows(self, y):
        return np.asarray(y) >= 0

    def metric(self, pred, y, descriptors):
        """Accuracy over each party's real examples: (P,)."""
        valid = y >= 0
        hit = (pred.argmax(dim=-1) == y) & valid
        return hit.sum(dim=1).float() / valid.sum(dim=1).clamp(min=1).float()
