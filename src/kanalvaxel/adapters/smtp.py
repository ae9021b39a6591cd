"""Sending through the agency's SMTP relay (smtplib, synchronous: the delivery workers are threads).

One :meth:`SmtpTransport.send` is one SMTP session: connect, EHLO, STARTTLS (or implicit TLS), EHLO again,
AUTH, MAIL, RCPT for each recipient, DATA, QUIT. It is driven step by step rather than with ``sendmail`` so
that the final DATA reply, which carries the relay's queue id, is captured.

Security:

- ``starttls``: a server that does not advertise STARTTLS is refused before anything else is said; there is
  no fall-back to plain text. ``tls`` is implicit TLS (SMTPS, usually port 465). Both verify the server's
  certificate and host name against ``ca_bundle`` (or the system trust store) with TLS 1.2 or newer.
- ``none`` sends in plain text and never authenticates: a configuration with ``none`` and a user name is
  refused when it is built (:class:`~kanalvaxel.domain.errors.ConfigurationError`), because the password
  would cross the network in clear. Whether ``none`` is acceptable at all (a relay on the same host) is the
  settings' decision, not this module's.

How answers and failures are classified (``retryable`` tells the caller whether waiting can help):

======================================================  =====================================
what happened                                           error
======================================================  =====================================
any 4xx reply, at any step                              :class:`SmtpTemporaryError`
5xx at RCPT (bad address) or DATA (content, size)       :class:`SmtpPermanentError`
5xx at the greeting, EHLO, STARTTLS, AUTH or MAIL FROM  :class:`SmtpTemporaryError`
connection refused, time-outs, disconnects              :class:`SmtpTemporaryError`
no final reply after the whole message was sent         :class:`SmtpUncertainError`
TLS handshake or certificate failure                    :class:`SmtpTemporaryError`
no STARTTLS offered although ``starttls`` is set        :class:`SmtpTemporaryError`
no AUTH PLAIN/LOGIN offered although a user is set      :class:`SmtpTemporaryError`
envelope sender with CR or LF (our own setting)         :class:`SmtpTemporaryError`
message larger than the SIZE the server advertises      :class:`SmtpPermanentError`
552 at MAIL FROM after we declared the SIZE             :class:`SmtpPermanentError`
8-bit message or non-ASCII address the server can't     :class:`SmtpPermanentError`
take (no 8BITMIME / SMTPUTF8), recipient with CR or LF
======================================================  =====================================

A 5xx before RCPT says our own set-up is wrong (credentials, sender address, a relay that refuses us), not the
letter: the letter must wait for an operator to fix it rather than fall to paper at once. The size cases are
the exception: there the letter itself is what the relay cannot take. If some recipients are refused the whole
message is refused (a letter goes to one recipient; a partial delivery would be a delivery nobody records).

Once the message and its terminating dot have been sent, a lost connection or a time-out waiting for the
final reply (``data_timeout``; RFC 5321 §4.5.3.2 suggests 10 minutes) leaves the outcome unknown: the relay
may have queued the message. That is :class:`SmtpUncertainError` (not retryable): sending again could
deliver the letter twice, so the caller must not resend on its own.

A whole :meth:`SmtpTransport.send` can be bounded (``session_timeout``): every step gets at most what is left
of it after keeping ``data_timeout`` for the final reply, and when too little is left to wait for that reply
the message is not finished (no final dot: the relay discards it) and the error is temporary. The delivery
worker sets it below its lease (renewed when the attempt starts), so no other worker can take the letter
over while this one may still be sending it. The bound is applied per socket operation (a step's reply is
read line by line, name resolution is not bounded), so a relay that trickles its answer can overrun it a
little; the check before the final dot keeps such an overrun from ever turning into a second delivery.

The session always ends with QUIT (or a plain close when the connection is already broken), also on errors.
``server_text`` is the server's own words, decoded and trimmed, or ours (Swedish) when the server said
nothing. Logs at INFO and above carry codes, steps and queue ids, never addresses or server texts (these
often quote the address).
"""

