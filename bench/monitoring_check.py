"""Monitoring as a person sees it, checked during a small run on an embedded Ray with token authentication on.

    python -m bench.monitoring_check                          # sine, 12+4 parties, fusion,nearest_task,fedavg_ft
    python -m bench.monitoring_check --screenshots docs/img   # also the dashboard in headless Chromium
    python -m bench.monitoring_check --prometheus             # also every board query on a real Prometheus

Starts a local Ray with the dashboard (on 127.0.0.1, a free port) and Ray's default token authentication (a
``RAY_AUTH_MODE=disabled`` in the environment is dropped: users keep it on), gets the token with
``ray get-auth-token`` as the run's start lines tell a person to, and runs a small job while a thread polls, every
second:

- the dashboard's actors API (``/api/v0/actors``, header ``Authorization: Bearer <token>``) for the named actors
  of the run's namespace ``fusion-cluster-<run id>``: ``party-shard-*``, ``fusion``, ``federated-server``;
- the node's Prometheus endpoint for the ``ray_fusion_cluster_*`` series of this run.

Then it checks that every series the Grafana board ``docs/grafana/fusion-cluster.json`` queries (the metric names in
its expressions) was exported, that the run printed the dashboard-token hint, that no printed line holds the token,
and that the actors API refuses a request without the token. Prints one JSON line; exit 1 when something is missing.

With ``--prometheus`` a Prometheus (Debian's ``prometheus``, on 127.0.0.1) scrapes the run with the configuration
Ray wrote into its session folder (every 2 s instead of 10 s), and every query of the board, ``$run`` set to the
run id, must return at least one series over the run: the board's PromQL parses and finds data.

With ``--screenshots DIR`` a headless Chromium (Debian's ``chromium``; DevTools protocol on 127.0.0.1) saves, while
the federated rounds run, ``dashboard-token-prompt.png`` (the dashboard without a token) and
``dashboard-actors.png`` (the Actors view after the token is typed into that prompt and submitted, as a person
does; the dashboard keeps it in its ``ray-authentication-token`` cookie).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BOARD = ROOT / "docs" / "grafana" / "fusion-cluster.json"
_SERIES = re.compile(r"\bray_[A-Za-z0-9_:]+")


def board_series(path: Path = BOARD) -> set[str]:
    """Every Prometheus series name the Grafana board queries: panel expressions and template-variable queries."""
    board = json.loads(Path(path).read_text())
    texts = []

    def panels(items):
        for p in items:
            texts.extend(t.get("expr", "") for t in p.get("targets", []))
            panels(p.get("panels", []))  # collapsed rows hold their panels

    panels(board.get("panels", []))
    for var in board.get("templating", {}).get("list", []):
        query = var.get("query", "")
        texts.append(query.get("query", "") if isinstance(query, dict) else str(query))
    return {name for text in texts for name in _SERIES.findall(text)}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url: str, token: str | None = None, timeout: float = 10.0) -> tuple[int, bytes]:
    req = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, b""


def _actors(dashboard: str, token: str) -> list[dict]:
    status, body = _get(f"{dashboard}/api/v0/actors?limit=1000&detail=false", token)
    if status != 200:
        raise RuntimeError(f"actors API answered {status}")
    return json.loads(body)["data"]["result"]["result"]


class Poller(threading.Thread):
    """Polls the actors API and the Prometheus endpoint every ``period`` seconds; keeps the union of what it saw."""

    def __init__(self, dashboard: str, token: str, metrics: str, run_id: str, period: float = 1.0) -> None:
        super().__init__(daemon=True)
        self.dashboard, self.token, self.metrics, self.run_id, self.period = dashboard, token, metrics, run_id, period
        self.namespace = f"fusion-cluster-{run_id}"
        self.actors: dict[str, str] = {}  # name -> class
        self.series: set[str] = set()
        self.polls = 0
        self.errors: list[str] = []
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            try:
                for a in _actors(self.dashboard, self.token):
                    if a.get("ray_namespace") == self.namespace and a.get("state") == "ALIVE" and a.get("name"):
                        self.actors[a["name"]] = a.get("class_name", "")
            except Exception as exc:  # noqa: BLE001 - recorded and reported
                self.errors.append(f"actors: {exc}")
            try:
                _, body = _get(self.metrics)
                tag = f'run="{self.run_id}"'
                for line in body.decode().splitlines():
                    if line.startswith("ray_fusion_cluster_") and tag in line:
                        self.series.add(line.split("{", 1)[0])
            except Exception as exc:  # noqa: BLE001
                self.errors.append(f"metrics: {exc}")
            self.polls += 1
            self.stop.wait(self.period)

    def wait_polls(self, n: int, timeout: float) -> None:
        target, deadline = self.polls + n, time.monotonic() + timeout
        while self.polls < target and time.monotonic() < deadline:
            time.sleep(0.2)


class Browser:
    """Debian's headless Chromium driven over the DevTools protocol (on 127.0.0.1) with aiohttp's websocket."""

    def __init__(self, width: int = 1280, height: int = 800) -> None:
        self.width, self.height = width, height
        exe = shutil.which("chromium") or shutil.which("chromium-browser")
        if not exe:
            raise RuntimeError("no chromium on PATH (apt-get install -y chromium)")
        self.port = _free_port()
        self.profile = tempfile.mkdtemp(prefix="mon-chromium-")
        self.proc = subprocess.Popen(
            [
                exe, "--headless=new", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                "--remote-debugging-address=127.0.0.1", f"--remote-debugging-port={self.port}",
                f"--user-data-dir={self.profile}", f"--window-size={width},{height}", "about:blank",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                shutil.rmtree(self.profile, ignore_errors=True)
                raise RuntimeError(f"chromium exited with code {self.proc.returncode}")
            try:
                status, body = _get(f"http://127.0.0.1:{self.port}/json/list", timeout=2)
            except OSError:  # not listening yet
                status, body = 0, b""
            pages = [t for t in json.loads(body or b"[]") if t.get("type") == "page"] if status == 200 else []
            if pages:
                self.ws = pages[0]["webSocketDebuggerUrl"]
                return
            time.sleep(0.5)
        self.close()
        raise RuntimeError("chromium's DevTools endpoint did not come up in 60 s")

    def shot(self, url: str, png: Path, wait_text: str, token: str = "", timeout: float = 45.0) -> float | None:
        """Open ``url`` in a fresh session (no cookies); with ``token``, paste it into the dashboard's
        "Authentication Token Required" prompt as a person does (focus the field, type, SUBMIT); wait until the page
        shows ``wait_text`` and save a PNG. Returns the seconds waited for the text, or None when it did not appear
        (the PNG is saved anyway)."""
        return asyncio.run(self._shot(url, png, wait_text, token, timeout))

    async def _shot(self, url, png, wait_text, token, timeout):
        import aiohttp

        async with aiohttp.ClientSession() as session, session.ws_connect(self.ws, max_msg_size=0) as ws:
            ids = iter(range(1, 10**9))

            async def call(method: str, **params):
                mid = next(ids)
                await ws.send_json({"id": mid, "method": method, "params": params})
                async for msg in ws:
                    data = json.loads(msg.data)
                    if data.get("id") == mid:
                        if "error" in data:
                            raise RuntimeError(f"{method}: {data['error']}")
                        return data.get("result", {})
                raise RuntimeError("DevTools connection closed")

            async def shows(text: str) -> bool:
                js = f"!!document.body && document.body.innerText.includes({text!r})"
                return bool((await call("Runtime.evaluate", expression=js)).get("result", {}).get("value"))

            await call("Network.enable")
            await call("Network.clearBrowserCookies")
            await call(
                "Emulation.setDeviceMetricsOverride",
                width=self.width,
                height=self.height,
                deviceScaleFactor=1,
                mobile=False,
            )
            await call("Page.navigate", url="about:blank")
            await call("Page.navigate", url=url)
            start, seen = time.monotonic(), None
            if token:
                while time.monotonic() - start < timeout and not await shows("Authentication Token Required"):
                    await asyncio.sleep(0.5)
                await call("Runtime.evaluate", expression="document.querySelector('[role=dialog] input').focus()")
                await call("Input.insertText", text=token)
                buttons = "[...document.querySelectorAll('[role=dialog] button')]"
                click = f"{buttons}.find(b => /submit/i.test(b.innerText)).click()"
                await call("Runtime.evaluate", expression=click)
            while time.monotonic() - start < timeout:
                await asyncio.sleep(1.0)
                if await shows(wait_text):
                    seen = time.monotonic() - start
                    await asyncio.sleep(2.0)  # the rest of the table and its fonts
                    break
            data = await call("Page.captureScreenshot", format="png")
            png.write_bytes(base64.b64decode(data["data"]))
            return seen

    def close(self) -> None:
        _stop(self.proc, self.profile)


def _stop(proc: subprocess.Popen, folder: str) -> None:
    """End a helper process (terminate, then kill after 10 s) and remove its scratch folder."""
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
    shutil.rmtree(folder, ignore_errors=True)


class Prometheus:
    """Debian's ``prometheus`` with the scrape configuration Ray wrote for this session (every node's exporter via
    the session's service-discovery file), scraping every 2 s instead of 10 s, on 127.0.0.1."""

    def __init__(self, session_dir: str) -> None:
        exe = shutil.which("prometheus")
        if not exe:
            raise RuntimeError("no prometheus on PATH (apt-get install -y --no-install-recommends prometheus)")
        self.folder = tempfile.mkdtemp(prefix="mon-prometheus-")
        config = (Path(session_dir) / "metrics" / "prometheus" / "prometheus.yml").read_text()
        (Path(self.folder) / "prometheus.yml").write_text(
            re.sub(r"(scrape|evaluation)_interval: 10s", r"\1_interval: 2s", config)
        )
        self.url = f"http://127.0.0.1:{_free_port()}"
        self.proc = subprocess.Popen(
            [
                exe, f"--config.file={self.folder}/prometheus.yml", f"--storage.tsdb.path={self.folder}/data",
                f"--web.listen-address={self.url.removeprefix('http://')}",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip

    def query_range(self, expr: str, start: float, end: float) -> int:
        """How many series the expression gives over [start, end] (a 2 s step)."""
        from urllib.parse import urlencode

        q = urlencode({"query": expr, "start": start, "end": end, "step": 2})
        status, body = _get(f"{self.url}/api/v1/query_range?{q}", timeout=30)
        data = json.loads(body) if status == 200 else {}
        if data.get("status") != "success":
            raise RuntimeError(f"prometheus answered {status} to {expr!r}: {body[:200]!r}")
        return len(data["data"]["result"])

    def close(self) -> None:
        _stop(self.proc, self.folder)


def board_queries(path: Path = BOARD) -> list[tuple[str, str]]:
    """(panel title, expression) of every query of the board's panels."""
    out = []

    def walk(items):
        for p in items:
            out.extend((p.get("title", ""), t["expr"]) for t in p.get("targets", []) if t.get("expr"))
            walk(p.get("panels", []))

    walk(json.loads(Path(path).read_text()).get("panels", []))
    return out


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--parties", type=int, default=12)
    ap.add_argument("--test-parties", type=int, default=4)
    ap.add_argument("--methods", default="fusion,nearest_task,fedavg_ft")
    ap.add_argument("--rounds", type=int, default=6, help="[federated] rounds (default 6)")
    ap.add_argument("--out", default="", help="run folder (default: a temporary one, removed at the end)")
    ap.add_argument("--screenshots", default="", metavar="DIR", help="save dashboard PNGs here (headless Chromium)")
    ap.add_argument(
        "--prometheus",
        action="store_true",
        help="also run every board query on a Prometheus (Debian's) scraping the run",
    )
    args = ap.parse_args(argv)

    if os.environ.get("RAY_AUTH_MODE") == "disabled":
        del os.environ["RAY_AUTH_MODE"]  # Ray's default (token authentication on), as users have it
    import ray

    from cluster.config import resolve
    from cluster.pipeline import run
    from cluster.runtime import _dashboard, metrics_url
    from fusion.methods import is_federated

    tmp = tempfile.mkdtemp(prefix="mon-check-")
    out = Path(args.out) if args.out else Path(tmp) / "mon-check"
    cfg = resolve(
        {
            "scenario": {"name": "sine", "hidden": [16], "train_points": 40},
            "parties": args.parties,
            "test_parties": args.test_parties,
            "shots": [0, 5],
            "seed": 1,
            "methods": args.methods.split(","),
            "party_actors": 2,
            "cpus_per_actor": 0.5,
            "chunk_parties": 3,
            "pretrain": {"steps": 150},
            "finetune": {"steps": 20},
            "fusion": {"gp": {"max_steps": 30, "inducing": 16}, "align_iters": 5, "refit_steps": 100},
            "federated": {"rounds": args.rounds, "clients_per_round": 0.5, "local_steps": 20},
            "out": str(out),
        }
    )
    browser = Browser() if args.screenshots else None  # started before Ray: its start-up is slow on a busy host
    try:
        ray.init(
            address="local",
            num_cpus=2,
            include_dashboard=True,
            dashboard_host="127.0.0.1",
            dashboard_port=_free_port(),
            object_store_memory=256 * 1024**2,
            log_to_driver=False,
            logging_level="WARNING",
            _system_config={"metrics_report_interval_ms": 1000},  # series show within ~1 s instead of ~10 s
        )
    except BaseException:
        if browser is not None:
            browser.close()
        raise
    report: dict = {"run": out.name}
    prom = None
    lines: list[str] = []
    try:
        dashboard = _dashboard()
        ray_cli = Path(sys.executable).with_name("ray")
        token = subprocess.run(
            [str(ray_cli if ray_cli.exists() else "ray"), "get-auth-token"], capture_output=True, text=True, check=True
        ).stdout.strip()
        report["dashboard"] = dashboard
        report["token_from_ray_get_auth_token"] = bool(token)
        report["api_without_token"] = _get(f"{dashboard}/api/v0/actors?limit=1", None)[0]
        report["api_with_token"] = _get(f"{dashboard}/api/v0/actors?limit=1", token)[0]
        poller = Poller(dashboard, token, metrics_url(), out.name)
        poller.start()
        if args.prometheus:
            prom = Prometheus(ray._private.worker._global_node.get_session_dir_path())  # noqa: SLF001
        shots: dict[str, float | None] = {}

        def log(line: str) -> None:
            print(line, flush=True)
            lines.append(line)
            if ": round " in line and browser is not None and not shots:
                # the driver waits here, mid-rounds: party shards, fusion and the federated server are alive
                folder = Path(args.screenshots)
                folder.mkdir(parents=True, exist_ok=True)
                view = f"{dashboard}/#/actors"
                shots["dashboard-token-prompt.png"] = browser.shot(
                    view, folder / "dashboard-token-prompt.png", "Authentication Token Required"
                )
                shots["dashboard-actors.png"] = browser.shot(
                    view, folder / "dashboard-actors.png", "federated-server", token
                )
            if line.startswith("fine-tune + evaluate") and not report.get("evaluate_seen"):
                report["evaluate_seen"] = True
                poller.wait_polls(2, timeout=15)  # the fusion stage's gauges and histogram are exported

        start = time.perf_counter()
        run(cfg, log=log)
        report["run_s"] = round(time.perf_counter() - start, 1)
        poller.stop.set()
        poller.join(timeout=15)

        n_shards = 2
        want_actors = [f"party-shard-{i}" for i in range(n_shards)] + ["fusion"]
        if any(is_federated(m) for m in cfg.methods):
            want_actors.append("federated-server")
        queried = sorted(board_series(BOARD))
        report["actors"] = {name: poller.actors[name] for name in sorted(poller.actors)}
        report["missing_actors"] = [a for a in want_actors if a not in poller.actors]
        report["board_series"] = len(queried)
        report["missing_series"] = [s for s in queried if s not in poller.series]
        report["hint_printed"] = any("ray get-auth-token" in line for line in lines)
        report["token_in_output"] = any(token in line for line in lines)
        report["polls"] = poller.polls
        if prom is not None:
            time.sleep(4)  # the last scrape of the run
            end = time.time()
            empty = []
            for title, expr in board_queries(BOARD):
                if not prom.query_range(expr.replace("$run", out.name), end - report["run_s"] - 10, end):
                    empty.append(f"{title}: {expr}")
            report["prometheus_queries"] = len(board_queries(BOARD))
            report["prometheus_empty"] = empty
        report["poll_errors"] = poller.errors[:5]
        if browser is not None:
            report["screenshots"] = {name: (None if s is None else round(s, 1)) for name, s in shots.items()}
    finally:
        ray.shutdown()
        if browser is not None:
            browser.close()
        if prom is not None:
            prom.close()
        if not args.out:
            shutil.rmtree(tmp, ignore_errors=True)
    ok = (
        not report["missing_actors"]
        and not report["missing_series"]
        and report["hint_printed"]
        and not report["token_in_output"]
        and report["api_without_token"] == 401
        and report["api_with_token"] == 200
        and all(s is not None for s in report.get("screenshots", {}).values())
        and not report.get("prometheus_empty")
    )
    report["ok"] = ok
    print(json.dumps(report))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
