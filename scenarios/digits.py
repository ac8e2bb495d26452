"""K-subset digit classification (paper 5.2): each task separates K of the ten digits.

Descriptor = the 10-bit mask of the task's digits. Nets are [in-100-10] ReLU with a softmax over the
10 outputs; a party uses its descriptor at training and prediction time: the loss is the
cross-entropy over its K allowed logits and the prediction is the argmax over them. Because that
lives in the scenario's ``loss`` and ``metric``, every method (fusion, baselines, cold start) gets it
the same way.

Data: the train split is shared out among the training parties without overlap (:func:`share_out`):
each digit's train images, shuffled with the run seed, are cut into equal disjoint blocks, one per
training party that has the digit, in party-id order. A training party pretrains on
``train_per_class`` images of each of its digits drawn from its blocks (DATA stream; 0, the default =
the largest size every training party's share allows), so no image is in two parties' private data.
A test party's k-shot set is ``k`` images per digit drawn from the whole train split (SHOTS stream).
The evaluation set is ``eval_per_class`` images per digit from the test split (EVAL stream), never
used for training. All parties of a run have the same K, so their sets have equal sizes (batched training).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from fusion.lazy import torch
from fusion.models.spec import Spec
from scenarios import digit_sources
from scenarios.base import Scenario, Stream, model_families, model_specs, party_rng

N_CLASSES = 10


@dataclass(frozen=True)
class DigitsOptions:
    """``[scenario]`` keys of ``digits``."""

    k: int = 2  # K: digits per task, 2..5
    source: str = "sklearn"  # "sklearn" (8x8, offline) or "mnist" (idx .gz files in data_dir)
    data_dir: str = ""  # for source = "mnist": the folder with the idx files (or its parent with mnist/)
    hidden: tuple[int, ...] = (100,)  # hidden widths: [in-100-10] by default
    archs: tuple[str, ...] = ()  # architecture families (mlp-<w>, cnn-s, cnn-m) instead of ``hidden``; several: each
    # party's drawn from (seed, party id)
    target_arch: str = ""  # the family novel parties receive ("": their own)
    train_per_class: int = 0  # pretraining images per digit of a party (0 = its whole disjoint share)
    eval_per_class: int = 30  # held-out test images per digit of a party

    @property
    def specs(self) -> tuple[Spec, Spec]:
        """The parties' model (``archs``' family, or ``[in, *hidden, 10]``) and the novel parties' (``target_arch``)."""
        n_in = digit_sources.SOURCES[self.source][0]
        return model_specs(self.archs, self.target_arch, self.hidden, n_in, N_CLASSES)

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
        if not 2 <= self.k <= 5:
            raise ValueError(f"scenario.k (digits per task) must be in 2..5, got {self.k}")
        if self.source not in digit_sources.SOURCES:
            raise ValueError(f"scenario.source must be one of {', '.join(digit_sources.SOURCES)}, got {self.source!r}")
        self.specs  # noqa: B018  (checks archs and target_arch)
        if self.train_per_class < 0 or self.eval_per_class < 1:
            raise ValueError("scenario.train_per_class must be >= 0 (0 = whole share), scenario.eval_per_class >= 1")


def _draw(pools: list[np.ndarray], digits: np.ndarray, per_class: int, rng: np.random.Generator) -> np.ndarray:
    """``per_class`` indices of each digit's pool without replacement, interleaved: slot j*K + c is the j-th of
    digit c. So the first ``m*K`` indices hold exactly ``m`` per digit (nested shot sets)."""
    picks = np.stack([rng.choice(pools[d], per_class, replace=False) for d in digits], axis=1)  # (per_class, K)
    return picks.reshape(-1)


@dataclass(frozen=True)
class Shares:
    """Disjoint train-split blocks of one run: ``blocks[p][c]`` = indices of training party ``p``'s c-th digit."""

    blocks: tuple[tuple[np.ndarray, ...], ...]

    @property
    def smallest(self) -> int:
        return min(len(b) for own in self.blocks for b in own)


