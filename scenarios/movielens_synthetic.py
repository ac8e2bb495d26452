"""A synthetic folder in the MovieLens-100K file formats, for tests and benchmarks without the real data.

Ratings are low-rank plus noise: ``round(3.5 + b_u + b_i + p_u . q_i + noise)`` clipped to 1..5, with
``p_u``, ``q_i`` of rank ``rank``. Each user rates ``min_ratings`` to ``max_ratings`` items; item
popularity is Zipf-like (a few items are rated by many users, like the real data). Defaults match ml-100k's sizes
(943 users, 1,682 items, ~100,000 ratings).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

GENRES = 19


def write_synthetic_ml100k(
    folder: str | Path,
    n_users: int = 943,
    n_items: int = 1682,
    n_ratings: int = 100_000,
    rank: int = 5,
    noise: float = 0.5,
    min_ratings: int = 20,
    max_ratings: int = 737,
    seed: int = 0,
) -> Path:
    """Write ``u.data``, ``u.item`` (latin-1) and ``u.user`` into ``folder``; returns the folder."""
    if n_ratings < n_users * min_ratings or n_ratings > n_users * n_items:
        raise ValueError(f"n_ratings must be in [{n_users * min_ratings}, {n_users * n_items}], got {n_ratings}")
    rng = np.random.default_rng(seed)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    p = rng.normal(0, 1 / np.sqrt(rank), (n_users, rank))
    q = rng.normal(0, 1, (n_items, rank))
    b_u, b_i = rng.normal(0, 0.4, n_users), rng.normal(0, 0.5, n_items)
    popularity = 1.0 / np.arange(1, n_items + 1) ** 0.8
    popularity = popularity[rng.permutation(n_items)]
    activity = rng.pareto(1.5, n_users) + 1.0
    counts = min_ratings + np.floor(activity / activity.sum() * (n_ratings - n_users * min_ratings)).astype(int)
    cap = min(max_ratings, n_items)
    counts = np.minimum(counts, cap)
    while counts.sum() < n_ratings:  # hand out what flooring and the cap left, one rating per user at a time
        room = np.flatnonzero(counts < cap)
        if not len(room):
            raise ValueError(f"n_ratings = {n_ratings} does not fit {n_users} users of at most {cap} ratings")
        counts[rng.choice(room, min(len(room), n_ratings - counts.sum()), replace=False)] += 1
    lines = []
    for u in range(n_users):
        items = rng.choice(n_items, counts[u], replace=False, p=popularity / popularity.sum())
        score = 3.5 + b_u[u] + b_i[items] + q[items] @ p[u] + noise * rng.standard_normal(len(items))
        ratings = np.clip(np.rint(score), 1, 5).astype(int)
        stamps = 874_724_710 + rng.integers(0, 20_000_000, len(items))
        lines += [f"{u + 1}\t{i + 1}\t{r}\t{t}" for i, r, t in zip(items, ratings, stamps)]
    order = rng.permutation(len(lines))
    (folder / "u.data").write_text("\n".join(lines[j] for j in order) + "\n")
    flags = "|".join(["0"] * GENRES)
    items_text = [
        f"{i + 1}|Synthetic Film {i + 1} – Café ({1950 + i % 50})|01-Jan-1995||http://x|{flags}" for i in range(n_items)
    ]
    (folder / "u.item").write_bytes(("\n".join(items_text) + "\n").encode("latin-1", errors="replace"))
    occupations = ("student", "engineer", "artist", "doctor", "other")
    users_text = [
        f"{u + 1}|{18 + u % 50}|{'MF'[u % 2]}|{occupations[u % len(occupations)]}|{10000 + u}" for u in range(n_users)
    ]
    (folder / "u.user").write_text("\n".join(users_text) + "\n")
    return folder
