"""Saving and loading fitted fusion models as ``.pt`` files that load with ``weights_only=True``."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path

from fusion.lazy import torch
from fusion.models.spec import Spec, spec_from_state, spec_state
from fusion.warm_start import LEGACY_KINDS, WARM_STARTERS, WarmStarter, warm_starter_class


def write_atomic(path: Path, write: Callable[[Path], object]) -> None:
    """Call ``write(tmp_path)`` on a temp file beside ``path``, then rename it to ``path`` (readers never see
    a half-written file)."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(Path(tmp))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save_warm_starter(starter: WarmStarter | dict, spec: Spec, path: str | Path, kind: str | None = None) -> None:
    """Write atomically (temp file, then rename). ``starter`` may be an already exported state."""
    state = starter.export() if isinstance(starter, WarmStarter) else starter
    kind = kind or starter.kind
    payload = {"kind": kind, **spec_state(spec), "state": state}
    write_atomic(Path(path), lambda tmp: torch.save(payload, tmp))


def load_warm_starter(path: str | Path) -> tuple[WarmStarter, Spec]:
    """Load a fitted fusion model written by :func:`save_warm_starter` (never unpickles code)."""
    payload = torch.load(path, map_location="cpu", weights_only=True)
    kind = payload.get("kind") if isinstance(payload, dict) else None
    if isinstance(kind, str) and kind not in WARM_STARTERS and kind not in LEGACY_KINDS:
        raise ValueError(
            f"{path}: a fusion model of kind {kind!r}, which this version of fusion-cluster does not know "
            f"(known: {', '.join(sorted(WARM_STARTERS))}); it was written by another version"
        )
    try:
        cls = warm_starter_class(payload["kind"])
        spec = spec_from_state(payload)
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"{path}: not a fusion-cluster model file ({exc})") from None
    return cls.restore(payload["state"]), spec
