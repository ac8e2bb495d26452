"""Where the images come from: scikit-learn's 8x8 ``load_digits`` (offline), or MNIST / Fashion-MNIST idx files.

Every source returns a fixed train/test split of images scaled to [0, 1]; the split never depends on
the run seed, so held-out test images are the same for every run. Loaded once per process.

Fashion-MNIST (Zalando Research, MIT) has MNIST's format and sizes (60,000 / 10,000 28x28 images, 10 classes).
Without ``scenario.data_dir`` it is read from Debian's ``dataset-fashion-mnist`` package
(:data:`SYSTEM_FOLDERS`); with it, from ``data_dir`` or its ``fashion-mnist/`` subfolder.
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


# where a source's idx files are looked for when no scenario.data_dir is given (Debian's packages)
SYSTEM_FOLDERS: dict[str, tuple[str, ...]] = {"mnist": (), "fashion-mnist": ("/usr/share/datasets/fashion-mnist",)}


def _has_idx(folder: Path) -> bool:
    names = MNIST_FILES.values()
    return all((folder / n).is_file() or (folder / n.removesuffix(".gz")).is_file() for n in names)


def idx_folder(data_dir: str, source: str = "mnist") -> Path:
    """``data_dir`` itself or its ``<source>/`` subfolder, whichever holds the four idx files (gzip or plain); without
    ``data_dir``, the system folders of :data:`SYSTEM_FOLDERS`."""
    if data_dir:
        base = Path(data_dir).expanduser()
        candidates = [base, base / source]
    else:
        candidates = [Path(f) for f in SYSTEM_FOLDERS.get(source, ())]
    for folder in candidates:
        if _has_idx(folder):
            return folder
    files = ", ".join(MNIST_FILES.values())
    if not data_dir:
        where = f" (looked in {', '.join(map(str, candidates))})" if candidates else ""
        raise ValueError(f"scenario.source = {source!r} needs scenario.data_dir (a folder with its idx files){where}")
    name = {"mnist": "MNIST", "fashion-mnist": "Fashion-MNIST"}.get(source, source)
    raise ValueError(f"scenario.data_dir = {data_dir!r}: no {name} idx files ({files}) there or in {source}/")


def _idx_source(data_dir: str, source: str) -> DigitData:
    """A 60,000 / 10,000 idx split of 28x28 = 784 inputs scaled to [0, 1] (MNIST's format)."""
    folder = idx_folder(data_dir, source)
    plain = lambda name: name if (folder / name).is_file() else name.removesuffix(".gz")  # noqa: E731
    arrays = {key: read_idx(folder / plain(name)) for key, name in MNIST_FILES.items()}
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


def _mnist(data_dir: str) -> DigitData:
    return _idx_source(data_dir, "mnist")


def _fashion_mnist(data_dir: str) -> DigitData:
    return _idx_source(data_dir, "fashion-mnist")


# name -> (inputs per image, loader)
SOURCES: dict[str, tuple[int, Callable[[str], DigitData]]] = {
    "sklearn": (64, _sklearn),
    "mnist": (784, _mnist),
    "fashion-mnist": (784, _fashion_mnist),
}


@lru_cache(maxsize=4)
def load(source: str, data_dir: str = "") -> DigitData:
    """The ``source``'s images (cached per process). Raises ``ValueError`` naming what is missing."""
    if source not in SOURCES:
        raise ValueError(f"scenario.source must be one of {', '.join(SOURCES)}, got {source!r}")
    return SOURCES[source][1](data_dir)


INPUTS = ("unit", "centered")  # x in [0, 1]; or (x - 0.5) / 0.5 in [-1, 1], PFLlib's Normalize(0.5, 0.5) transform


@lru_cache(maxsize=2)
def pooled(source: str, data_dir: str = "", inputs: str = "unit") -> tuple[np.ndarray, np.ndarray]:
    """The source's train images followed by its test images, as one pool: x (N, in) float32, y (N,) int64.

    ``inputs``: ``"unit"`` keeps [0, 1]; ``"centered"`` maps to [-1, 1] as PFLlib's transform does. Cached per
    process (a pool is built once, not per party).
    """
    if inputs not in INPUTS:
        raise ValueError(f"scenario.inputs must be one of {', '.join(INPUTS)}, got {inputs!r}")
    data = load(source, data_dir)
    x = np.concatenate([data.train_x, data.test_x])
    if inputs == "centered":
        x = (x - np.float32(0.5)) / np.float32(0.5)
    x.flags.writeable = False
    y = np.concatenate([data.train_y, data.test_y])
    y.flags.writeable = False
    return x, y
