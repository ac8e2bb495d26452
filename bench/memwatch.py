"""Run a command and report its wall time and the peak of the summed RSS of it and all its descendants
(the driver, raylet, GCS, dashboard and every Ray worker of an embedded cluster).

    python -m bench.memwatch -- fusion-cluster run sine
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path


def _procs() -> dict[int, tuple[int, int]]:
    """pid -> (parent pid, RSS bytes) of every process, from /proc."""
    out = {}
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            fields = (d / "stat").read_text().rsplit(")", 1)[1].split()
            rss_pages = int((d / "statm").read_text().split()[1])
            out[int(d.name)] = (int(fields[1]), rss_pages * 4096)
        except (OSError, IndexError, ValueError):
            continue
    return out


def tree_rss(root: int) -> int:
    """Summed RSS of ``root`` and all its descendants."""
    procs = _procs()
    children: dict[int, list[int]] = {}
    for pid, (ppid, _) in procs.items():
        children.setdefault(ppid, []).append(pid)
    total, stack = 0, [root]
    while stack:
        pid = stack.pop()
        total += procs.get(pid, (0, 0))[1]
        stack += children.get(pid, [])
    return total


def main(argv: list[str]) -> int:
    cmd = argv[argv.index("--") + 1 :] if "--" in argv else argv
    start = time.perf_counter()
    child = subprocess.Popen(cmd)
    peak = 0
    while child.poll() is None:
        peak = max(peak, tree_rss(child.pid))
        time.sleep(0.25)
    wall = time.perf_counter() - start
    print(
        json.dumps(
            {
                "command": " ".join(cmd),
                "exit_code": child.returncode,
                "wall_s": round(wall, 1),
                "peak_rss_gb": round(peak / 1e9, 2),
            }
        )
    )
    return child.returncode


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
