"""How every paper benchmark ends: its Markdown tables on disk and on screen, then one JSON line on stdout."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TextIO


def publish(text: str, path: Path, record: dict, screen: TextIO = sys.stderr) -> None:
    """Write ``text`` to ``path`` (through a temp file: never half-written), echo it to ``screen``, print ``record``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)
    print(text, file=screen)
    print(json.dumps(record), flush=True)