from __future__ import annotations

import base64
import logging
import re
import smtplib
import socket
import ssl
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from kanalvaxel.domain.errors import ConfigurationError, KanalvaxelError

__all__ = [
    "SmtpConfig",
    "SmtpError",
    "SmtpPermanentError",
    "SmtpReceipt",
    "SmtpTemporaryError",
    "SmtpTransport",
    "SmtpUncertainError",
    "queue_id_from",
]

log = logging.getLogger(__name__)

Step = Literal["connect", "ehlo", "starttls", "auth", "mail", "rcpt", "data", "end", "quit"]

# Steps whose 5xx answer is about the letter rather than about our set-up.
_LETTER_STEPS: frozenset[Step] = frozenset({"rcpt", "data", "end"})


@dataclass(frozen=True, slots=True)
class SmtpConfig:
    host: str
    port: int
    security: Literal["starttls", "tls", "none"]  # tls = implicit TLS (SMTPS, port 465)
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    ca_bundle: Path | None = None  # None = the system trust store
    timeout: float = 30.0
    local_hostname: str | None = None  # the EHLO name; None = this host's FQDN
    #: How long to wait for the reply to the end of the message (content scanning relays take a while).
    data_timeout: float = 120.0
    #: The longest one send may take, final reply included; None = no bound beyond the per-step ones.
    session_timeout: float | None = None

    def __post_init__(self) -> None:
        if self.security not in ("starttls", "tls", "none"):
            raise ConfigurationError(f"SMTP: okänt säkerhetsläge {self.security!r}")
        if not self.host:
            raise ConfigurationError("SMTP: värdnamn saknas")
        if not 0 < self.port < 65536:
            raise ConfigurationError(f"SMTP: ogiltig port {self.port}")
        if self.timeout <= 0 or self.data_timeout <= 0:
            raise ConfigurationError("SMTP: tidsgränsen måste vara större än noll")
        if self.session_timeout is not None and self.session_timeout <= self.data_timeout:
            raise ConfigurationError(
                "SMTP: tidsgränsen för hela sändningen måste vara längre än den för svaret"
            )
        if (self.username is None) != (self.password is None):
            raise ConfigurationError("SMTP: användarnamn och lösenord anges tillsammans eller inte alls")
        if self.username is not None and self.security == "none":
            raise ConfigurationError(
                "SMTP: inloggning kräver TLS (security 'starttls' eller 'tls'); "
                "lösenordet skickas aldrig okrypterat"
            )


class SmtpError(KanalvaxelError):
    """The relay did not take the message. ``retryable``: whether sending the same message later can help;
    ``code``: the SMTP reply code, None when the server gave none (network, TLS, our own checks);
    ``server_text``: the server's words, or ours; ``step``: where in the session it happened."""

    retryable: bool = False

    def __init__(self, step: Step, code: int | None, server_text: str) -> None:
        self.step = step
        self.code = code
        self.server_text = server_text
        where = _STEP_NAMES[step]
        if code is None:
            message = f"SMTP-reläet tog inte emot meddelandet ({where}): {server_text}"
        else:
            message = f"SMTP-reläet svarade {code} ({where}): {server_text}"
        super().__init__(message)


class SmtpTemporaryError(SmtpError):
    """Try again later: the relay is busy or unreachable, or our own set-up needs an operator."""

    retryable = True


class SmtpPermanentError(SmtpError):
    """This message will never be taken as it is: a refused address, refused content, too large."""

    retryable = False


class SmtpUncertainError(SmtpError):
    """The whole message was sent but no final reply came: the relay may or may not have queued it.
    Not retryable: a resend could deliver the letter twice."""

    retryable = False


_STEP_NAMES: dict[Step, str] = {
    "connect": "vid anslutning",
    "ehlo": "vid EHLO",
    "starttls": "vid STARTTLS",
    "auth": "vid inloggning",
    "mail": "vid MAIL FROM",
    "rcpt": "vid RCPT TO",
    "data": "vid DATA",
    "end": "i väntan på svar efter meddelandets slut",
    "quit": "vid QUIT",
}


