"""Fault injection for tests and demonstrations: the ``[faults]`` table of a run config, and what it does to the
parties' training data and uploads.

Off by default. These hooks really break things (parameters become NaN or garbage) so that the screening and
recovery paths run exactly as they would after a real failure. Which parties are hit is drawn from each party's
fault stream (seed, party id); the crash of a shard's process is the party shard's own doing
(:mod:`actors.party_shard`), since it is a property of the process, not of the parties.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fusion.layout import ModelLayout
from fusion.streams import InitFn, Stream, party_inits, party_rng

CORRUPT_KINDS = ("random", "scaled", "flipped", "shuffled")


@dataclass(frozen=True)
class FaultConfig:
    """``[faults]`` keys.

    ``crash_shard``: index of a party shard whose process exits (``os._exit``) at the end of its
    first pretraining call, before returning, in its first incarnation only; Ray restarts the
    actor and retries the call. -1 = off.
    ``nan_parties``: training party ids whose pretrained parameters are replaced by NaN, as a
    diverged party would send them; they are quarantined (left out of fusion) and recorded.
    ``corrupt_share`` (0-0.5): that share of the training parties, each drawn from (seed, party id), uploads
    finite garbage of ``corrupt_kind``: ``random`` (an untrained model: fresh init weights), ``scaled`` (its
    trained weights ×100), ``flipped`` (its trained weights sign-flipped) or ``shuffled`` (trained on its own
    inputs with their targets shuffled).
    """

    crash_shard: int = -1
    nan_parties: tuple[int, ...] = ()
    corrupt_share: float = 0.0
    corrupt_kind: str = "random"

    def __post_init__(self) -> None:
        object.__setattr__(self, "nan_parties", tuple(self.nan_parties))
        if self.crash_shard < -1:
            raise ValueError(f"faults.crash_shard must be a shard index >= 0 (or -1 = off), got {self.crash_shard}")
        if any(not isinstance(p, int) or isinstance(p, bool) or p < 0 for p in self.nan_parties):
            raise ValueError(f"faults.nan_parties must be party ids >= 0, got {list(self.nan_parties)}")
        if not 0 <= self.corrupt_share <= 0.5:
            raise ValueError(f"faults.corrupt_share must be in [0, 0.5], got {self.corrupt_share}")
        if self.corrupt_kind not in CORRUPT_KINDS:
            raise ValueError(f"faults.corrupt_kind must be one of {list(CORRUPT_KINDS)}, got {self.corrupt_kind!r}")

    def corrupt(self, draws: np.ndarray) -> np.ndarray:
        """Which parties upload garbage, from each party's uniform draw (n,) of its fault stream: (n,) bool."""
        return np.asarray(draws) < self.corrupt_share


def corrupt_parties(cfg: FaultConfig, seed: int, ids: np.ndarray) -> np.ndarray:
    """Which of parties ``ids`` upload garbage (``corrupt_share``; one draw of each party's fault stream): (n,)
    bool."""
    if not cfg.corrupt_share:
        return np.zeros(len(ids), bool)
    return cfg.corrupt(np.array([party_rng(seed, i, Stream.FAULTS).random() for i in ids]))


def training_targets(
    cfg: FaultConfig, seed: int, ids: np.ndarray, y: np.ndarray, real: np.ndarray, corrupt: np.ndarray
) -> np.ndarray:
    """The targets parties ``ids`` train on: ``y`` (n, N, ...), with the real rows (``real`` (n, N) bool) of the
    ``corrupt`` parties shuffled when ``corrupt_kind`` is ``shuffled`` (a permutation from the party's fault
    stream, after the draw that chose it)."""
    if cfg.corrupt_kind != "shuffled" or not corrupt.any():
        return y
    y = y.copy()
    for row in np.flatnonzero(corrupt):
        rng = party_rng(seed, ids[row], Stream.FAULTS)
        rng.random()  # the draw that chose this party
        keep = np.flatnonzero(real[row])
        y[row, keep] = y[row, rng.permutation(keep)]
    return y


def uploads(
    cfg: FaultConfig,
    seed: int,
    ids: np.ndarray,
    params: np.ndarray,
    corrupt: np.ndarray,
    layout: ModelLayout,
    init: InitFn,
) -> np.ndarray:
    """What parties ``ids`` upload for their pretrained rows ``params`` (n, layout.spec.n_params): NaN for
    ``nan_parties``, then for the ``corrupt`` parties (unless their garbage is their training, ``shuffled``) their
    weights ×100, sign-flipped, or (``random``) an untrained model of the party's own architecture drawn by
    ``init`` from its fault stream."""
    params = params.copy()
    params[np.isin(ids, cfg.nan_parties)] = np.nan
    if not corrupt.any() or cfg.corrupt_kind == "shuffled":
        return params
    if cfg.corrupt_kind == "scaled":
        params[corrupt] = params[corrupt] * 100
    elif cfg.corrupt_kind == "flipped":
        params[corrupt] = -params[corrupt]
    else:
        hit = ids[corrupt]
        params[corrupt] = layout.stack(
            seed, hit, lambda rows, spec: party_inits(init, seed, hit[rows], Stream.FAULTS, spec)
        )
    return params
