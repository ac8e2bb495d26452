"""Each party's random streams: generators that are a function of (run seed, party id, stream) only.

Every draw that belongs to one party (its task, data, init, shots, width, family, faults) comes from its own
stream, so results do not depend on how parties are spread over actors or nodes.

    >>> a = party_rng(0, 7, Stream.DATA).random()
    >>> b = party_rng(0, 7, Stream.DATA).random()
    >>> a == b and a != party_rng(0, 8, Stream.DATA).random()
    True
"""

from __future__ import annotations

from collections.abc import Callable
from enum import IntEnum
from typing import TYPE_CHECKING

import numpy as np

from fusion.lazy import torch

if TYPE_CHECKING:
    from fusion.models.spec import Spec

InitFn = Callable[["Spec", "torch.Generator"], "torch.Tensor"]
"""``init(spec, generator) -> (spec.n_params,)``: a party's random model at ``spec`` (a scenario's ``init_at``)."""


class Stream(IntEnum):
    """Independent random streams of one party (the third word of its seed)."""

    DESCRIPTOR = 0
    DATA = 1
    INIT = 2
    SHOTS = 3
    COLD_START = 4
    EVAL = 5
    SYSTEM = 6  # party class, straggler jitter, dropout (fusion.system)
    WIDTH = 7  # hidden width when a run mixes widths
    FAULTS = 8  # injected faults ([faults] corrupt_share): whether the party uploads garbage, and which
    FAMILY = 9  # architecture family when a run mixes families ([scenario] archs with several entries)
    SHIFT = 10  # a party's feature shift (rotation, intensity) in scenarios that shift features


def party_rng(seed: int, party_id: int, stream: Stream) -> np.random.Generator:
    """The generator of one party's ``stream``: a function of (run seed, party id) only."""
    return np.random.default_rng([int(seed), int(party_id), int(stream)])


def party_torch_generator(seed: int, party_id: int, stream: Stream) -> torch.Generator:
    return torch.Generator().manual_seed(int(party_rng(seed, party_id, stream).integers(2**62)))


def party_inits(init: InitFn, seed: int, ids: np.ndarray, stream: Stream, spec: Spec) -> torch.Tensor:
    """Random models (n, spec.n_params) of parties ``ids``, each from its own ``stream`` by ``init``."""
    return torch.stack([init(spec, party_torch_generator(seed, i, stream)) for i in ids])
