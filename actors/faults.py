"""Fault injection for tests and demonstrations: the ``[faults]`` table of a run config.

Off by default. These hooks really break things (a process exits, parameters become NaN) so that
the recovery paths run exactly as they would after a real failure.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class FaultConfig:
    """``[faults]`` keys.

    ``crash_shard``: index of a party shard whose process exits (``os._exit``) at the end of its
    first pretraining call, before returning, in its first incarnation only; Ray restarts the
    actor and retries the call. -1 = off.
    ``nan_parties``: training party ids whose pretrained parameters are replaced by NaN, as a
    diverged party would send them; they are quarantined (left out of fusion) and recorded.
    """

    crash_shard: int = -1
    nan_parties: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "nan_parties", tuple(self.nan_parties))
        if self.crash_shard < -1:
            raise ValueError(f"faults.crash_shard must be a shard index >= 0 (or -1 = off), got {self.crash_shard}")
        if any(not isinstance(p, int) or isinstance(p, bool) or p < 0 for p in self.nan_parties):
            raise ValueError(f"faults.nan_parties must be party ids >= 0, got {list(self.nan_parties)}")
