"""Reading a user-supplied MovieLens-100K folder: ``u.data`` (tab-separated ratings), ``u.item`` and ``u.user``.

``u.data``: ``user<TAB>item<TAB>rating<TAB>timestamp``; ``u.item`` and ``u.user``: ``|``-separated,
latin-1, the id first. Ids are mapped to 0-based indices in sorted order. Loaded once per process.
The data may not be redistributed: the project never ships it (tests build a synthetic folder).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

FILES = ("u.data", "u.item", "u.user")


@dataclass(frozen=True)
class Ratings:
    """All ratings: ``user`` (n,) and ``item`` (n,) 0-based int64 indices, ``rating`` (n,) float64.

    ``user_ids`` / ``item_ids`` give the file's id of each index.
    """

    user: np.ndarray
    item: np.ndarray
    rating: np.ndarray
    user_ids: np.ndarray
    item_ids: np.ndarray

    @property
    def n_users(self) -> int:
        return len(self.user_ids)

    @property
    def n_items(self) -> int:
        return len(self.item_ids)

    def by_user(self) -> list[np.ndarray]:
        """Row indices of each user's ratings, in file order: ``n_users`` arrays."""
        order = np.argsort(self.user, kind="stable")
        bounds = np.searchsorted(self.user[order], np.arange(self.n_users + 1))
        return [order[a:b] for a, b in zip(bounds[:-1], bounds[1:])]


def _lines(path: Path) -> list[tuple[int, str]]:
    """(line number, line) of every non-empty line of a latin-1 text file."""
    try:
        text = path.read_text(encoding="latin-1")
    except OSError as exc:
        raise ValueError(f"{path}: cannot read: {exc.strerror}") from None
    return [(number, line) for number, line in enumerate(text.splitlines(), 1) if line.strip()]


def _ids(path: Path) -> np.ndarray:
    """The first field of every non-empty line of a ``|``-separated latin-1 file, as ints."""
    ids = []
    for number, line in _lines(path):
        head = line.split("|", 1)[0]
        try:
            ids.append(int(head))
        except ValueError:
            raise ValueError(f"{path}:{number}: expected an integer id before the first '|', got {head!r}") from None
    if not ids:
        raise ValueError(f"{path}: no rows")
    return np.asarray(ids, dtype=np.int64)


def _ratings(path: Path) -> np.ndarray:
    """``u.data`` as an (n, 4) int64 array."""
    rows = []
    for number, line in _lines(path):
        parts = line.split("\t")
        try:
            if len(parts) != 4:
                raise ValueError
            rows.append([int(p) for p in parts])
        except ValueError:
            raise ValueError(
                f"{path}:{number}: expected user<TAB>item<TAB>rating<TAB>timestamp, got {line!r}"
            ) from None
    if not rows:
        raise ValueError(f"{path}: no ratings")
    return np.asarray(rows, dtype=np.int64)


@lru_cache(maxsize=2)
def load(data_dir: str) -> Ratings:
    """The folder's ratings; a ``ValueError`` names the missing or malformed file."""
    if not data_dir:
        raise ValueError("scenario.data_dir must name an ml-100k folder (u.data, u.item, u.user)")
    folder = Path(data_dir).expanduser()
    missing = [name for name in FILES if not (folder / name).is_file()]
    if missing:
        raise ValueError(f"scenario.data_dir = {data_dir!r}: no {', '.join(missing)} there (an ml-100k folder)")
    raw = _ratings(folder / "u.data")
    users, items = np.unique(_ids(folder / "u.user")), np.unique(_ids(folder / "u.item"))
    for col, known, name in ((0, users, "u.user"), (1, items, "u.item")):
        unknown = np.setdiff1d(raw[:, col], known)
        if len(unknown):
            kind = "user" if col == 0 else "item"
            raise ValueError(f"{folder / 'u.data'}: {kind} {unknown[0]} is not listed in {folder / name}")
    bad = (raw[:, 2] < 1) | (raw[:, 2] > 5)
    if bad.any():
        raise ValueError(f"{folder / 'u.data'}: rating {raw[bad][0, 2]} outside 1..5 (line {int(bad.argmax()) + 1})")
    return Ratings(
        user=np.searchsorted(users, raw[:, 0]),
        item=np.searchsorted(items, raw[:, 1]),
        rating=raw[:, 2].astype(np.float64),
        user_ids=users,
        item_ids=items,
    )
