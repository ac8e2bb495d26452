"""Loading and validating user-supplied model files in parallel: one Ray task per chunk of files."""

from __future__ import annotations

import numpy as np
import ray

from fusion.spec import MLPSpec
from fusion.state_dicts import load_model_file


@ray.remote(num_returns=2)
def load_chunk(paths: list[str], party_ids: np.ndarray, descriptors: np.ndarray, spec: MLPSpec | None):
    """Load ``paths`` (one per party) as flat models.

    Returns two objects: the shard dict ``{party_id (n,), descriptor (n, d), params (n, n_params)}``
    that :class:`actors.fusion.FusionActor` takes, and a small report ``{"widths", "error"}`` for the
    driver (the first problem of the chunk, naming its file, or None). Without ``spec`` every file's
    architecture is inferred and must agree with the chunk's first file.
    """
    flats: list[np.ndarray] = []
    try:
        for path in paths:
            flat, found = load_model_file(path, spec)
            if spec is None:
                spec = found
            flats.append(flat)
    except ValueError as exc:
        return {}, {"widths": None, "error": str(exc)}
    params = np.stack(flats).astype(np.float32) if flats else np.zeros((0, 0), np.float32)
    shard = {"party_id": np.asarray(party_ids), "descriptor": np.asarray(descriptors, np.float32), "params": params}
    return shard, {"widths": spec.widths if spec else None, "error": None}
