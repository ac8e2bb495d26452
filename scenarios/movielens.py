"""Cold-start recommendation on MovieLens-100K (paper 5.3): parties are users, models are user vectors.

Run protocol (everything derives from the run seed; nothing depends on the sharding):

- Users with at least 2 ratings, sorted by id and shuffled with the run seed; party ``p`` is user
  ``order[p]``. Parties ``0..n_train-1`` are the seen users, the next ``n_test`` the unseen (test) users.
- A test user's ratings are split by its EVAL stream: ``eval_fraction`` of them (at least one) are held
  out for the metric; the rest are its *known* ratings (descriptor and shot pool). A seen user's
  ratings are all known.
- Item embeddings come from a biased matrix factorization (ALS, ``dim`` factors) over the seen users'
  ratings only, seeded with the run seed, cached per process.
- A party's model is a linear model ``MLPSpec((dim, 1))`` over item embeddings: weights = its user
  vector, bias = its user bias; it predicts ``rating - mu - item_bias``. Pretraining on its own
  ratings minimizes the same ridge objective as the factorization's user step (the ridge enters as
  2*dim pseudo-rows in the party's data, so batched Adam training needs no special case).
- The descriptor is built from the user's known ratings on the ``context_items`` items most rated by
  seen users (``descriptor``, one function of :data:`DESCRIPTORS`): ``"embedding"`` (default) = those
  ratings fitted by a ridge user vector and bias over the context items' embeddings (``dim + 1``
  values: the user's context ratings projected onto the item embeddings); ``"svd"`` = the centred
  context ratings projected on the ``dim`` leading right singular vectors of the seen users' context
  ratings; ``"ratings"`` = the raw ratings (C values). Where a rating vector is used, an unrated
  context item is 0 (``missing = "zero"``) or the user's mean known rating (``missing = "user_mean"``).
  Everything a descriptor needs (embeddings, singular vectors) comes from the seen users only.
- k shots = k of the user's known ratings (its SHOTS stream, nested); metric = RMSE on its held-out
  ratings (per user; the summary averages users).

``y`` is (N, 3) float32: [target, weight, real]; padding rows have weight 0, pseudo-rows real 0.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from fusion.lazy import torch
from fusion.models.spec import MLPSpec
from scenarios import movielens_data
from scenarios.base import Scenario, Stream, party_rng
from scenarios.matrix_factorization import Factorization, fit_als, ridge_solve

MISSING = ("zero", "user_mean")


@dataclass(frozen=True)
class MovieLensOptions:
    """``[scenario]`` keys of ``movielens``."""

    data_dir: str = ""  # the ml-100k folder (u.data, u.item, u.user); required
    dim: int = 20  # embedding size (paper: 20 / 30 / 40)
    context_items: int = 300  # C: descriptors use the ratings on the C most-rated items (paper: 300)
    descriptor: str = "embedding"  # "embedding", "svd" or "ratings" (see DESCRIPTORS)
    missing: str = "zero"  # rating-vector value of an unrated context item: "zero" or "user_mean"
    eval_fraction: float = 0.2  # share of a test user's ratings held out for the metric
    reg: float = 0.1  # ridge weight (times the user's / item's rating count), factorization and pretraining
    als_iters: int = 15

    def __post_init__(self) -> None:
        if self.dim < 1 or self.context_items < 1 or self.als_iters < 1:
            raise ValueError("scenario.dim, scenario.context_items and scenario.als_iters must be >= 1")
        if self.descriptor not in DESCRIPTORS:
            raise ValueError(f"scenario.descriptor must be one of {', '.join(DESCRIPTORS)}, got {self.descriptor!r}")
        if self.missing not in MISSING:
            raise ValueError(f"scenario.missing must be one of {', '.join(MISSING)}, got {self.missing!r}")
        if not 0 < self.eval_fraction < 1:
            raise ValueError(f"scenario.eval_fraction must be in (0, 1), got {self.eval_fraction}")
        if not self.reg > 0:
            raise ValueError(f"scenario.reg must be > 0, got {self.reg}")


@dataclass(frozen=True)
class World:
    """One run's fixed facts: party -> user, known / held-out rating rows, the factorization, context items."""

    users: np.ndarray  # (n_train + n_test,) user index of each party
    known: list[np.ndarray]  # rating rows each party may use
    held_out: list[np.ndarray]  # rating rows of each test party's metric (empty for seen users)
    mf: Factorization
    context: np.ndarray  # (C,) item indices
    basis: np.ndarray  # (C, dim) leading right singular vectors of the seen users' centred context ratings
    centre: np.ndarray  # (C,) the seen users' mean context ratings
    pad_train: int
    pad_eval: int
    n_train: int


