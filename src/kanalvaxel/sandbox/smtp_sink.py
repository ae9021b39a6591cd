"""An SMTP server on loopback (aiosmtpd) that keeps what it receives: the sandbox's mail relay and the tests'.

    with SmtpSink(certificate=certs / "server.pem", key=certs / "server.key",
                  credentials={"kanalvaxel": "hemligt"}, store_dir=tmp / "mail") as sink:
        ...  # SMTP to sink.host:sink.port with STARTTLS and AUTH
        [mail] = sink.wait_for(1)

It speaks like a relay: STARTTLS (required by default) or implicit TLS, AUTH PLAIN/LOGIN over TLS only when
``credentials`` are given (and then required before MAIL), and "250 2.0.0 Ok: queued as <id>" for what it
accepts. :meth:`SmtpSink.behave` makes it refuse at RCPT or DATA for a while, to exercise retries and
fall-backs.

It runs its own event loop in a daemon thread rather than aiosmtpd's Controller, which needs a fixed port
(deps-notes §6); here port 0 gives a free port and :attr:`SmtpSink.port` tells which.

aiosmtpd logs every envelope address at INFO on the ``mail.log`` logger; the sink demotes that logger's INFO
records to DEBUG so no address reaches an INFO log. Received mail is logged at DEBUG only.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import os
import re
import secrets
import ssl
import tempfile
import threading
import weakref
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Any, Literal

from aiosmtpd.smtp import DATA_SIZE_DEFAULT, SMTP, AuthResult, Envelope, LoginPassword, Session

__all__ = ["ReceivedMail", "SmtpSink", "list_stored"]

log = logging.getLogger(__name__)

_AIOSMTPD_LOG = "mail.log"
_REPLY = re.compile(r"^[45]\d\d(?: .*)?$", re.DOTALL)


class _DemoteChatter(logging.Filter):
    """aiosmtpd logs envelope addresses (and each command line) at INFO, and a deprecation notice at WARNING
    on every AUTH; neither belongs in an INFO log (personal data, noise)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno == logging.INFO or (
            record.levelno == logging.WARNING and str(record.msg).startswith("Session.login_data")
        ):
            record.levelno = logging.DEBUG
            record.levelname = logging.getLevelName(logging.DEBUG)
            # The record has passed the logger's level check already; drop it here unless DEBUG is wanted.
            return logging.getLogger(_AIOSMTPD_LOG).isEnabledFor(logging.DEBUG)
        return True


_DEMOTE = _DemoteChatter()


@dataclass(frozen=True, slots=True)
class ReceivedMail:
    queue_id: str
    mail_from: str
    rcpt_tos: tuple[str, ...]
    data: bytes  # exactly the bytes received (dot-unstuffed), CRLF line ends as sent
    received_at: datetime
    tls: bool
    authenticated_as: str | None


@dataclass(slots=True)
class _Behaviour:
    reply: str | None = None
    times: int | None = None
    at: Literal["rcpt", "data"] = "data"


class _Handler:
    """aiosmtpd hooks; they run on the sink's event loop thread."""

    def __init__(self, sink: SmtpSink) -> None:
        self._sink = sink

    async def handle_MAIL(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, mail_options: list[str]
    ) -> str:
        if self._sink._credentials is not None and not session.authenticated:
            return "530 5.7.0 Authentication required"
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return "250 2.1.0 Ok"

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, rcpt_options: list[str]
    ) -> str:
        refusal = self._sink._take_refusal("rcpt")
        if refusal is not None:
            return refusal
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(rcpt_options)
        return "250 2.1.5 Ok"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        reply = self._sink._receive(session, envelope)
        delay = self._sink._take_delay()
        if delay:
            # Stored first, answered late: a relay whose answer the client never waits long enough for.
            await asyncio.sleep(delay)
        return reply


