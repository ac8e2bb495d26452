"""Connecting to Ray: an embedded local instance by default, an existing cluster by address."""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass

import ray

from cluster.config import ClusterConfig, ConfigError, StartError
from cluster.local_ray import start_local, stop_local

NAMESPACE = "fusion-cluster"


@dataclass(frozen=True)
class Connection:
    address: str
    dashboard_url: str | None
    owned: bool  # we started it (and shut it down at the end)


def _resolve_auto(address: str) -> str:
    """``auto``: the cluster ``ray start`` last started on this machine, as host:port (an error if none runs)."""
    if address != "auto":
        return address
    try:
        from ray._private.services import canonicalize_bootstrap_address

        found = canonicalize_bootstrap_address("auto")
    except Exception as exc:  # noqa: BLE001 - Ray's own lookup; any failure means no cluster to join
        raise ConfigError(f"--address auto: no running Ray cluster found on this machine ({exc})") from None
    if not found:
        raise ConfigError("--address auto: no running Ray cluster found on this machine (start one with ray start)")
    return found


def _check_reachable(address: str, timeout: float = 5.0) -> None:
    """Fail within seconds, not a hang, when a host:port address does not answer."""
    if address.startswith("ray://") or ":" not in address:
        return
    host, _, port = address.rpartition(":")
    try:
        with socket.create_connection((host, int(port)), timeout=timeout):
            pass
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot reach the Ray cluster at {address!r}: {exc}") from None


def connect(cfg: ClusterConfig) -> Connection:
    """Join the running Ray instance if there is one, else ``cfg.address`` / ``RAY_ADDRESS``, else start one.

    No address and no ``RAY_ADDRESS`` means a local Ray of the run's own (``address="local"``, started by
    :func:`cluster.local_ray.start_local`): never the cluster that ``ray start`` last left on the machine (a bare
    ``ray.init()`` would join it, or hang retrying it once it is gone). Every address is checked to answer within
    seconds before Ray dials it. End with :func:`disconnect`.
    """
    address = cfg.address or ("" if ray.is_initialized() else os.environ.get("RAY_ADDRESS", ""))
    resolved = _resolve_auto(address) if address and address != "local" else ""
    if resolved:  # an address that does not answer is an error, even when this driver already holds a Ray
        _check_reachable(resolved)
    if ray.is_initialized():
        ctx = ray.get_runtime_context()
        return Connection(ctx.gcs_address, _dashboard(), owned=False)
    if resolved:
        try:
            ray.init(address=resolved, namespace=NAMESPACE, log_to_driver=False)
        except ConnectionError as exc:
            raise ConfigError(
                f"cannot connect to the Ray cluster at {address!r}: {exc}. On a cluster with token "
                "authentication set RAY_AUTH_MODE=token (see docs/operations.md)."
            ) from None
        return Connection(resolved, _dashboard(), owned=False)
    try:
        start_local(
            namespace=NAMESPACE,
            include_dashboard=cfg.include_dashboard,
            dashboard_host=cfg.dashboard_host,
            log_to_driver=False,
            logging_level="WARNING",
        )
    except Exception as exc:  # noqa: BLE001 - Ray raises bare Exceptions when its processes do not come up
        raise StartError(
            f"could not start a local Ray: {str(exc).splitlines()[0]} (is the machine overloaded?)"
        ) from None
    return Connection("local", _dashboard(), owned=True)


def disconnect(conn: Connection) -> None:
    """Stop the local Ray :func:`connect` started (every process of it: :func:`cluster.local_ray.stop_local`);
    a cluster joined by address stays up, as does a Ray this driver held before."""
    if conn.owned:
        stop_local()


def _dashboard() -> str | None:
    try:
        url = ray.get_runtime_context().dashboard_url if hasattr(ray.get_runtime_context(), "dashboard_url") else None
    except Exception:  # noqa: BLE001 - the URL is a convenience
        url = None
    if not url:
        try:
            url = ray._private.worker.global_worker.node.address_info.get("webui_url")  # noqa: SLF001
        except Exception:  # noqa: BLE001
            url = None
    return f"http://{url}" if url and not url.startswith("http") else url