@lru_cache(maxsize=4)
def _world(options: MovieLensOptions, seed: int, n_train: int, n_test: int) -> World:
    data = movielens_data.load(options.data_dir)
    rows_of = data.by_user()
    eligible = np.array([u for u in range(data.n_users) if len(rows_of[u]) >= 2], dtype=np.int64)
    if n_train + n_test > len(eligible):
        raise ValueError(
            f"parties + test_parties = {n_train + n_test} but {options.data_dir} has only {len(eligible)} users "
            "with at least 2 ratings"
        )
    if options.context_items > data.n_items:
        raise ValueError(f"scenario.context_items = {options.context_items} but the data has {data.n_items} items")
    users = np.random.default_rng([seed, 0x6D6C]).permutation(eligible)[: n_train + n_test]
    known, held_out = [], []
    for p, u in enumerate(users):
        rows = rows_of[u]
        if p < n_train:
            known.append(rows)
            held_out.append(rows[:0])
            continue
        perm = party_rng(seed, p, Stream.EVAL).permutation(rows)
        n_eval = max(1, int(round(options.eval_fraction * len(rows))))
        held_out.append(np.sort(perm[:n_eval]))
        known.append(np.sort(perm[n_eval:]))
    seen = np.concatenate(known[:n_train])
    mf = fit_als(
        data.user[seen], data.item[seen], data.rating[seen], data.n_users, data.n_items,
        options.dim, options.reg, options.als_iters, seed,
    )  # fmt: skip
    counts = np.bincount(data.item[seen], minlength=data.n_items)
    context = np.argsort(-counts, kind="stable")[: options.context_items]
    pad_train = max(len(r) for r in known[:n_train]) + 2 * options.dim
    pad_eval = max([len(r) for r in held_out[n_train:]] or [1])
    seen_ratings = np.stack([context_ratings(data, rows, context, options.missing) for rows in known[:n_train]])
    centre = seen_ratings.mean(axis=0)
    basis = np.linalg.svd(seen_ratings - centre, full_matrices=False)[2][: options.dim].T
    return World(users, known, held_out, mf, context, basis, centre, pad_train, pad_eval, n_train)


def context_ratings(data: movielens_data.Ratings, rows: np.ndarray, context: np.ndarray, missing: str) -> np.ndarray:
    """The ratings of rows ``rows`` on the ``context`` items: (C,); unrated = 0 or the rows' mean rating."""
    fill = data.rating[rows].mean() if missing == "user_mean" and len(rows) else 0.0
    out = np.full(len(context), fill)
    slot = {int(item): j for j, item in enumerate(context)}
    for item, rating in zip(data.item[rows], data.rating[rows]):
        if int(item) in slot:
            out[slot[int(item)]] = rating
    return out


def _ratings(w: World, data: movielens_data.Ratings, rows: np.ndarray, opt: MovieLensOptions) -> np.ndarray:
    """(C,): the raw context ratings."""
    return context_ratings(data, rows, w.context, opt.missing)


def _svd(w: World, data: movielens_data.Ratings, rows: np.ndarray, opt: MovieLensOptions) -> np.ndarray:
    """(dim,): the centred context ratings on the seen users' leading singular directions."""
    return (context_ratings(data, rows, w.context, opt.missing) - w.centre) @ w.basis