class SmtpSink:
    """A real SMTP server on loopback that stores what it accepts (in memory, and in ``store_dir`` if given).

    ``certificate``/``key``: the server's TLS identity, needed for STARTTLS and implicit TLS.
    ``require_starttls``: refuse MAIL and the rest before STARTTLS (needs a certificate).
    ``implicit_tls``: TLS from the first byte (SMTPS) instead of STARTTLS.
    ``credentials``: user name → password for AUTH PLAIN/LOGIN, offered over TLS only and then required;
    None = no AUTH at all.
    ``auth_mechanisms``: which of PLAIN and LOGIN it offers (both by default), to try a client's fall-back.
    ``max_size``: the SIZE it advertises and enforces (552 at DATA), in bytes; None = aiosmtpd's 32 MiB.
    """

    def __init__(
        self,
        *,
        certificate: Path | None = None,
        key: Path | None = None,
        require_starttls: bool = True,
        implicit_tls: bool = False,
        credentials: Mapping[str, str] | None = None,
        store_dir: Path | None = None,
        max_size: int | None = None,
        auth_mechanisms: Collection[str] = ("PLAIN", "LOGIN"),
    ) -> None:
        if (certificate is None) != (key is None):
            raise ValueError("certificate and key go together")
        if certificate is None and (require_starttls or implicit_tls):
            raise ValueError(
                "STARTTLS and implicit TLS need a certificate and key (or require_starttls=False)"
            )
        if certificate is None and credentials is not None:
            raise ValueError("AUTH is offered over TLS only: credentials need a certificate and key")
        mechanisms = {m.upper() for m in auth_mechanisms}
        if not mechanisms or not mechanisms <= {"PLAIN", "LOGIN"}:
            raise ValueError("auth_mechanisms: PLAIN, LOGIN or both")
        # No credentials: no AUTH at all.
        self._auth_excluded = tuple(
            sorted({"PLAIN", "LOGIN"} - (mechanisms if credentials is not None else set()))
        )
        self._tls_context: ssl.SSLContext | None = None
        if certificate is not None and key is not None:
            context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            context.minimum_version = ssl.TLSVersion.TLSv1_2
            context.load_cert_chain(certificate, key)
            self._tls_context = context
        self._require_starttls = require_starttls and not implicit_tls
        self._implicit_tls = implicit_tls
        self._credentials = dict(credentials) if credentials is not None else None
        self._store_dir = store_dir
        self._max_size = max_size
        self._lock = threading.Condition()
        self._late: tuple[float, int] = (0.0, 0)
        self._messages: list[ReceivedMail] = []
        self._attempts = 0
        self._behaviour = _Behaviour()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: asyncio.Server | None = None
        self._protocols: weakref.WeakSet[SMTP] = weakref.WeakSet()
        self.host = ""
        self.port = 0

    # -- life cycle -------------------------------------------------------------------------------------

    def start(self, host: str = "127.0.0.1", port: int = 0) -> None:
        """Listen on ``host``:``port`` (0 = a free port, read it from :attr:`port` afterwards)."""
        if self._thread is not None:
            raise RuntimeError("the SMTP sink is already running")
        if self._store_dir is not None:
            self._store_dir.mkdir(parents=True, exist_ok=True)
        aiosmtpd_log = logging.getLogger(_AIOSMTPD_LOG)
        if _DEMOTE not in aiosmtpd_log.filters:
            aiosmtpd_log.addFilter(_DEMOTE)
        loop = asyncio.new_event_loop()
        thread = threading.Thread(target=self._run, args=(loop,), name="smtp-sink", daemon=True)
        thread.start()
        future = asyncio.run_coroutine_threadsafe(
            loop.create_server(
                self._protocol,
                host,
                port,
                ssl=self._tls_context if self._implicit_tls else None,
            ),
            loop,
        )
        try:
            server = future.result(timeout=10)
        except BaseException:
            loop.call_soon_threadsafe(loop.stop)
            thread.join()
            loop.close()
            raise
        self._loop, self._thread, self._server = loop, thread, server
        self.host, self.port = server.sockets[0].getsockname()[:2]
        log.debug("SMTP sink listening on %s:%d", self.host, self.port)

    def stop(self) -> None:
        """Close the listener and every open connection, stop the loop and join its thread. Idempotent."""
        loop, thread, server = self._loop, self._thread, self._server
        if loop is None or thread is None or server is None:
            return
        try:
            asyncio.run_coroutine_threadsafe(self._shutdown(server), loop).result(timeout=10)
        finally:
            loop.call_soon_threadsafe(loop.stop)
            thread.join(timeout=10)
            loop.close()
            self._loop = self._thread = self._server = None

    def __enter__(self) -> SmtpSink:
        if self._thread is None:
            self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    @staticmethod
    def _run(loop: asyncio.AbstractEventLoop) -> None:
        asyncio.set_event_loop(loop)
        loop.run_forever()

    async def _shutdown(self, server: asyncio.Server) -> None:
        server.close()
        for protocol in list(self._protocols):
            if protocol.transport is not None:
                protocol.transport.close()
        current = asyncio.current_task()
        pending = [t for t in asyncio.all_tasks() if t is not current]
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        await server.wait_closed()
        # Let the transports' connection_lost callbacks run before the loop stops.
        await asyncio.sleep(0)

    def _protocol(self) -> SMTP:
        protocol = SMTP(
            _Handler(self),
            hostname="smtp-sink.localhost",
            ident="kanalvaxel SMTP sink",
            tls_context=None if self._implicit_tls else self._tls_context,
            require_starttls=self._require_starttls,
            enable_SMTPUTF8=True,
            data_size_limit=self._max_size if self._max_size is not None else DATA_SIZE_DEFAULT,
            authenticator=self._authenticate if self._credentials is not None else None,
            auth_exclude_mechanism=self._auth_excluded
            if self._credentials is not None
            else ("PLAIN", "LOGIN"),
            # aiosmtpd recognises only STARTTLS as TLS; on an implicit-TLS listener every connection is TLS.
            auth_require_tls=not self._implicit_tls,
            loop=asyncio.get_running_loop(),
        )
        self._protocols.add(protocol)
        return protocol

    # -- behaviour and inspection -----------------------------------------------------------------------

    def behave(
        self, reply: str | None, *, times: int | None = None, at: Literal["rcpt", "data"] = "data"
    ) -> None:
        """Answer the next ``times`` RCPT or DATA commands (``at``) with ``reply``, e.g. "451 4.3.0 Prova
        igen senare", storing nothing; ``times`` None = until changed. ``reply`` None = back to normal."""
        if reply is not None and (not _REPLY.match(reply) or "\r" in reply or "\n" in reply):
            raise ValueError(f"not a 4xx or 5xx SMTP reply: {reply!r}")
        if at not in ("rcpt", "data"):
            raise ValueError(f"at must be 'rcpt' or 'data', not {at!r}")
        if times is not None and times < 1:
            raise ValueError("times must be at least 1 (or None)")
        with self._lock:
            self._behaviour = _Behaviour(reply, times if reply is not None else None, at)

    def answer_late(self, seconds: float, *, times: int = 1) -> None:
        """Store the next ``times`` messages as usual but send the final reply only after ``seconds``."""
        if seconds < 0 or times < 1:
            raise ValueError("seconds must be >= 0 and times >= 1")
        with self._lock:
            self._late = (seconds, times)

    def _take_delay(self) -> float:
        with self._lock:
            seconds, times = self._late
            if times <= 0:
                return 0.0
            self._late = (seconds, times - 1)
            return seconds

    @property
    def messages(self) -> list[ReceivedMail]:
        with self._lock:
            return list(self._messages)

    @property
    def attempts(self) -> int:
        """DATA commands seen, accepted or refused (a "delivered once" check counts these)."""
        with self._lock:
            return self._attempts

    def clear(self) -> None:
        """Forget received mail and attempts (files in ``store_dir`` stay)."""
        with self._lock:
            self._messages.clear()
            self._attempts = 0

    def wait_for(self, count: int, timeout: float = 10.0) -> list[ReceivedMail]:
        """The received mail once there are at least ``count``; TimeoutError if not within ``timeout``."""
        with self._lock:
            if not self._lock.wait_for(lambda: len(self._messages) >= count, timeout):
                raise TimeoutError(f"SMTP sink: {len(self._messages)} of {count} messages after {timeout} s")
            return list(self._messages)

    # -- on the loop thread -----------------------------------------------------------------------------

    def _take_refusal(self, at: Literal["rcpt", "data"]) -> str | None:
        with self._lock:
            behaviour = self._behaviour
            if behaviour.reply is None or behaviour.at != at:
                return None
            if behaviour.times is not None:
                behaviour.times -= 1
                if behaviour.times == 0:
                    self._behaviour = _Behaviour()
            return behaviour.reply

    def _authenticate(
        self, server: SMTP, session: Session, envelope: Envelope, mechanism: str, auth_data: Any
    ) -> AuthResult:
        assert self._credentials is not None
        if not isinstance(auth_data, LoginPassword):
            return AuthResult(success=False, handled=False)
        user = auth_data.login.decode("utf-8", errors="replace")
        expected = self._credentials.get(user)
        ok = expected is not None and hmac.compare_digest(expected.encode(), auth_data.password)
        return AuthResult(success=ok, handled=False, auth_data=user if ok else None)

    def _receive(self, session: Session, envelope: Envelope) -> str:
        with self._lock:
            self._attempts += 1
        refusal = self._take_refusal("data")
        if refusal is not None:
            return refusal
        assert envelope.mail_from is not None
        assert envelope.original_content is not None
        now = datetime.now(UTC)
        mail = ReceivedMail(
            queue_id=secrets.token_hex(6).upper(),
            mail_from=envelope.mail_from,
            rcpt_tos=tuple(envelope.rcpt_tos),
            data=bytes(envelope.original_content),
            received_at=now,
            tls=self._implicit_tls or session.ssl is not None,
            authenticated_as=session.auth_data if session.authenticated else None,
        )
        if self._store_dir is not None:
            try:
                _store(self._store_dir, mail)
            except OSError:
                log.exception("SMTP sink could not store message %s", mail.queue_id)
                return "451 4.3.0 Kunde inte spara meddelandet"
        with self._lock:
            self._messages.append(mail)
            self._lock.notify_all()
        log.debug(
            "SMTP sink received %s from %s to %s (%d bytes, tls=%s)",
            mail.queue_id,
            mail.mail_from,
            ", ".join(mail.rcpt_tos),
            len(mail.data),
            mail.tls,
        )
        return f"250 2.0.0 Ok: queued as {mail.queue_id}"


def _store(directory: Path, mail: ReceivedMail) -> None:
    # Written under a dot-name and renamed, so a reader of *.eml never sees half a message.
    name = f"{mail.received_at:%Y%m%dT%H%M%S%fZ}-{mail.queue_id}.eml"
    fd, tmp = tempfile.mkstemp(prefix=".", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(mail.data)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, directory / name)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def list_stored(store_dir: Path) -> list[Path]:
    """The stored messages (``<UTC timestamp>-<queue id>.eml``), oldest first."""
    return sorted(p for p in store_dir.glob("*.eml") if not p.name.startswith("."))