@dataclass(frozen=True, slots=True)
class SmtpReceipt:
    queue_id: str | None  # the relay's id for the message, parsed from its final reply; None if absent
    response: str  # the full final reply text, e.g. "2.0.0 Ok: queued as 4XyZ12"


# Final-reply shapes of common relays: Postfix "2.0.0 Ok: queued as 4XyZ12", Exim "OK id=1rAbCd-000Ef-GH",
# Sendmail "2.0.0 4BG9x1Yq012345 Message accepted for delivery".
_QUEUE_ID_PATTERNS = (
    re.compile(r"\bqueued as\s+<?([^\s<>;,]+)>?", re.IGNORECASE),
    re.compile(r"(?:^|\s)id=<?([^\s<>;,]+)>?", re.IGNORECASE),
    re.compile(r"^(?:[245]\.\d{1,3}\.\d{1,3}\s+)?<?([^\s<>]+)>?\s+message accepted", re.IGNORECASE),
)


def queue_id_from(reply: str) -> str | None:
    """The relay's queue id in a final DATA reply text (without the code), or None if it names none."""
    for pattern in _QUEUE_ID_PATTERNS:
        match = pattern.search(reply)
        if match:
            return match.group(1).rstrip(".")
    return None


_BARE_LINE_END = re.compile(rb"\r\n|\r|\n")
_DOT_AT_LINE_START = re.compile(rb"(?m)^\.")


def _crlf(message: bytes) -> bytes:
    # SMTP allows only CRLF line ends; many relays refuse a bare LF (550 "bare LF") or rewrite it.
    return _BARE_LINE_END.sub(b"\r\n", message)


def _text(reply: bytes | str) -> str:
    if isinstance(reply, bytes):
        reply = reply.decode("utf-8", errors="replace")
    return reply.strip()


def _reply_error(step: Step, code: int, reply: bytes | str) -> SmtpError:
    text = _text(reply) or "(inget svar)"
    if 500 <= code < 600 and step in _LETTER_STEPS:
        return SmtpPermanentError(step, code, text)
    # 4xx, 5xx during set-up, and nonsense codes (smtplib's -1 for an unreadable reply).
    return SmtpTemporaryError(step, code if code > 0 else None, text)


def _tls_reason(exc: ssl.SSLError) -> str:
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"serverns certifikat godtogs inte: {exc.verify_message or exc.reason}"
    return f"TLS-handskakningen misslyckades: {exc.reason or exc}"


def _network_error(step: Step, exc: OSError | smtplib.SMTPServerDisconnected) -> SmtpError:
    if isinstance(exc, smtplib.SMTPServerDisconnected) and isinstance(exc.__context__, OSError):
        exc = exc.__context__  # smtplib reports a read time-out as a disconnect; say what it was
    if isinstance(exc, ssl.SSLError):
        text = _tls_reason(exc)
    elif isinstance(exc, smtplib.SMTPServerDisconnected):
        text = "servern stängde förbindelsen"
    elif isinstance(exc, ConnectionRefusedError):
        text = "anslutningen nekades"
    elif isinstance(exc, TimeoutError):
        text = "tidsgränsen överskreds"
    else:
        text = f"nätverksfel: {exc.strerror or type(exc).__name__}"
    if step == "end":
        return SmtpUncertainError(step, None, f"{text}; okänt om reläet tog emot meddelandet")
    return SmtpTemporaryError(step, None, text)