def own_fit(mf: Factorization, data: movielens_data.Ratings, rows: np.ndarray, reg: float) -> np.ndarray:
    """The user vector and bias (dim + 1,) of the rating rows ``rows`` under ``mf``'s item embeddings: the ridge fit of
    their residual ratings (rating - mu - item bias), the ridge ``reg`` times the count (the pretraining objective)."""
    items = data.item[rows]
    return ridge_solve(mf.items[items], data.rating[rows] - mf.mu - mf.item_bias[items], reg)


def model_rmse(mf: Factorization, data: movielens_data.Ratings, rows: np.ndarray, z: np.ndarray) -> float:
    """RMSE of the user model ``z`` (dim + 1,) under ``mf`` on the rating rows ``rows``."""
    items = data.item[rows]
    pred = mf.mu + mf.item_bias[items] + mf.items[items] @ z[:-1] + z[-1]
    return float(np.sqrt(((pred - data.rating[rows]) ** 2).mean()))


def _embedding(w: World, data: movielens_data.Ratings, rows: np.ndarray, opt: MovieLensOptions) -> np.ndarray:
    """(dim + 1,): :func:`own_fit` of the user's rated context items."""
    return own_fit(w.mf, data, rows[np.isin(data.item[rows], w.context)], opt.reg)


# descriptor name -> (world, ratings, the user's known rows, options) -> descriptor
DESCRIPTORS: dict[str, Callable[[World, movielens_data.Ratings, np.ndarray, MovieLensOptions], np.ndarray]] = {
    "embedding": _embedding,
    "svd": _svd,
    "ratings": _ratings,
}


