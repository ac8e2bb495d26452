"""What the benchmarks share: how every paper benchmark ends (its Markdown tables on disk and on screen, then one JSON
line on stdout), and their comma-list arguments."""

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


def ints(text: str) -> list[int]:
    """A comma list of integers (an argparse ``type``): ``"0,10,20"`` -> ``[0, 10, 20]``."""
    return [int(t) for t in text.split(",") if t.strip()]
