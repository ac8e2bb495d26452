"""Start-up and teardown of the default run, from outside: the CLI in a subprocess, beside a bare Ray start and stop.

    python -m bench.startup --repeats 3
    python -m bench.startup --repeats 3 -- fusion-cluster run sine --parties 1000   # another command (--out added)

Each repetition runs, one after the other (never together):

- ``baseline``: ``python -c "import ray; ray.init(address='local'); ray.shutdown()"``, Ray's own start and stop;
- ``run``: the command (default ``fusion-cluster run sine``) with ``--out`` a fresh temporary folder.

For each it prints the wall seconds seen from outside (process start to exit), the CPU seconds of the process and
all its descendants (every Ray process, sampled every 0.1 s from /proc), the load average before it, and how many
processes it started still run 2 s after it exits (``left``: should be 0; Ray's dashboard module processes take
up to ~1 s to exit after their parent, also after a bare ``ray.shutdown``). For the run it also prints the
stages of its ``timing.json`` and "outside the work stages": the outside wall minus the work stages (pretrain,
fusion, federated, evaluate, participating), in seconds, as a fraction of the wall, and as a ratio to the same
repetition's baseline wall. The goal (issue 29): outside <= max(5 s, 10% of the wall). On a shared machine compare
the ratios, not the seconds. A JSON line per repetition, then a summary line (medians).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

WORK_STAGES = ("pretrain", "fusion", "federated", "evaluate", "participating")  # cluster.pipeline.WORK_STAGES
STAGES = ("setup", "connect", "actors", "pretrain", "fusion", "evaluate", "teardown", "write")
BASELINE = "import ray; ray.init(address='local'); ray.shutdown()"


def _children() -> dict[int, list[int]]:
    """parent pid -> child pids of every process, from /proc."""
    out: dict[int, list[int]] = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                ppid = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            out.setdefault(ppid, []).append(int(d.name))
    return out


_TICK = os.sysconf("SC_CLK_TCK")


def _stat(pid: int) -> tuple[str, str, float] | None:
    """(start time, state, CPU seconds so far) of ``pid`` from /proc, or None when it is gone."""
    try:
        f = (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return f[19], f[0], (int(f[11]) + int(f[12])) / _TICK


def _name(pid: int) -> str:
    """``pid``'s command line (its process title for Ray's workers), shortened."""
    try:
        return (Path("/proc") / str(pid) / "cmdline").read_bytes().replace(b"\0", b" ").decode()[:80].strip()
    except OSError:
        return "?"


def measure(cmd: list[str], grace: float = 2.0) -> dict:
    """Run ``cmd``: its wall seconds, exit code, the CPU seconds of it and every descendant (each process's last
    sample, every 0.1 s: a process's final 0.1 s may be missed), and the descendants still running (not zombies)
    when it exits and ``grace`` seconds later."""
    load = os.getloadavg()[0]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    child = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    seen: dict[int, tuple[str, float]] = {}  # pid -> (start time, CPU seconds at the last sample)
    while child.poll() is None:
        tree, stack = _children(), [child.pid]
        while stack:
            pid = stack.pop()
            stat = _stat(pid)
            if stat is not None and (pid not in seen or seen[pid][0] == stat[0]):
                seen[pid] = (stat[0], stat[2])
            stack += tree.get(pid, [])
        time.sleep(0.1)
    wall = time.perf_counter() - start
    output = child.stdout.read() if child.stdout else ""
    after = resource.getrusage(resource.RUSAGE_CHILDREN)  # the command's own process, reaped here
    own = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)

    def running() -> list[int]:
        alive = []
        for pid, (started, _) in seen.items():
            stat = _stat(pid)
            if pid != child.pid and stat is not None and stat[0] == started and stat[1] != "Z":
                alive.append(pid)
        return alive

    at_exit = running()
    names = {pid: _name(pid) for pid in at_exit}
    time.sleep(grace)
    cpu = sum(c for pid, (_, c) in seen.items() if pid != child.pid)
    return {
        "wall_s": wall,
        "cpu_s": cpu + own,
        "load": load,
        "exit_code": child.returncode,
        "running_at_exit": sorted(names.values()),
        "left": sorted(names.get(pid) or _name(pid) for pid in running()),
        "out": output,
    }


def default_command() -> list[str]:
    script = Path(sys.executable).with_name("fusion-cluster")
    return [str(script)] if script.exists() else [sys.executable, "-m", "cluster"]


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    command = argv[argv.index("--") + 1 :] if "--" in argv else []
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repeats", type=int, default=3, help="repetitions of baseline + run (default 3)")
    args = p.parse_args(argv[: argv.index("--")] if "--" in argv else argv)
    run_cmd = command or [*default_command(), "run", "sine"]
    rows = []
    for rep in range(args.repeats):
        base = measure([sys.executable, "-c", BASELINE])
        out = Path(tempfile.mkdtemp(prefix="startup-")) / "run"
        try:
            run = measure([*run_cmd, "--out", str(out)])
            if run["exit_code"] != 0:
                print(run["out"], file=sys.stderr)
                raise SystemExit(f"{' '.join(run_cmd)} exited {run['exit_code']}")
            timing = json.loads((out / "timing.json").read_text())
        finally:
            shutil.rmtree(out.parent, ignore_errors=True)
        stages = timing["stages_s"]
        outside = run["wall_s"] - sum(stages.get(k, 0.0) for k in WORK_STAGES)
        row = {
            "repeat": rep,
            "command": " ".join(run_cmd),
            "wall_s": round(run["wall_s"], 2),
            "timing_wall_s": timing["wall_s"],
            "stages_s": stages,
            "outside_s": round(outside, 2),
            "outside_frac": round(outside / run["wall_s"], 3),
            "goal_s": round(max(5.0, 0.1 * run["wall_s"]), 2),
            "cpu_s": round(run["cpu_s"], 2),
            "load": round(run["load"], 2),
            "running_at_exit": run["running_at_exit"],
            "left": run["left"],
            "baseline_wall_s": round(base["wall_s"], 2),
            "baseline_cpu_s": round(base["cpu_s"], 2),
            "baseline_load": round(base["load"], 2),
            "baseline_running_at_exit": base["running_at_exit"],
            "baseline_left": base["left"],
            "outside_per_baseline": round(outside / base["wall_s"], 2),
        }
        rows.append(row)
        cells = " ".join(f"{k} {stages[k]:.1f}" for k in STAGES if k in stages)
        print(
            f"#{rep} baseline {base['wall_s']:.1f} s ({base['cpu_s']:.1f} CPU s, load {base['load']:.1f}, "
            f"left {len(base['left'])}) | run {run['wall_s']:.1f} s ({run['cpu_s']:.1f} CPU s, load "
            f"{run['load']:.1f}, left {len(run['left'])}): {cells}; outside {outside:.1f} s = "
            f"{100 * outside / run['wall_s']:.0f}% of the wall, {outside / base['wall_s']:.2f}x the baseline",
            file=sys.stderr,
        )
        print(json.dumps(row), flush=True)
    med = lambda key: round(statistics.median(r[key] for r in rows), 2)  # noqa: E731
    summary = {
        k: med(k) for k in ("wall_s", "outside_s", "outside_frac", "cpu_s", "baseline_wall_s", "outside_per_baseline")
    }
    summary["goal_met"] = sum(r["outside_s"] <= r["goal_s"] for r in rows)
    summary["left"] = sum(len(r["left"]) + len(r["baseline_left"]) for r in rows)
    print(json.dumps({"summary": summary, "repeats": len(rows)}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