class MovieLensScenario(Scenario):
    """Descriptor from the context ratings (see ``DESCRIPTORS``); ``x`` (N, dim) item embeddings; ``y`` (N, 3)."""

    name = "movielens"
    metric_name = "rmse"
    lower_is_better = True

    def __init__(self, options: MovieLensOptions = MovieLensOptions()) -> None:
        super().__init__(MLPSpec((options.dim, 1)))
        self.options = options
        self.run: tuple[int, int, int] | None = None  # (seed, n_train, n_test), set by prepare

    @classmethod
    def federated_defaults(cls, options):
        """Full batches: a party's ridge pseudo-rows (``party_train_data``) are its prior, part of every step."""
        return {"batch_size": 0}

    def prepare(self, seed: int, n_train: int, n_test: int) -> None:
        self.run = (int(seed), int(n_train), int(n_test))
        self.world  # noqa: B018 - reads the folder and checks the sizes now, in the driver

    @property
    def world(self) -> World:
        if self.run is None:
            raise RuntimeError("movielens: call prepare(seed, n_train, n_test) first (the run decides who is seen)")
        return _world(self.options, *self.run)

    @property
    def data(self) -> movielens_data.Ratings:
        return movielens_data.load(self.options.data_dir)

    @property
    def max_shots(self) -> int | None:
        if self.run is None:
            return None
        w = self.world
        return min(len(r) for r in w.known[w.n_train :]) if len(w.known) > w.n_train else None

    def _check_party(self, seed: int, party_id: int) -> World:
        w = self.world
        if seed != self.run[0] or not 0 <= party_id < len(w.users):
            raise ValueError(f"movielens: party {party_id} (seed {seed}) is not part of the prepared run {self.run}")
        return w

    def _rows(self, w: World, rows: np.ndarray, pad: int = 0) -> tuple[np.ndarray, np.ndarray]:
        """Rating rows -> x (max(n, pad), dim) item embeddings, y (.., 3) [rating - mu - item bias, 1, 1]."""
        data, mf = self.data, w.mf
        items = data.item[rows]
        n = max(len(rows), pad)
        x = np.zeros((n, self.options.dim), np.float32)
        y = np.zeros((n, 3), np.float32)
        x[: len(rows)] = mf.items[items]
        y[: len(rows), 0] = data.rating[rows] - mf.mu - mf.item_bias[items]
        y[: len(rows), 1:] = 1.0
        return x, y

    def probe_inputs(self):
        """Every item's embedding (n_items, dim): the inputs a user's model is queried at."""
        return self.world.mf.items.astype(np.float32)

    def party_descriptor(self, seed, party_id):
        w = self._check_party(seed, party_id)
        return DESCRIPTORS[self.options.descriptor](w, self.data, w.known[party_id], self.options)

    def party_train_data(self, seed, party_id, descriptor):
        """Own known ratings, then 2*dim ridge pseudo-rows (x = ±sqrt(dim) e_j, y = 0), then zero padding."""
        w = self._check_party(seed, party_id)
        rows, dim = w.known[party_id], self.options.dim
        x, y = self._rows(w, rows, w.pad_train)
        n = len(rows)
        eye = np.sqrt(dim) * np.eye(dim, dtype=np.float32)
        x[n : n + 2 * dim] = np.concatenate([eye, -eye])
        y[n : n + 2 * dim] = [0.0, self.options.reg * n / (2 * dim), 0.0]
        return x, y

    def party_shot_data(self, seed, party_id, descriptor, k):
        w = self._check_party(seed, party_id)
        rows = party_rng(seed, party_id, Stream.SHOTS).permutation(w.known[party_id])
        if k > len(rows):
            raise ValueError(f"movielens: party {party_id} has {len(rows)} known ratings, {k} shots asked")
        return self._rows(w, rows[:k])

    def party_eval_data(self, seed, party_id, descriptor):
        w = self._check_party(seed, party_id)
        return self._rows(w, w.held_out[party_id], w.pad_eval)

    def oracle_rmse(self, party_ids) -> np.ndarray:
        """Reference: a factorization fitted on the seen users' ratings plus these test users' known ratings,
        evaluated on their held-out ratings. RMSE per party (the order of ``party_ids``)."""
        w, data, opt = self.world, self.data, self.options
        rows = np.concatenate([*w.known[: w.n_train], *[w.known[p] for p in party_ids]])
        mf = fit_als(
            data.user[rows], data.item[rows], data.rating[rows], data.n_users, data.n_items,
            opt.dim, opt.reg, opt.als_iters, self.run[0],
        )  # fmt: skip
        out = []
        for p in party_ids:
            held = w.held_out[p]
            err = mf.predict(data.user[held], data.item[held]) - data.rating[held]
            out.append(float(np.sqrt((err**2).mean())))
        return np.asarray(out)

    def own_fit_rmse(self, party_ids, context_only: bool) -> np.ndarray:
        """Reference: each user's :func:`own_fit` on its known ratings, of the context items only (``context_only``:
        what every 0-shot method is told, the ``embedding`` descriptor) or of all items (what the oracle is told),
        evaluated on its held-out ratings. RMSE per party (the order of ``party_ids``)."""
        w, data, opt = self.world, self.data, self.options
        fit = (
            (lambda rows: _embedding(w, data, rows, opt))
            if context_only
            else (lambda rows: own_fit(w.mf, data, rows, opt.reg))
        )
        return np.asarray([model_rmse(w.mf, data, w.held_out[p], fit(w.known[p])) for p in party_ids])

    # Parties are fixed users, not draws: the per-rng entry points do not apply.
    def _not_drawn(self, *_args):
        raise TypeError("movielens parties are fixed users: use party_descriptor / party_*_data(seed, party_id, ...)")

    descriptor = train_data = shot_data = eval_data = _not_drawn

    def loss(self, pred, y, descriptors):
        """Weighted squared error (ratings and ridge pseudo-rows) per real rating: (P,)."""
        err = pred[..., 0] - y[..., 0]
        weight, real = y[..., 1], y[..., 2]
        return (weight * err**2).sum(dim=1) / (weight * real).sum(dim=1).clamp_min(1.0)

    def metric(self, pred, y, descriptors):
        """RMSE over each party's real rows: (P,)."""
        err = pred[..., 0] - y[..., 0]
        real = y[..., 2] * (y[..., 1] > 0)
        return torch.sqrt((real * err**2).sum(dim=1) / real.sum(dim=1).clamp_min(1.0))
