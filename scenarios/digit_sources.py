"""Where the digit images come from: scikit-learn's 8x8 ``load_digits`` (offline) or MNIST idx files.

Every source returns a fixed train/test split of images scaled to [0, 1]; the split never depends on
the run seed, so held-out test images are the same for every run. Loaded once per process.
"""

from __future__ import annotations

import gzip
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np


@dataclass(frozen=True)
class DigitData:
    """``train_x`` (N, in) float32 in [0, 1], ``train_y`` (N,) int64 digits; the same for ``test_*``."""

    train_x: np.ndarray
    train_y: np.ndarray
    test_x: np.ndarray
    test_y: np.ndarray

    @property
    def n_inputs(self) -> int:
        return self.train_x.shape[1]

    def pools(self, split: str) -> list[np.ndarray]:
        """Indices of each digit 0..9 in ``split`` ("train" or "test"): 10 arrays."""
        y = self.train_y if split == "train" else self.test_y
        return [np.flatnonzero(y == d) for d in range(10)]


def _sklearn(data_dir: str) -> DigitData:
    """1,797 8x8 digits; a fixed per-class 2/3 train, 1/3 test split (seeded 0, independent of the run)."""
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise ValueError("scenario.source = 'sklearn' needs scikit-learn: pip install scikit-learn") from None
    bunch = load_digits()
    x, y = (bunch.data / 16.0).astype(np.float32), bunch.target.astype(np.int64)
    rng = np.random.default_rng(0)
    train = np.zeros(len(y), dtype=bool)
    for d in range(10):
        idx = rng.permutation(np.flatnonzero(y == d))
        train[idx[: (2 * len(idx)) // 3]] = True
    return DigitData(x[train], y[train], x[~train], y[~train])


MNIST_FILES = {
    "train_x": "train-images-idx3-ubyte.gz",
    "train_y": "train-labels-idx1-ubyte.gz",
    "test_x": "t10k-images-idx3-ubyte.gz",
    "test_y": "t10k-labels-idx1-ubyte.gz",
}


def read_idx(path: Path) -> np.ndarray:
    """An idx file (gzip or plain): uint8 array of the shape its header gives."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as fh:
            raw = fh.read()
    except (OSError, EOFError) as exc:
        raise ValueError(f"{path}: cannot read idx file: {exc}") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise ValueError(f"{path}: not an unsigned-byte idx file")
    ndim = raw[3]
    dims = [int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    body = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if body.size != int(np.prod(dims)):
        raise ValueError(f"{path}: header says {dims} but the file holds {body.size} bytes")
    return body.reshape(dims)


def mnist_folder(data_dir: str) -> Path:
    """``data_dir`` itself or its ``mnist/`` subfolder, whichever holds the four idx files."""
    if not data_dir:
        raise ValueError("scenario.source = 'mnist' needs scenario.data_dir (a folder with the MNIST idx .gz files)")
    base = Path(data_dir).expanduser()
    for folder in (base, base / "mnist"):
        if all((folder / name).is_file() for name in MNIST_FILES.values()):
            return folder
    raise ValueError(f"scenario.data_dir = {data_dir!r}: no MNIST idx files ({', '.join(MNIST_FILES.values())}) there")


def _mnist(data_dir: str) -> DigitData:
    """The standard 60,000 / 10,000 split; 28x28 = 784 inputs scaled to [0, 1]."""
    folder = mnist_folder(data_dir)
    arrays = {key: read_idx(folder / name) for key, name in MNIST_FILES.items()}
    for split in ("train", "test"):
        if len(arrays[f"{split}_x"]) != len(arrays[f"{split}_y"]):
            raise ValueError(f"{folder}: {split} images and labels differ in count")
    flat = lambda a: (a.reshape(len(a), -1) / 255.0).astype(np.float32)  # noqa: E731
    return DigitData(
        flat(arrays["train_x"]),
        arrays["train_y"].astype(np.int64),
        flat(arrays["test_x"]),
        arrays["test_y"].astype(np.int64),
    )


# name -> (inputs per image, loader)
SOURCES: dict[str, tuple[int, Callable[[str], DigitData]]] = {"sklearn": (64, _sklearn), "mnist": (784, _mnist)}


@lru_cache(maxsize=4)
def load(source: str, data_dir: str = "") -> DigitData:
    """The ``source``'s images (cached per process). Raises ``ValueError`` naming what is missing."""
    if source not in SOURCES:
        raise ValueError(f"scenario.source must be one of {', '.join(SOURCES)}, got {source!r}")
    return SOURCES[source][1](data_dir)
