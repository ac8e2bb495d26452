"""Fault injection for tests and demonstrations: the ``[faults]`` table of a run config.

Off by default. These hooks really break things (a process exits, parameters become NaN) so that
the recovery paths run exactly as they would after a real failure.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

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