class _Client(smtplib.SMTP):
    """smtplib's client, unconnected at construction (so every failure happens inside our error handling)
    and with the host name known for the certificate check from the start."""

    def __init__(self, config: SmtpConfig, implicit_tls: ssl.SSLContext | None) -> None:
        super().__init__(local_hostname=config.local_hostname, timeout=config.timeout)
        # smtplib sets _host (the name STARTTLS checks the certificate against) only when its constructor
        # connects, which would leak the socket of a failed greeting; so set it here.
        self._host = config.host
        self._implicit_tls = implicit_tls

    def _get_socket(self, host: str, port: int, timeout: float) -> socket.socket:
        raw: socket.socket = super()._get_socket(host, port, timeout)  # type: ignore[misc]
        if self._implicit_tls is None:
            return raw
        try:
            return self._implicit_tls.wrap_socket(raw, server_hostname=host)
        except BaseException:
            raw.close()  # smtplib.SMTP_SSL leaves it open when the handshake fails
            raise


_QUIT_TIMEOUT = 10.0  # the goodbye decides nothing; the outcome is not held up waiting for it
_LEAST_WAIT = 0.5  # for the final reply when a pause ate the time kept for it


class _Session:
    """One SMTP conversation; each method raises our SmtpError for its own step."""

    def __init__(self, client: smtplib.SMTP, config: SmtpConfig, deadline: float | None) -> None:
        self.client = client
        self.config = config
        self.deadline = deadline  # time.monotonic() by which the whole session is over; None = unbounded
        self.step: Step = "connect"
        self.broken = False  # the connection can no longer carry a polite QUIT
        self.in_message = False  # between DATA's 354 and the final dot: a QUIT would be read as message text

    def enter(self, step: Step) -> None:
        """Start ``step``: its time-out is the step time-out, cut to what the session has left (before the
        final dot, less the time kept for the final reply). Too little left: temporary error, nothing sent."""
        self.step = step
        wait = self.config.data_timeout if step == "end" else self.config.timeout
        if self.deadline is not None:
            left = self.deadline - time.monotonic()
            if step == "end":
                # The dot is sent: never a retryable error now. A pause (GC, a frozen VM) that ate the time
                # kept for the reply leaves a short wait, and no reply in it means "in doubt".
                wait = min(wait, max(left, _LEAST_WAIT))
            else:
                left -= self.config.data_timeout
                if left <= 0:
                    log.warning("SMTP session out of time before %s; the message was not sent", step.upper())
                    # Mid-message the relay reads whatever we say as message text: just hang up.
                    self.broken = self.broken or self.in_message
                    raise SmtpTemporaryError(
                        step, None, "sändningen tog för lång tid och avbröts innan meddelandet var skickat"
                    )
                wait = min(wait, left)
        self.client.timeout = wait  # used by connect()
        if self.client.sock is not None:
            self.client.sock.settimeout(wait)

    def expect(self, step: Step, reply: tuple[int, bytes], ok: tuple[int, ...] = (250,)) -> None:
        code, text = reply
        if code not in ok:
            log.warning("SMTP relay answered %s at %s", code, step.upper())
            log.debug("SMTP relay text at %s: %s", step, _text(text))
            raise _reply_error(step, code, text)