@lru_cache(maxsize=4)
def share_out(options: DigitsOptions, seed: int, n_train: int) -> Shares:
    """Cut each digit's train images (shuffled with the run seed) into equal blocks, one per training party
    that has it (parties ``0..n_train-1`` in id order); a function of (options, seed, n_train) only."""
    scenario = DigitsScenario(options)
    pools = scenario.data.pools("train")
    digits = [scenario.digits_of(scenario.party_descriptor(seed, p)) for p in range(n_train)]
    users = np.bincount(np.concatenate(digits), minlength=N_CLASSES)
    order = [np.random.default_rng([seed, 0xD161, d]).permutation(pools[d]) for d in range(N_CLASSES)]
    size = [len(pools[d]) // max(1, users[d]) for d in range(N_CLASSES)]
    taken = np.zeros(N_CLASSES, dtype=np.int64)
    blocks = []
    for own in digits:
        mine = []
        for d in own:
            mine.append(order[d][taken[d] * size[d] : (taken[d] + 1) * size[d]])
            taken[d] += 1
        blocks.append(tuple(mine))
    return Shares(tuple(blocks))


class DigitsScenario(Scenario):
    """Descriptor (10,) 0/1 mask; ``x`` (N, in) float32 in [0, 1]; ``y`` (N,) int64 digits; metric = accuracy."""

    name = "digits"
    metric_name = "accuracy"
    lower_is_better = False
    readout_shots = True

    def __init__(self, options: DigitsOptions = DigitsOptions()) -> None:
        super().__init__(*options.specs, families=options.families, own_target=not options.target_arch)
        self.options = options
        self.run: tuple[int, int, int] | None = None  # (seed, n_train, n_test), set by prepare

    @property
    def data(self) -> digit_sources.DigitData:
        return digit_sources.load(self.options.source, self.options.data_dir)

    def prepare(self, seed: int, n_train: int, n_test: int) -> None:
        data, opt = self.data, self.options
        if data.n_inputs != self.spec.fan_in:
            raise ValueError(
                f"scenario.source = {opt.source!r} gave {data.n_inputs} inputs, expected {self.spec.fan_in}"
            )
        have = min(len(p) for p in data.pools("test"))
        if opt.eval_per_class > have:
            raise ValueError(
                f"scenario.eval_per_class = {opt.eval_per_class} but the {opt.source} test split has only {have} of "
                "some digit"
            )
        self.run = (int(seed), int(n_train), int(n_test))
        share = self.shares.smallest
        if share < max(1, opt.train_per_class):
            raise ValueError(
                f"scenario.train_per_class = {opt.train_per_class} but with {n_train} training parties of "
                f"{opt.k} digits the {opt.source} train split gives some party only {share} images of a digit "
                "(the parties' data are disjoint)"
            )

    @property
    def shares(self) -> Shares:
        if self.run is None:
            raise RuntimeError("digits: call prepare(seed, n_train, n_test) first (the parties share the train split)")
        return share_out(self.options, *self.run[:2])

    @property
    def train_per_class(self) -> int:
        """Pretraining images per digit of a training party (``train_per_class``, or 0: the smallest share)."""
        return self.options.train_per_class or self.shares.smallest

    @property
    def max_shots(self) -> int:
        """Shots are per digit, drawn from the train split."""
        return min(len(p) for p in self.data.pools("train"))

    def shot_examples(self, k: int) -> int:
        return k * self.options.k

    @property
    def shot_group(self) -> int:
        """A shot draw interleaves the K digits (``shot_data``): folds hold out whole rounds of K."""
        return self.options.k

    @staticmethod
    def digits_of(descriptor: np.ndarray) -> np.ndarray:
        return np.flatnonzero(np.asarray(descriptor) > 0.5)

    def descriptor(self, rng):
        mask = np.zeros(N_CLASSES)
        mask[rng.choice(N_CLASSES, self.options.k, replace=False)] = 1.0
        return mask

    def party_train_data(self, seed, party_id, descriptor):
        """``train_per_class`` images of each of its digits from the training party's own blocks."""
        if self.run is None or seed != self.run[0] or not 0 <= party_id < self.run[1]:
            raise ValueError(f"digits: {party_id} (seed {seed}) is not a training party of the prepared run {self.run}")
        blocks = self.shares.blocks[party_id]
        idx = _draw(list(blocks), np.arange(len(blocks)), self.train_per_class, party_rng(seed, party_id, Stream.DATA))
        return self.data.train_x[idx], self.data.train_y[idx]

    def probe_inputs(self):
        """512 unlabeled images of all digits from the train split (a fixed draw; labels never used)."""
        x = self.data.train_x
        return x[np.random.default_rng(12345).choice(len(x), min(512, len(x)), replace=False)]

    def _sample(self, descriptor, split: str, per_class: int, rng):
        data = self.data
        idx = _draw(data.pools(split), self.digits_of(descriptor), per_class, rng)
        x, y = (data.train_x, data.train_y) if split == "train" else (data.test_x, data.test_y)
        return x[idx], y[idx]

    def train_data(self, descriptor, rng):
        raise TypeError("digits training parties own disjoint shares: use party_train_data(seed, party_id, ...)")

    def shot_data(self, descriptor, k, rng):
        """``k`` images per digit (``k*K`` in all), interleaved so the first ``m*K`` are ``m`` per digit."""
        return self._sample(descriptor, "train", k, rng)

    def eval_data(self, descriptor, rng):
        return self._sample(descriptor, "test", self.options.eval_per_class, rng)

    @staticmethod
    def _masked(pred: torch.Tensor, descriptors: torch.Tensor) -> torch.Tensor:
        """Logits (P, N, 10) with the digits outside each party's task set to -inf."""
        allowed = (descriptors > 0.5)[:, None, :]
        return pred.masked_fill(~allowed, float("-inf"))

    def loss(self, pred, y, descriptors):
        """Cross-entropy over the party's K allowed logits, mean over its examples: (P,)."""
        logp = torch.log_softmax(self._masked(pred, descriptors), dim=-1)
        return -logp.gather(-1, y.long().unsqueeze(-1)).squeeze(-1).mean(dim=1)

    def metric(self, pred, y, descriptors):
        """Accuracy of the argmax over the party's K digits: (P,)."""
        guess = self._masked(pred, descriptors).argmax(dim=-1)
        return (guess == y).float().mean(dim=1)
