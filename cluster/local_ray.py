"""Starting and stopping the embedded local Ray with less waiting than ``ray.init`` / ``ray.shutdown`` alone.

Ray 2.60's local start runs its steps one after another, and its stop waits on a process that cannot stop
(measured on the 2-core machine, docs/scaling.md "Where a run's time goes"):

- the dashboard: ``ray.init`` starts the dashboard head and waits until it serves (~3 s quiet: it imports every
  dashboard module and forks nine module processes) *before* it starts the raylet, whose own start (two agent
  processes, ~2-3 s) the driver then waits for too. Nothing in the raylet needs the dashboard (its ``--webui``
  flag is unused), so :func:`start_local` starts the dashboard head beside the raylet and waits for both;
- the dashboard agent's HTTP port: fixed at 52365; when another Ray on the machine holds it, the agent retries
  for ~3.3 s before giving up on it. :func:`start_local` lets the agent bind any free port then (it reports the
  port to the GCS, which is where clients look it up);
- the log monitor tails the workers' log files for drivers that print them; a run's driver does not
  (``log_to_driver=False``), so :func:`start_local` does not start it (the files stay in the session's logs);
- the autoscaler monitor: ``ray.shutdown`` stops the GCS before it, and its SIGTERM handler then blocks on the
  dead GCS until Ray's 1 s grace runs out. :func:`stop_local` stops it first, and returns only when every process
  the driver started has ended (``ray.shutdown`` returns while workers are still exiting).

Everything here reaches into ``ray._private`` (Node); each step checks what it touches and leaves Ray's own
behaviour in place when the internals differ, so another Ray version starts and stops as plain ``ray.init`` /
``ray.shutdown`` do.
"""

from __future__ import annotations

import contextlib
import socket
import subprocess
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any

# isort: off
import ray
import psutil  # ships inside Ray (ray/thirdparty_files, on sys.path once ray is imported), not in the environment

# isort: on

_AGENT_PORT = 52365  # ray_constants.DEFAULT_DASHBOARD_AGENT_LISTEN_PORT
_starter: ThreadPoolExecutor | None = None


def _starter_thread() -> ThreadPoolExecutor:
    """One thread, kept for the life of the process, that starts the dashboard head.

    It must outlive the dashboard: Ray spawns its processes with ``PR_SET_PDEATHSIG`` (kernel fate sharing), and
    Linux sends that signal when the *thread* that spawned a child exits, not the process. A thread that ended
    after the start killed the dashboard it had just started (seen: the head a zombie, port 8265 closed).
    """
    global _starter
    if _starter is None:
        _starter = ThreadPoolExecutor(1, thread_name_prefix="ray-dashboard-start")
    return _starter


def _port_taken(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("", port))
        except OSError:
            return True
    return False


@contextmanager
def _patched_node(log_monitor: bool) -> Iterator[None]:
    """While ``ray.init`` builds its head node: the dashboard head starts on :func:`_starter_thread` and is waited
    for at the end of ``Node.__init__`` (after the raylet registered); a taken agent port becomes "any"; a log
    monitor only if ``log_monitor``. Unknown internals (another Ray version): no change."""
    try:
        from ray._private import node as ray_node
    except ImportError:
        yield
        return
    node_cls = ray_node.Node
    real_init = node_cls.__dict__.get("__init__")
    real_start = node_cls.__dict__.get("start_api_server")
    if real_init is None or real_start is None:
        yield
        return
    pending: dict[int, Future] = {}

    def start_api_server(self, **kwargs: Any) -> None:
        pending[id(self)] = _starter_thread().submit(real_start, self, **kwargs)

    def init(self, ray_params=None, *args: Any, **kwargs: Any) -> None:
        params = ray_params if ray_params is not None else kwargs.get("ray_params")
        if params is not None and kwargs.get("head", args[0] if args else False):
            if getattr(params, "dashboard_agent_listen_port", None) == _AGENT_PORT and _port_taken(_AGENT_PORT):
                params.dashboard_agent_listen_port = 0  # the OS picks; the agent reports it to the GCS
            if not log_monitor and getattr(params, "include_log_monitor", False) is None:
                params.include_log_monitor = False
        try:
            real_init(self, ray_params, *args, **kwargs)
        except BaseException:
            pending.pop(id(self), None)  # Ray's own error, not a wait for the dashboard's
            raise
        job = pending.pop(id(self), None)
        if job is not None:
            job.result()  # the dashboard's URL is known (or its start's error raised), as after Ray's own start

    node_cls.__init__, node_cls.start_api_server = init, start_api_server
    try:
        yield
    finally:
        node_cls.__init__, node_cls.start_api_server = real_init, real_start


