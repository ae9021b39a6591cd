"""Run an ASGI app over HTTPS (optionally mutual TLS) on a real socket: in a background thread for tests and
the sandbox, or blocking for a command-line service.

    tls = TlsFiles(certificate=certs / "server.pem", key=certs / "server.key", client_ca=certs / "ca.pem")
    with serve_in_thread(app, tls) as server:
        requests.get(f"{server.url}/health", cert=(...), verify=...)

With ``client_ca`` set, the TLS handshake refuses any client without a certificate issued by that CA, so the
app never sees an unauthenticated request.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

import uvicorn
from starlette.types import ASGIApp

from formedlare.errors import FormedlareError

_STARTUP_TIMEOUT = 10.0
_STOP_TIMEOUT = 10.0


class HttpsServerError(FormedlareError):
    """The server could not start (bad certificate files, the port taken) or did not stop in time."""


@dataclass(frozen=True, slots=True)
class TlsFiles:
    """PEM files of a TLS server. ``client_ca`` set: clients must present a certificate issued by it."""

    certificate: Path
    key: Path
    client_ca: Path | None = None


def _bind(host: str, port: int) -> socket.socket:
    # Binding here (not in uvicorn) means port 0 resolves before we report the URL: no race on the number.
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(128)
        sock.set_inheritable(True)
    except OSError:
        sock.close()
        raise
    return sock


def _config(app: ASGIApp, tls: TlsFiles, *, name: str) -> uvicorn.Config:
    return uvicorn.Config(
        app,
        ssl_certfile=str(tls.certificate),
        ssl_keyfile=str(tls.key),
        ssl_cert_reqs=ssl.CERT_REQUIRED if tls.client_ca is not None else ssl.CERT_NONE,
        ssl_ca_certs=str(tls.client_ca) if tls.client_ca is not None else None,
        # log_config=None: uvicorn must not replace the host process's logging setup (pytest's, the CLI's).
        log_config=None,
        log_level="warning",
        access_log=False,
        lifespan="auto",
        loop="asyncio",
        server_header=False,
        timeout_graceful_shutdown=5,
        headers=[("x-served-by", name)],
    )


class _Server(uvicorn.Server):
    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        # An idle keep-alive TLS connection closes with a close_notify exchange the client never answers while
        # it is not reading, which holds the shutdown for the whole grace period and then leaks the transport.
        # Idle connections carry no request, so aborting them loses nothing.
        for connection in list(self.server_state.connections):
            if _idle(connection):
                _abort(connection)
        await super().shutdown(sockets)
        for connection in list(self.server_state.connections):
            _abort(connection)


def _idle(connection: object) -> bool:
    cycle = getattr(connection, "cycle", None)
    return cycle is None or bool(getattr(cycle, "response_complete", False))


def _abort(connection: object) -> None:
    transport = getattr(connection, "transport", None)
    if isinstance(transport, asyncio.BaseTransport) and hasattr(transport, "abort"):
        transport.abort()


def _url(host: str, port: int) -> str:
    return f"https://[{host}]:{port}" if ":" in host else f"https://{host}:{port}"


class RunningServer:
    """A server running in its own thread and event loop. ``stop()`` (or leaving the ``with``) shuts it down
    gracefully and joins the thread; calling it twice is harmless."""

    def __init__(self, server: _Server, thread: threading.Thread, host: str, port: int) -> None:
        self._server = server
        self._thread = thread
        self.port = port
        self.url = _url(host, port)

    def stop(self) -> None:
        """Stop accepting, finish requests in flight (up to 5 s), close the socket and join the thread.

        Raises HttpsServerError when the thread does not end within 10 s."""
        self._server.should_exit = True
        self._thread.join(_STOP_TIMEOUT)
        if self._thread.is_alive():
            self._server.force_exit = True
            self._thread.join(_STOP_TIMEOUT)
            if self._thread.is_alive():
                raise HttpsServerError(f"servern på {self.url} stannade inte")

    def __enter__(self) -> RunningServer:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


def serve_in_thread(
    app: ASGIApp, tls: TlsFiles, *, host: str = "127.0.0.1", port: int = 0, name: str = "https"
) -> RunningServer:
    """Start ``app`` over HTTPS in a background thread and return once it accepts connections.

    ``port=0`` picks a free ephemeral port (see ``RunningServer.port``/``.url``). ``name`` names the thread
    and is sent in an ``x-served-by`` header (handy when several simulators run). Raises HttpsServerError when
    the server cannot start (unreadable certificate or key, app start-up failure) within 10 s; OSError when
    the address cannot be bound.
    """
    config = _config(app, tls, name=name)
    # Loaded in the caller's thread, so certificate errors surface as exceptions rather than a dead thread.
    try:
        config.load()
    except (OSError, ssl.SSLError) as exc:
        raise HttpsServerError(f"kunde inte läsa TLS-filerna för {name}: {exc}") from exc
    sock = _bind(host, port)
    bound_port: int = sock.getsockname()[1]
    server = _Server(config)
    failure: list[BaseException] = []

    def run() -> None:
        try:
            asyncio.run(server.serve(sockets=[sock]))
        except BaseException as exc:  # reported to the starting thread below
            failure.append(exc)
        finally:
            sock.close()

    thread = threading.Thread(target=run, name=f"{name}-{bound_port}", daemon=True)
    thread.start()
    deadline = time.monotonic() + _STARTUP_TIMEOUT
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            server.should_exit = True
            thread.join(_STOP_TIMEOUT)
            cause = failure[0] if failure else None
            raise HttpsServerError(f"{name} startade inte på {_url(host, bound_port)}") from cause
        time.sleep(0.005)
    return RunningServer(server, thread, host, bound_port)


def serve_forever(app: ASGIApp, tls: TlsFiles, host: str, port: int) -> None:
    """Serve ``app`` over HTTPS in the calling (main) thread until SIGTERM/SIGINT, then shut down gracefully.

    Raises HttpsServerError for unreadable TLS files, OSError when the address cannot be bound."""
    config = _config(app, tls, name="https")
    try:
        config.load()
    except (OSError, ssl.SSLError) as exc:
        raise HttpsServerError(f"kunde inte läsa TLS-filerna: {exc}") from exc
    sock = _bind(host, port)
    try:
        # In the main thread uvicorn installs its own SIGTERM/SIGINT handlers and exits its loop cleanly.
        _Server(config).run(sockets=[sock])
    finally:
        sock.close()