class SmtpTransport:
    """Sends ready-made RFC 5322 messages through one configured relay. Thread-safe: each call is its own
    session; the TLS context is built once."""

    def __init__(self, config: SmtpConfig) -> None:
        self._config = config
        self._tls: ssl.SSLContext | None = None
        if config.security != "none":
            try:
                context = ssl.create_default_context(
                    cafile=str(config.ca_bundle) if config.ca_bundle is not None else None
                )
            except (OSError, ssl.SSLError) as exc:
                raise ConfigurationError(
                    f"SMTP: CA-filen {config.ca_bundle} kunde inte läsas: {exc}"
                ) from exc
            context.minimum_version = ssl.TLSVersion.TLSv1_2
            context.check_hostname = True
            context.verify_mode = ssl.CERT_REQUIRED
            self._tls = context

    @property
    def config(self) -> SmtpConfig:
        return self._config

    def check(self) -> None:
        """Connect, secure, authenticate and QUIT, for a start-up or health check. Raises SmtpError."""
        with self._session():
            pass
        log.info("SMTP relay %s:%d reachable", self._config.host, self._config.port)

    def send(self, envelope_from: str, recipients: Sequence[str], message: bytes) -> SmtpReceipt:
        """Send ``message`` (an RFC 5322 message; line ends are made CRLF) to every recipient in one
        transaction. Returns the relay's receipt once it answered 250 to DATA; raises SmtpTemporaryError or
        SmtpPermanentError (see the module docstring). Not idempotent: a time-out after DATA may leave the
        message delivered although an error is raised, the usual SMTP at-least-once caveat."""
        if isinstance(recipients, str):
            raise TypeError("recipients must be a sequence of addresses, not one string")
        if not recipients:
            raise ValueError("no recipients")
        data = _crlf(message)
        if "\r" in envelope_from or "\n" in envelope_from:
            # The envelope sender is our own setting: wrong set-up, so the letter waits (see the table above).
            raise SmtpTemporaryError("mail", None, "avsändaradressen innehåller radbrytning")
        if any("\r" in a or "\n" in a for a in recipients):
            raise SmtpPermanentError("rcpt", None, "mottagaradressen innehåller radbrytning")
        deadline = None
        if self._config.session_timeout is not None:
            deadline = time.monotonic() + self._config.session_timeout
        with self._session(deadline) as session:
            client = session.client
            mail_options = self._mail_options(client, envelope_from, recipients, data)
            session.enter("mail")
            code, reply = client.mail(envelope_from, mail_options)
            if code == 552 and any(o.startswith("SIZE=") for o in mail_options):
                raise SmtpPermanentError("mail", code, _text(reply))
            session.expect("mail", (code, reply))
            session.enter("rcpt")
            for recipient in recipients:
                session.expect("rcpt", client.rcpt(recipient), ok=(250, 251))
            session.enter("data")
            session.expect("data", client.docmd("data"), ok=(354,))
            session.in_message = True
            # smtplib's data() would hide where a failure happened; before the final dot a failure is a
            # plain temporary one, after it the outcome is unknown (see the module docstring).
            body = _DOT_AT_LINE_START.sub(b"..", data)
            if not body.endswith(b"\r\n"):
                body += b"\r\n"
            session.enter("data")  # the message itself: sent whole within the time left, or not finished
            client.send(body)
            session.enter("data")  # the final dot only if the final reply can still be waited for
            client.send(b".\r\n")
            session.in_message = False
            session.enter("end")
            code, reply = client.getreply()
            session.expect("end", (code, reply))
            text = _text(reply)
            receipt = SmtpReceipt(queue_id=queue_id_from(text), response=text)
        log.info(
            "SMTP relay accepted a message of %d bytes for %d recipient(s), queue id %s",
            len(data),
            len(recipients),
            receipt.queue_id,
        )
        return receipt

    def _mail_options(
        self, client: smtplib.SMTP, envelope_from: str, recipients: Sequence[str], data: bytes
    ) -> list[str]:
        options: list[str] = []
        if client.has_extn("size"):
            limit = client.esmtp_features.get("size", "").strip()
            if limit.isdigit() and int(limit) > 0 and len(data) > int(limit):
                raise SmtpPermanentError(
                    "mail", None, f"meddelandet ({len(data)} byte) är större än reläets gräns ({limit} byte)"
                )
            options.append(f"SIZE={len(data)}")
        if not data.isascii():
            if not client.has_extn("8bitmime"):
                raise SmtpPermanentError(
                    "mail", None, "meddelandet har 8-bitarsdata och reläet saknar 8BITMIME"
                )
            options.append("BODY=8BITMIME")
        if not all(a.isascii() for a in (envelope_from, *recipients)):
            if not client.has_extn("smtputf8"):
                raise SmtpPermanentError(
                    "rcpt", None, "adressen har tecken utanför ASCII och reläet saknar SMTPUTF8"
                )
            options.append("SMTPUTF8")
        return options

    @contextmanager
    def _session(self, deadline: float | None = None) -> Iterator[_Session]:
        """Connected, secured and logged in; always closed afterwards. Foreign errors become SmtpError."""
        cfg = self._config
        client = _Client(cfg, self._tls if cfg.security == "tls" else None)
        session = _Session(client, cfg, deadline)
        try:
            try:
                session.enter("connect")
                session.expect("connect", client.connect(cfg.host, cfg.port), ok=(220,))
                self._secure_and_login(session)
                yield session
            except SmtpError:
                raise
            except smtplib.SMTPResponseException as exc:
                log.warning("SMTP relay answered %s at %s", exc.smtp_code, session.step.upper())
                raise _reply_error(session.step, exc.smtp_code, exc.smtp_error) from exc
            except (smtplib.SMTPServerDisconnected, OSError) as exc:
                session.broken = True
                log.warning(
                    "SMTP relay %s:%d failed at %s: %s",
                    cfg.host,
                    cfg.port,
                    session.step.upper(),
                    type(exc).__name__,
                )
                raise _network_error(session.step, exc) from exc
            except smtplib.SMTPException as exc:  # e.g. no AUTH mechanism in common
                log.warning("SMTP session failed at %s: %s", session.step.upper(), type(exc).__name__)
                raise SmtpTemporaryError(session.step, None, str(exc) or type(exc).__name__) from exc
        finally:
            self._close(session)

    def _secure_and_login(self, session: _Session) -> None:
        cfg = self._config
        client = session.client
        session.enter("ehlo")
        session.expect("ehlo", client.ehlo())
        if cfg.security == "starttls":
            session.enter("starttls")
            if not client.has_extn("starttls"):
                log.warning(
                    "SMTP relay %s:%d does not offer STARTTLS; not sending in clear", cfg.host, cfg.port
                )
                raise SmtpTemporaryError(
                    "starttls", None, "servern erbjuder inte STARTTLS; vi skickar aldrig okrypterat"
                )
            client.starttls(context=self._tls)
            session.enter("ehlo")
            session.expect("ehlo", client.ehlo())  # RFC 3207: forget what was said before TLS
        if cfg.username is not None and cfg.password is not None:
            session.enter("auth")
            self._login(session, cfg.username, cfg.password)

    @staticmethod
    def _login(session: _Session, username: str, password: str) -> None:
        # Not smtplib's login(): it encodes credentials as ASCII, so a password with å, ä or ö fails
        # (UnicodeEncodeError) before reaching the server. RFC 4616 (PLAIN) says UTF-8.
        client = session.client
        if not client.has_extn("auth"):
            raise SmtpTemporaryError("auth", None, "reläet erbjuder ingen inloggning (AUTH) över TLS")
        mechanisms = client.esmtp_features["auth"].upper().split()

        def b64(text: str) -> str:
            return base64.b64encode(text.encode("utf-8")).decode("ascii")

        if "PLAIN" in mechanisms:
            session.expect(
                "auth", client.docmd("AUTH", "PLAIN " + b64(f"\0{username}\0{password}")), ok=(235,)
            )
        elif "LOGIN" in mechanisms:
            session.expect("auth", client.docmd("AUTH", "LOGIN " + b64(username)), ok=(334,))
            session.expect("auth", client.docmd(b64(password)), ok=(235,))
        else:
            raise SmtpTemporaryError(
                "auth", None, f"reläet erbjuder varken AUTH PLAIN eller LOGIN (bara {' '.join(mechanisms)})"
            )

    @staticmethod
    def _close(session: _Session) -> None:
        client = session.client
        wait = min(session.config.timeout, _QUIT_TIMEOUT)
        if session.deadline is not None:  # the goodbye too ends within the session's bound
            wait = min(wait, session.deadline - time.monotonic())
        if not session.broken and not session.in_message and client.sock is not None and wait > 0:
            try:
                client.sock.settimeout(wait)
                client.quit()
                return
            except (smtplib.SMTPException, OSError):
                pass  # the message's fate is already decided; the relay not saying goodbye changes nothing
        client.close()
