"""Run fusion-cluster on a local Ray with the dashboard, and while it evaluates, list its named actors
(state API) and scrape one value of each custom metric from the node's Prometheus endpoint.

    python -m bench.observe sine --parties 300 --test-parties 50 --shots 0,10 --out /tmp/obs300

Prints the run's usual output, then one JSON line: {"actors": [...], "metrics": {name: value}}.
Ray starts here (with the metrics reported every second instead of every 10 s) and the run joins it.
"""

from __future__ import annotations

import json
import sys
import time
import urllib.request
from pathlib import Path

import ray
from ray.util.state import list_actors

from actors import metrics
from cluster.cli import config_tree, parser
from cluster.config import resolve
from cluster.pipeline import default_out, run
from cluster.runtime import metrics_url


def scrape(run_id: str) -> dict[str, str]:
    """The first sample of every ray_fusion_cluster_* series of this run, as 'series{tags} value'."""
    text = urllib.request.urlopen(metrics_url(), timeout=5).read().decode()
    out: dict[str, str] = {}
    for line in text.splitlines():
        name = line.split("{", 1)[0]
        if name.startswith(f"ray_{metrics.PREFIX}") and f'run="{run_id}"' in line:
            tags = line.split("{", 1)[1].rsplit("}", 1)[0]
            own = ",".join(
                t for t in tags.split(",") if t.split("=")[0] in ("run", "shard", "stage", "method", "shots", "le")
            )
            out.setdefault(name, f"{name}{{{own}}} {line.rsplit(' ', 1)[1]}")
    return out


def main(argv: list[str]) -> int:
    cfg = resolve(config_tree(parser().parse_args(["run", *argv])))
    ray.init(
        address="local",
        include_dashboard=True,
        dashboard_host="127.0.0.1",
        log_to_driver=False,
        logging_level="WARNING",
        _system_config={"metrics_report_interval_ms": 1000},
    )
    seen: dict = {}

    def log(line: str) -> None:
        print(line, flush=True)
        if line.startswith("fine-tune + evaluate:") and not seen:
            time.sleep(2.5)  # two report intervals: the evaluate stage's first gauges are exported
            namespace = f"fusion-cluster-{run_id}"
            gcs = ray.get_runtime_context().gcs_address  # several Ray instances may run on this host
            actors = list_actors(address=gcs, filters=[("state", "=", "ALIVE")], limit=1000)
            seen["actors"] = sorted(
                f"{a['name']} ({a['class_name']}, pid {a['pid']})"
                for a in actors
                if a.get("ray_namespace") == namespace
            )
            seen["metrics"] = scrape(run_id)

    out = Path(cfg.out) if cfg.out else default_out(cfg)
    run_id = out.name
    start = time.perf_counter()
    run(cfg, log=log)
    seen["wall_s"] = round(time.perf_counter() - start, 1)
    print(json.dumps(seen, indent=1))
    ray.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