def start_local(**init_kwargs: Any) -> Any:
    """``ray.init(address="local", **init_kwargs)`` with the dashboard head started beside the raylet (see the
    module's docstring); returns what ``ray.init`` returns. ``include_dashboard=False`` starts Ray's minimal head
    the same way; the log monitor starts only with ``log_to_driver`` (Ray's default: True). Resource isolation
    (``enable_resource_isolation``) needs every system process up before the raylet: Ray's own start."""
    if init_kwargs.get("enable_resource_isolation"):
        return ray.init(address="local", **init_kwargs)
    with _patched_node(log_monitor=init_kwargs.get("log_to_driver", True) is not False):
        return ray.init(address="local", **init_kwargs)


def stop_local(grace: float = 5.0) -> None:
    """``ray.shutdown()`` after stopping the autoscaler monitor (which otherwise costs Ray's 1 s grace: its
    SIGTERM handler reports to the GCS that Ray has stopped already), then wait until every process of the node
    has ended: ``ray.shutdown`` alone returns while party shards and the dashboard's module processes are still
    exiting (seen: a ``ray::PartyShard`` running when the command had ended, the dashboard's forkserver 2.3 s after
    ``ray.shutdown``). Those left get SIGTERM, then SIGKILL after ``grace`` seconds."""
    node = _local_node()
    started = _processes_of(node)
    for info in node.all_processes.get(_MONITOR, []) if node is not None else []:
        process = getattr(info, "process", None)
        if process is not None and process.poll() is None:
            process.kill()  # it holds no state: the node it watches stops next
            try:
                process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass  # ray.shutdown kills and reaps what is left
    ray.shutdown()
    left = _wait_gone(started, 0.0)
    for proc in left:  # the dashboard's module processes and their forkserver poll for their parent's end (~1-2 s)
        with contextlib.suppress(psutil.Error):
            proc.terminate()
    left = _wait_gone(left, grace)
    for proc in left:
        with contextlib.suppress(psutil.Error):
            proc.kill()
    _wait_gone(left, 1.0)


_MONITOR = "monitor"  # ray_constants.PROCESS_TYPE_MONITOR


def _local_node():
    """The head node this process started (``ray._private`` Node), or None."""
    try:
        from ray._private import worker

        node = worker._global_node  # noqa: SLF001
    except (ImportError, AttributeError):
        return None
    return node if isinstance(getattr(node, "all_processes", None), dict) else None


def _processes_of(node) -> list[psutil.Process]:
    """Every process of ``node``: those Ray started (GCS, raylet, dashboard, monitor) and their descendants
    (workers, agents, the dashboard's modules). Nothing else this driver may have started."""
    out = []
    for infos in node.all_processes.values() if node is not None else []:
        for info in infos:
            with contextlib.suppress(psutil.Error, AttributeError):
                root = psutil.Process(info.process.pid)
                out += [root, *root.children(recursive=True)]
    return out


def _wait_gone(procs: list, timeout: float) -> list:
    """Those of ``procs`` (psutil processes) still running (zombies count as ended) after at most ``timeout`` s."""

    def running(proc) -> bool:
        try:
            return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
        except psutil.Error:
            return False

    deadline = time.monotonic() + timeout
    left = [p for p in procs if running(p)]
    while left and time.monotonic() < deadline:
        time.sleep(0.02)
        left = [p for p in left if running(p)]
    return left
