"""Saving and loading fitted fusion models as ``.pt`` files that load with ``weights_only=True``."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import torch

from fusion.spec import Spec, spec_from_state, spec_state
from fusion.strategies.base import WARM_STARTERS, WarmStarter


def save_warm_starter(starter: WarmStarter | dict, spec: Spec, path: str | Path, kind: str | None = None) -> None:
    """Write atomically (temp file, then rename). ``starter`` may be an already exported state."""
    state = starter.export() if isinstance(starter, WarmStarter) else starter
    kind = kind or type(starter).__name__
    payload = {"kind": kind, **spec_state(spec), "state": state}
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        torch.save(payload, tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_warm_starter(path: str | Path) -> tuple[WarmStarter, Spec]:
    """Load a fitted fusion model written by :func:`save_warm_starter` (never unpickles code)."""
    payload = torch.load(path, map_location="cpu", weights_only=True)
    kind = payload.get("kind") if isinstance(payload, dict) else None
    if isinstance(kind, str) and kind not in WARM_STARTERS:
        raise ValueError(
            f"{path}: a fusion model of kind {kind!r}, which this version of fusion-cluster does not know "
            f"(known: {', '.join(sorted(WARM_STARTERS))}); it was written by another version"
        )
    try:
        cls = WARM_STARTERS[payload["kind"]]
        spec = spec_from_state(payload)
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"{path}: not a fusion-cluster model file ({exc})") from None
    return cls.restore(payload["state"]), spec