def _token_auth_enabled() -> bool:
    try:
        from ray._private.authentication.authentication_utils import is_token_auth_enabled

        return bool(is_token_auth_enabled())
    except Exception:  # noqa: BLE001 - an older Ray without token authentication
        return False


def dashboard_login_hint() -> str | None:
    """How to get past the dashboard's token prompt when Ray's token authentication is on (else None).

    Names the command that prints the token and where the token comes from, never the token itself: a run's
    output lands in shared logs. ``ray get-auth-token`` prints the token this machine's Ray clients use
    (``RAY_AUTH_TOKEN``, ``RAY_AUTH_TOKEN_PATH`` or ``~/.ray/auth_token``), i.e. the one this run connected with.
    """
    if not _token_auth_enabled():
        return None
    if os.environ.get("RAY_AUTH_TOKEN"):
        source = "it comes from $RAY_AUTH_TOKEN"
    else:
        source = "or read " + (os.environ.get("RAY_AUTH_TOKEN_PATH") or "~/.ray/auth_token")
    return (
        f"Dashboard token: `ray get-auth-token` on this machine prints it ({source}); paste it into the "
        'dashboard\'s "Authentication Token Required" prompt. HTTP clients: header "Authorization: Bearer <token>"'
    )


def metrics_url() -> str | None:
    """The Prometheus endpoint of the driver's node (every node has its own, on its ``MetricsExportPort``)."""
    try:
        ip = ray.util.get_node_ip_address()
        for node in ray.nodes():
            if node.get("Alive") and node.get("NodeManagerAddress") == ip and node.get("MetricsExportPort"):
                return f"http://{ip}:{node['MetricsExportPort']}/metrics"
    except Exception:  # noqa: BLE001 - the URL is a convenience
        return None
    return None


def party_actor_count(cfg: ClusterConfig, n_parties: int) -> int:
    """``cfg.party_actors``, or (when 0) as many as the cluster's CPUs hold, at most one per party."""
    if cfg.party_actors:
        return cfg.party_actors
    cpus = ray.cluster_resources().get("CPU", 1.0)
    return int(max(1, min(n_parties, cpus // cfg.cpus_per_actor)))


def check_resources(cfg: ClusterConfig, n_actors: int) -> None:
    """Refuse actor resources the cluster cannot offer (Ray would wait for them forever)."""
    nodes = [n["Resources"] for n in ray.nodes() if n.get("Alive")]
    for kind, each in (("CPU", cfg.cpus_per_actor), ("GPU", cfg.gpus_per_actor)):
        best = max((n.get(kind, 0.0) for n in nodes), default=0.0)
        if each > best:
            raise ConfigError(f"{kind.lower()}s_per_actor={each:g} but the largest node offers {best:g} {kind}s")
    for kind, each in (("CPU", cfg.cpus_per_actor), ("GPU", cfg.gpus_per_actor)):
        total = sum(n.get(kind, 0.0) for n in nodes)
        if each > 0 and n_actors * each > total + 1e-9:
            flag = kind.lower()
            raise ConfigError(
                f"{n_actors} party actors x {flag}s_per_actor={each:g} need {n_actors * each:g} {kind}s but the "
                f"cluster has {total:g}; lower --party-actors or --{flag}s-per-actor"
            )


def check_class_resources(classes) -> None:
    """Like :func:`check_resources` for ``[[party_classes]]``: each class's actors, and all classes together."""
    nodes = [n["Resources"] for n in ray.nodes() if n.get("Alive")]
    for kind, attr in (("CPU", "cpus"), ("GPU", "gpus")):
        best = max((n.get(kind, 0.0) for n in nodes), default=0.0)
        total = sum(n.get(kind, 0.0) for n in nodes)
        for c in classes:
            if getattr(c, attr) > best:
                raise ConfigError(
                    f"party class {c.name!r} asks {attr}={getattr(c, attr):g} per actor but the largest node "
                    f"offers {best:g} {kind}s"
                )
        need = sum(c.actors * getattr(c, attr) for c in classes)
        if need > total + 1e-9:
            parts = " + ".join(f"{c.name} {c.actors}x{getattr(c, attr):g}" for c in classes)
            raise ConfigError(f"party classes need {need:g} {kind}s ({parts}) but the cluster has {total:g}")
