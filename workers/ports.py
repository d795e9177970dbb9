"""Ports a worker listens on: its Prometheus ``/metrics`` server, and the monitor's faust web server.

Both are bound (or checked) first thing at start-up, before a broker is contacted or a model loaded, so a port
that is already in use ends the worker at once with a one-line :class:`ConfigError` naming the port and its
setting, not with a traceback after minutes of loading. A port setting is a number (0: no server) or ``"auto"``:
the operating system picks a free port and the worker logs which one (several replicas on one host need no
per-replica configuration).
"""

from __future__ import annotations

import errno
import logging
import socket
from dataclasses import dataclass
from typing import Any, Literal

from prometheus_client import REGISTRY, CollectorRegistry, start_http_server

from workers.contracts.errors import ConfigError

log = logging.getLogger(__name__)

#: A port setting: a TCP port, 0 for "no server", or ``"auto"`` for one the operating system picks.
PortSetting = int | Literal["auto"]


def _in_use(port: int, setting: str, exc: OSError) -> ConfigError:
    what = "already in use" if exc.errno == errno.EADDRINUSE else f"not available ({exc.strerror or exc})"
    return ConfigError(
        f"port {port} ({setting}) is {what}: another process listens there (a second replica on this host?); "
        f"set {setting} to a free port, to auto (one the system picks) or to 0 (none)"
    )


@dataclass
class MetricsServer:
    """A running Prometheus ``/metrics`` HTTP server (its own thread).

    Attributes:
        port: the port it listens on (the one the system picked for ``"auto"``).
    """

    port: int
    _server: Any
    _thread: Any

    def close(self) -> None:
        """Stop serving and release the port."""
        self._server.shutdown()
        self._server.server_close()


def start_metrics_server(
    port: PortSetting, registry: CollectorRegistry | None = None, *, setting: str, addr: str = "0.0.0.0"
) -> MetricsServer | None:
    """Serve ``registry`` on ``http://addr:port/metrics`` in a thread; call it before anything slow starts.

    Args:
        port: the port; 0: no server (returns ``None``); ``"auto"``: a free one the system picks.
        registry: the metrics to serve (default: prometheus_client's global registry).
        setting: the environment variable of the port, named in the error (``RAG_WORKER__METRICS_PORT``).
        addr: the address to bind.

    Returns:
        The running server, or ``None`` for port 0.

    Raises:
        ConfigError: the port is already in use (one line naming the port and ``setting``).
    """
    if port == 0:
        return None
    want = 0 if port == "auto" else int(port)
    try:
        server, thread = start_http_server(want, addr=addr, registry=registry if registry is not None else REGISTRY)
    except OSError as exc:
        raise _in_use(want, setting, exc) from None
    bound = int(server.server_port)
    log.info("metrics on http://%s:%d/metrics (%s=%s)", addr, bound, setting, port)
    return MetricsServer(bound, server, thread)


def resolve_port(port: PortSetting, *, setting: str, host: str = "127.0.0.1") -> int:
    """Check that a port another library will bind later is free now (faust's web server).

    Args:
        port: the port; 0 stays 0 (no server); ``"auto"``: a free port picked now.
        setting: the environment variable of the port, named in the error.
        host: the address the server will bind.

    Returns:
        The port to bind (a free one for ``"auto"``).

    Raises:
        ConfigError: the port is already in use (one line naming the port and ``setting``).
    """
    if port == 0:
        return 0
    want = 0 if port == "auto" else int(port)
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as aiohttp binds: TIME_WAIT is not "in use"
        try:
            s.bind((host, want))
        except OSError as exc:
            raise _in_use(want, setting, exc) from None
        return int(s.getsockname()[1])


def bind_socket(port: PortSetting, *, setting: str, host: str = "0.0.0.0") -> socket.socket:
    """A listening TCP socket on ``port`` (``"auto"``: one the system picks) for a server started later on it.

    Raises:
        ConfigError: the port is in use or 0 (one line naming the port and ``setting``).
    """
    if port == 0:
        raise ConfigError(f"{setting} must be a port or auto, not 0")
    want = 0 if port == "auto" else int(port)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, want))
    except OSError as exc:
        sock.close()
        raise _in_use(want, setting, exc) from None
    sock.listen(2048)
    sock.setblocking(False)
    return sock
