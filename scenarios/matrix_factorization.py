"""Biased matrix factorization by alternating least squares (ALS with weighted ridge, Zhou et al. 2008).

rating(u, i) ~ mu + b_u + b_i + p_u . q_i. Each half-step solves, for every user (item) with ``n``
ratings, the ridge problem min ||A z - t||^2 + reg * n * ||z||^2 with ``A = [q_i, 1]`` (``[p_u, 1]``),
which is exactly the objective a party's pretraining minimizes for its own user vector. Deterministic
for a given seed.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Factorization:
    """``mu`` global mean; ``users`` (n_users, dim), ``user_bias`` (n_users,); ``items`` (n_items, dim),
    ``item_bias`` (n_items,)."""

    mu: float
    users: np.ndarray
    user_bias: np.ndarray
    items: np.ndarray
    item_bias: np.ndarray

    def predict(self, user: np.ndarray, item: np.ndarray) -> np.ndarray:
        """Predicted ratings of (user, item) index pairs: (n,)."""
        dot = (self.users[user] * self.items[item]).sum(axis=1)
        return self.mu + self.user_bias[user] + self.item_bias[item] + dot


def _groups(index: np.ndarray, n: int) -> list[np.ndarray]:
    order = np.argsort(index, kind="stable")
    bounds = np.searchsorted(index[order], np.arange(n + 1))
    return [order[a:b] for a, b in zip(bounds[:-1], bounds[1:])]


def ridge_solve(features: np.ndarray, target: np.ndarray, reg: float) -> np.ndarray:
    """argmin_z ||[features, 1] z - target||^2 + reg * n * ||z||^2 for ``features`` (n, dim): z (dim + 1,)."""
    a = np.concatenate([features, np.ones((len(features), 1))], axis=1)
    gram = a.T @ a + reg * max(len(a), 1) * np.eye(a.shape[1])
    return np.linalg.solve(gram, a.T @ target)


def fit_als(
    user: np.ndarray,
    item: np.ndarray,
    rating: np.ndarray,
    n_users: int,
    n_items: int,
    dim: int,
    reg: float = 0.1,
    iters: int = 15,
    seed: int = 0,
) -> Factorization:
    """Fit on the ratings ``(user, item, rating)`` (n,) each. Users / items without ratings get zeros."""
    rng = np.random.default_rng(seed)
    mu = float(rating.mean())
    users, items = np.zeros((n_users, dim)), rng.normal(0.0, 0.1, (n_items, dim))
    user_bias, item_bias = np.zeros(n_users), np.zeros(n_items)
    by_user, by_item = _groups(user, n_users), _groups(item, n_items)
    for _ in range(iters):
        for u, rows in enumerate(by_user):
            if len(rows):
                z = ridge_solve(items[item[rows]], rating[rows] - mu - item_bias[item[rows]], reg)
                users[u], user_bias[u] = z[:-1], z[-1]
        for i, rows in enumerate(by_item):
            if len(rows):
                z = ridge_solve(users[user[rows]], rating[rows] - mu - user_bias[user[rows]], reg)
                items[i], item_bias[i] = z[:-1], z[-1]
            else:
                items[i] = 0.0
    return Factorization(mu, users, user_bias, items, item_bias)
