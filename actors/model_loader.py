"""Loading and validating user-supplied model files in parallel: one Ray task per chunk of files."""

from __future__ import annotations

import numpy as np
import ray

from fusion.models.spec import Spec
from fusion.models.state_dicts import ArchitectureMismatch, load_model_file


@ray.remote(num_returns=2)
def load_chunk(paths: list[str], party_ids: np.ndarray, descriptors: np.ndarray, spec: Spec):
    """Load ``paths`` (one per party), each checked against ``spec``, as flat models.

    Returns two objects: the shard dict ``{party_id (n,), descriptor (n, d), params (n, n_params)}``
    that :class:`actors.fusion.FusionActor` takes, and a small report ``{"error", "architecture"}`` for the
    driver (the first problem of the chunk, naming its file, or None; ``architecture``: the problem is an
    :class:`~fusion.models.state_dicts.ArchitectureMismatch`), so the driver never fetches weights.
    """
    try:
        params = np.stack([load_model_file(path, spec)[0] for path in paths]).astype(np.float32)
    except ValueError as exc:
        return {}, {"error": str(exc), "architecture": isinstance(exc, ArchitectureMismatch)}
    shard = {"party_id": np.asarray(party_ids), "descriptor": np.asarray(descriptors, np.float32), "params": params}
    return shard, {"error": None, "architecture": False}
