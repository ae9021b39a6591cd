"""The SMTP transport against the SMTP sink: a real aiosmtpd server on loopback, real TLS with the dev
certificates (server.pem for localhost and 127.0.0.1, issued by ca.pem), real AUTH."""

from __future__ import annotations

import datetime as dt
import logging
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from kanalvaxel.adapters.smtp import (
    SmtpConfig,
    SmtpError,
    SmtpPermanentError,
    SmtpTemporaryError,
    SmtpTransport,
    queue_id_from,
)
from kanalvaxel.domain.errors import ConfigurationError
from kanalvaxel.sandbox.smtp_sink import SmtpSink, list_stored

SENDER = "noreply@sandlada.example.se"
RECIPIENT = "mottagare@example.se"
USER, PASSWORD = "kanalvaxel", "rätt-lösenord"

# CRLF throughout, 8-bit UTF-8 (needs BODY=8BITMIME) and a line starting with a dot (needs dot-stuffing).
MESSAGE = (
    "From: Försäkringskassan <noreply@sandlada.example.se>\r\n"
    "To: mottagare@example.se\r\n"
    "Subject: =?utf-8?q?Ett_brev_fr=C3=A5n_myndigheten?=\r\n"
    "MIME-Version: 1.0\r\n"
    "Content-Type: text/plain; charset=utf-8\r\n"
    "Content-Transfer-Encoding: 8bit\r\n"
    "\r\n"
    "Hej Åsa Öberg,\r\n"
    ".en rad som börjar med punkt\r\n"
    "..och en med två\r\n"
    "Med vänlig hälsning\r\n"
).encode()

Sinks = Callable[..., SmtpSink]


@pytest.fixture
def sinks(dev_certs: Path) -> Iterator[Sinks]:
    """Starts sinks (TLS identity server.pem unless told otherwise) and stops them all afterwards."""
    started: list[SmtpSink] = []

    def start(*, tls: bool = True, host: str = "127.0.0.1", **options: Any) -> SmtpSink:
        if tls:
            options.setdefault("certificate", dev_certs / "server.pem")
            options.setdefault("key", dev_certs / "server.key")
        sink = SmtpSink(**options)
        sink.start(host=host)
        started.append(sink)
        return sink

    yield start
    for sink in started:
        sink.stop()


def transport(
    sink: SmtpSink, dev_certs: Path, *, security: str = "starttls", host: str = "localhost", **options: Any
) -> SmtpTransport:
    options.setdefault("ca_bundle", dev_certs / "ca.pem")
    config = SmtpConfig(
        host=host,
        port=sink.port,
        security=security,  # type: ignore[arg-type]
        timeout=5.0,
        local_hostname="kanalvaxel.test",
        **options,
    )
    return SmtpTransport(config)


def test_starttls_and_auth_deliver_the_exact_bytes_and_store_them(
    sinks: Sinks, dev_certs: Path, tmp_path: Path
) -> None:
    sink = sinks(credentials={USER: PASSWORD}, store_dir=tmp_path / "mail")
    smtp = transport(sink, dev_certs, username=USER, password=PASSWORD)

    receipt = smtp.send(SENDER, [RECIPIENT], MESSAGE)

    [mail] = sink.messages
    assert mail.data == MESSAGE
    assert (mail.mail_from, mail.rcpt_tos) == (SENDER, (RECIPIENT,))
    assert mail.tls is True
    assert mail.authenticated_as == USER
    assert receipt.queue_id == mail.queue_id
    assert receipt.response == f"2.0.0 Ok: queued as {mail.queue_id}"
    [stored] = list_stored(tmp_path / "mail")
    assert stored.name.endswith(f"-{mail.queue_id}.eml")
    assert stored.read_bytes() == MESSAGE
    assert sink.attempts == 1


def test_auth_login_when_the_relay_offers_no_plain(sinks: Sinks, dev_certs: Path) -> None:
    sink = sinks(credentials={USER: PASSWORD}, auth_mechanisms=("LOGIN",))
    transport(sink, dev_certs, username=USER, password=PASSWORD).send(SENDER, [RECIPIENT], MESSAGE)
    [mail] = sink.messages
    assert mail.authenticated_as == USER
    # and a wrong password over LOGIN is a set-up problem too: temporary, nothing sent
    with pytest.raises(SmtpTemporaryError) as caught:
        transport(sink, dev_certs, username=USER, password="fel-lösenord").send(SENDER, [RECIPIENT], MESSAGE)
    assert (caught.value.step, caught.value.code) == ("auth", 535)
    assert len(sink.messages) == 1


def test_implicit_tls_with_auth(sinks: Sinks, dev_certs: Path) -> None:
    sink = sinks(implicit_tls=True, credentials={USER: PASSWORD})
    receipt = transport(sink, dev_certs, security="tls", username=USER, password=PASSWORD).send(
        SENDER, [RECIPIENT], MESSAGE
    )
    [mail] = sink.wait_for(1)
    assert (mail.tls, mail.authenticated_as, mail.data) == (True, USER, MESSAGE)
    assert receipt.queue_id == mail.queue_id


def test_security_none_against_a_plain_server(sinks: Sinks, dev_certs: Path) -> None:
    sink = sinks(tls=False, require_starttls=False)
    transport(sink, dev_certs, security="none", ca_bundle=None).send(SENDER, [RECIPIENT], MESSAGE)
    [mail] = sink.messages
    assert (mail.tls, mail.authenticated_as, mail.data) == (False, None, MESSAGE)


def test_a_server_without_starttls_gets_nothing_when_starttls_is_configured(
    sinks: Sinks, dev_certs: Path, tmp_path: Path
) -> None:
    sink = sinks(tls=False, require_starttls=False, store_dir=tmp_path / "mail")
    with pytest.raises(SmtpTemporaryError) as caught:
        transport(sink, dev_certs).send(SENDER, [RECIPIENT], MESSAGE)
    assert caught.value.step == "starttls"
    assert caught.value.code is None
    assert "STARTTLS" in caught.value.server_text
    assert sink.messages == []
    assert sink.attempts == 0
    assert list_stored(tmp_path / "mail") == []


def other_ca(directory: Path) -> Path:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "En annan CA")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    path = directory / "other-ca.pem"
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return path


def test_a_server_certificate_from_another_ca_is_refused_as_temporary(
    sinks: Sinks, dev_certs: Path, tmp_path: Path
) -> None:
    sink = sinks(credentials={USER: PASSWORD})
    smtp = transport(sink, dev_certs, ca_bundle=other_ca(tmp_path), username=USER, password=PASSWORD)
    with pytest.raises(SmtpTemporaryError) as caught:
        smtp.send(SENDER, [RECIPIENT], MESSAGE)
    assert caught.value.step == "starttls"
    assert "certifikat" in caught.value.server_text
    assert isinstance(caught.value.__cause__, ssl.SSLCertVerificationError)
    assert sink.attempts == 0


def test_the_host_name_is_checked(sinks: Sinks, dev_certs: Path) -> None:
    # The whole of 127/8 is loopback, but server.pem names only localhost and 127.0.0.1.
    sink = sinks(host="127.0.0.2")
    with pytest.raises(SmtpTemporaryError) as caught:
        transport(sink, dev_certs, host="127.0.0.2").send(SENDER, [RECIPIENT], MESSAGE)
    assert isinstance(caught.value.__cause__, ssl.SSLCertVerificationError)
    assert "127.0.0.2" in caught.value.server_text
    assert sink.messages == []


def test_a_wrong_password_is_a_set_up_problem_so_temporary(sinks: Sinks, dev_certs: Path) -> None:
    sink = sinks(credentials={USER: PASSWORD})
    smtp = transport(sink, dev_certs, username=USER, password="fel-lösenord")
    with pytest.raises(SmtpTemporaryError) as caught:
        smtp.send(SENDER, [RECIPIENT], MESSAGE)
    assert (caught.value.step, caught.value.code, caught.value.retryable) == ("auth", 535, True)
    with pytest.raises(SmtpTemporaryError):
        smtp.check()
    assert sink.attempts == 0


def test_no_login_where_the_relay_requires_one_is_refused_at_mail_as_temporary(
    sinks: Sinks, dev_certs: Path
) -> None:
    sink = sinks(credentials={USER: PASSWORD})
    with pytest.raises(SmtpTemporaryError) as caught:
        transport(sink, dev_certs).send(SENDER, [RECIPIENT], MESSAGE)
    assert (caught.value.step, caught.value.code) == ("mail", 530)
    assert caught.value.server_text == "5.7.0 Authentication required"


def test_4xx_at_data_is_temporary_and_the_letter_arrives_once_afterwards(
    sinks: Sinks, dev_certs: Path, tmp_path: Path
) -> None:
    sink = sinks(store_dir=tmp_path / "mail")
    sink.behave("451 4.3.0 Prova igen senare", times=2)
    smtp = transport(sink, dev_certs)
    for _ in range(2):
        with pytest.raises(SmtpTemporaryError) as caught:
            smtp.send(SENDER, [RECIPIENT], MESSAGE)
        assert (caught.value.step, caught.value.code) == ("end", 451)
        assert caught.value.server_text == "4.3.0 Prova igen senare"
        assert "451" in str(caught.value)
    smtp.send(SENDER, [RECIPIENT], MESSAGE)
    assert sink.attempts == 3
    assert [m.data for m in sink.messages] == [MESSAGE]
    assert len(list_stored(tmp_path / "mail")) == 1


def test_5xx_at_data_is_permanent_with_the_servers_words(sinks: Sinks, dev_certs: Path) -> None:
    sink = sinks()
    sink.behave("554 5.6.0 Innehållet avvisas", times=1)
    with pytest.raises(SmtpPermanentError) as caught:
        transport(sink, dev_certs).send(SENDER, [RECIPIENT], MESSAGE)
    assert (caught.value.step, caught.value.code, caught.value.retryable) == ("end", 554, False)
    assert caught.value.server_text == "5.6.0 Innehållet avvisas"
    assert (sink.attempts, sink.messages) == (1, [])


def test_5xx_at_rcpt_is_permanent_and_no_data_is_sent(sinks: Sinks, dev_certs: Path) -> None:
    sink = sinks()
    sink.behave("550 5.1.1 Mottagaren finns inte", at="rcpt")
    with pytest.raises(SmtpPermanentError) as caught:
        transport(sink, dev_certs).send(SENDER, [RECIPIENT], MESSAGE)
    assert (caught.value.step, caught.value.code) == ("rcpt", 550)
    assert caught.value.server_text == "5.1.1 Mottagaren finns inte"
    assert sink.attempts == 0
    sink.behave(None)
    transport(sink, dev_certs).send(SENDER, [RECIPIENT], MESSAGE)
    assert len(sink.messages) == 1


def test_one_refused_recipient_refuses_the_message(sinks: Sinks, dev_certs: Path) -> None:
    sink = sinks()
    sink.behave("450 4.2.0 Brevlådan är upptagen", at="rcpt", times=1)  # the first of two
    with pytest.raises(SmtpTemporaryError) as caught:
        transport(sink, dev_certs).send(SENDER, [RECIPIENT, "annan@example.se"], MESSAGE)
    assert (caught.value.step, caught.value.code) == ("rcpt", 450)
    assert (sink.attempts, sink.messages) == (0, [])


def test_a_message_larger_than_the_advertised_size_is_permanent_and_never_sent(
    sinks: Sinks, dev_certs: Path
) -> None:
    sink = sinks(max_size=len(MESSAGE) - 1)
    with pytest.raises(SmtpPermanentError) as caught:
        transport(sink, dev_certs).send(SENDER, [RECIPIENT], MESSAGE)
    assert (caught.value.step, caught.value.code) == ("mail", None)
    assert str(len(MESSAGE)) in caught.value.server_text
    assert sink.attempts == 0
    # aiosmtpd counts the dot-stuffed bytes on the wire, a little more than the message itself.
    sink_that_fits = sinks(max_size=len(MESSAGE) + 100)
    transport(sink_that_fits, dev_certs).send(SENDER, [RECIPIENT], MESSAGE)
    assert sink_that_fits.messages[0].data == MESSAGE


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


def test_connection_refused_is_temporary() -> None:
    smtp = SmtpTransport(SmtpConfig("127.0.0.1", free_port(), "none", timeout=2.0, local_hostname="kv.test"))
    with pytest.raises(SmtpTemporaryError) as caught:
        smtp.send(SENDER, [RECIPIENT], MESSAGE)
    assert (caught.value.step, caught.value.code) == ("connect", None)
    assert caught.value.server_text == "anslutningen nekades"
    assert isinstance(caught.value.__cause__, ConnectionRefusedError)


def test_a_server_that_never_greets_times_out_as_temporary() -> None:
    # A listening socket nobody accepts from: the kernel completes the TCP handshake, no greeting follows.
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        port = silent.getsockname()[1]
        smtp = SmtpTransport(SmtpConfig("127.0.0.1", port, "none", timeout=0.3, local_hostname="kv.test"))
        with pytest.raises(SmtpTemporaryError) as caught:
            smtp.send(SENDER, [RECIPIENT], MESSAGE)
    assert caught.value.server_text == "tidsgränsen överskreds"


def test_bare_line_feeds_go_out_as_crlf(sinks: Sinks, dev_certs: Path) -> None:
    sink = sinks()
    transport(sink, dev_certs).send(SENDER, [RECIPIENT], b"Subject: lf\n\nrad ett\nrad tv\xc3\xa5")
    assert sink.messages[0].data == b"Subject: lf\r\n\r\nrad ett\r\nrad tv\xc3\xa5\r\n"


def test_a_non_ascii_address_goes_with_smtputf8(sinks: Sinks, dev_certs: Path) -> None:
    sink = sinks()
    transport(sink, dev_certs).send(SENDER, ["åsa.öberg@exempel.se"], MESSAGE)
    assert sink.messages[0].rcpt_tos == ("åsa.öberg@exempel.se",)


def test_a_recipient_with_a_line_break_is_refused_before_connecting() -> None:
    smtp = SmtpTransport(SmtpConfig("127.0.0.1", free_port(), "none"))
    with pytest.raises(SmtpPermanentError) as caught:
        smtp.send(SENDER, ["a@example.se\r\nRCPT TO:<b@example.se>"], MESSAGE)
    assert caught.value.step == "rcpt"


def test_check_passes_against_a_working_relay(sinks: Sinks, dev_certs: Path) -> None:
    sink = sinks(credentials={USER: PASSWORD})
    transport(sink, dev_certs, username=USER, password=PASSWORD).check()
    assert (sink.attempts, sink.messages) == (0, [])


def test_no_address_reaches_an_info_log(
    sinks: Sinks, dev_certs: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    sink = sinks(credentials={USER: PASSWORD})
    smtp = transport(sink, dev_certs, username=USER, password=PASSWORD)
    smtp.send(SENDER, [RECIPIENT], MESSAGE)
    sink.behave("550 5.1.1 <mottagare@example.se>: okänd", at="rcpt")
    with pytest.raises(SmtpPermanentError):
        smtp.send(SENDER, [RECIPIENT], MESSAGE)
    loud = [r.getMessage() for r in caplog.records if r.levelno >= logging.INFO]
    assert any("queue id" in line for line in loud)  # the log is there, only without addresses
    assert not [line for line in loud if "example.se" in line]
    assert any("mottagare@example.se" in r.getMessage() for r in caplog.records)  # DEBUG keeps them


@pytest.mark.parametrize(
    ("reply", "queue_id"),
    [
        ("2.0.0 Ok: queued as 4XyZ12AbC", "4XyZ12AbC"),
        ("Ok: queued as 1A2B3C4D5E", "1A2B3C4D5E"),
        ("queued as <20260101.abc@relay.example.se>", "20260101.abc@relay.example.se"),
        ("OK id=1rAbCd-000Ef5-GH", "1rAbCd-000Ef5-GH"),
        ("2.0.0 4BG9x1Yq012345 Message accepted for delivery", "4BG9x1Yq012345"),
        ("<4BG9x1Yq012345> Message accepted", "4BG9x1Yq012345"),
        ("2.0.0 OK", None),
        ("Ok", None),
        ("", None),
    ],
)
def test_queue_id_from_common_relays(reply: str, queue_id: str | None) -> None:
    assert queue_id_from(reply) == queue_id


@pytest.mark.parametrize(
    "options",
    [
        {"security": "none", "username": "u", "password": "p"},  # a password never crosses in clear
        {"security": "starttls", "username": "u"},
        {"security": "starttls", "password": "p"},
        {"security": "starttls", "port": 0},
        {"security": "starttls", "timeout": 0},
        {"security": "starttls", "data_timeout": 60, "session_timeout": 60},  # no time left for the rest
        {"security": "ssl"},
    ],
)
def test_unsafe_or_incomplete_configuration_is_refused(options: dict[str, Any]) -> None:
    with pytest.raises(ConfigurationError):
        SmtpConfig(**{"host": "smtp.example.se", "port": 587, **options})


def test_an_unreadable_ca_bundle_is_refused_at_construction(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError):
        SmtpTransport(SmtpConfig("smtp.example.se", 587, "starttls", ca_bundle=tmp_path / "saknas.pem"))


def test_errors_belong_to_one_tree() -> None:
    assert issubclass(SmtpTemporaryError, SmtpError)
    assert issubclass(SmtpPermanentError, SmtpError)
    assert SmtpTemporaryError("data", 451, "x").retryable
    assert not SmtpPermanentError("data", 554, "x").retryable


def test_behave_refuses_what_is_not_a_refusal() -> None:
    sink = SmtpSink(require_starttls=False)
    for reply in ("250 Ok", "hej", "45 kort", "451 två\r\n250 rader"):
        with pytest.raises(ValueError, match="not a 4xx or 5xx"):
            sink.behave(reply)


def test_stop_leaves_no_thread_and_no_listening_socket_even_with_a_client_connected(sinks: Sinks) -> None:
    sink = sinks()
    port = sink.port
    idle = socket.create_connection(("127.0.0.1", port), timeout=5)
    try:
        assert idle.recv(1024).startswith(b"220 ")
        sink.stop()
        assert idle.recv(1024) == b""  # the server closed the idle session
    finally:
        idle.close()
    assert not [t for t in threading.enumerate() if t.name == "smtp-sink"]
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
    sink.stop()  # idempotent


def test_no_final_reply_after_the_whole_message_is_uncertain_not_retryable(dev_certs: Path) -> None:
    """The relay stored the message but answered too late: a resend could deliver it twice."""
    from kanalvaxel.adapters.smtp import SmtpUncertainError

    with SmtpSink(certificate=dev_certs / "server.pem", key=dev_certs / "server.key") as sink:
        sink.answer_late(1.0)
        transport = SmtpTransport(
            SmtpConfig(
                "127.0.0.1",
                sink.port,
                "starttls",
                ca_bundle=dev_certs / "ca.pem",
                timeout=5,
                data_timeout=0.3,
            )
        )
        with pytest.raises(SmtpUncertainError) as caught:
            transport.send("a@example.se", ["b@example.se"], b"Subject: x\r\n\r\nhej\r\n")
        assert caught.value.step == "end"
        assert not caught.value.retryable
        assert len(sink.messages) == 1  # it did arrive
        # A failure before the end of the message stays an ordinary temporary one.
        sink.behave("451 4.3.0 senare", times=1)
        with pytest.raises(SmtpTemporaryError) as before:
            transport.send("a@example.se", ["b@example.se"], b"Subject: x\r\n\r\nhej\r\n")
        assert not isinstance(before.value, SmtpUncertainError)


class _ScriptedRelay:
    """A plain-text SMTP server on loopback that answers each command after a set delay (per command verb) and
    remembers every line it received. Answers: 220 greeting, 250 to EHLO/MAIL/RCPT, 354 to DATA, 250 after
    the final dot, 221 to QUIT."""

    def __init__(self, delays: dict[str, float]) -> None:
        self.delays = delays
        self.lines: list[bytes] = []
        self._closing = threading.Event()
        self._listener = socket.socket()
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen()
        self.port: int = self._listener.getsockname()[1]
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        try:
            conn, _ = self._listener.accept()
        except OSError:
            return
        with conn, conn.makefile("rb") as incoming:
            conn.sendall(b"220 relay.test ESMTP\r\n")
            in_data = False
            for line in incoming:
                self.lines.append(line)
                if in_data:
                    if line == b".\r\n":
                        in_data = False
                        conn.sendall(b"250 2.0.0 Ok: queued as SCRIPTED1\r\n")
                    continue
                verb = line.split(b" ", 1)[0].strip().upper().decode()
                if self._closing.wait(self.delays.get(verb, 0.0)):
                    return
                reply = {
                    "EHLO": b"250-relay.test\r\n250 8BITMIME\r\n",
                    "DATA": b"354 go ahead\r\n",
                    "QUIT": b"221 bye\r\n",
                }
                try:
                    conn.sendall(reply.get(verb, b"250 ok\r\n"))
                except OSError:
                    return
                in_data = verb == "DATA"
                if verb == "QUIT":
                    return

    def close(self) -> None:
        self._closing.set()
        self._listener.close()
        self._thread.join(timeout=10)


def _bounded(port: int, *, session_timeout: float, data_timeout: float = 0.5) -> SmtpTransport:
    return SmtpTransport(
        SmtpConfig(
            "127.0.0.1",
            port,
            "none",
            timeout=30.0,
            data_timeout=data_timeout,
            session_timeout=session_timeout,
            local_hostname="kv.test",
        )
    )


def test_a_step_waits_only_as_long_as_the_session_has_left_and_nothing_is_sent() -> None:
    """RCPT would be answered after 20 s (the step time-out is 30 s); the session has 1.5 s, 0.5 of them kept
    for the final reply, so the send gives up after about a second, before DATA, as a temporary error."""
    relay = _ScriptedRelay({"RCPT": 20.0})
    try:
        started = time.monotonic()
        with pytest.raises(SmtpTemporaryError) as caught:
            _bounded(relay.port, session_timeout=1.5).send(SENDER, [RECIPIENT], MESSAGE)
        elapsed = time.monotonic() - started
    finally:
        relay.close()
    assert caught.value.step == "rcpt"
    assert caught.value.retryable
    assert elapsed < 5  # the point: not the 20 s the relay would take, nor the 30 s step time-out
    assert not any(line.upper().startswith(b"DATA") for line in relay.lines)


def test_a_session_out_of_time_at_data_never_finishes_the_message() -> None:
    """DATA's 354 would come after 0.8 s; a 1.2 s session keeping 0.5 s for the final reply waits 0.7 s at
    most. The message is never ended with its dot (the relay discards it), so the error is an ordinary
    temporary one — not 'in doubt' — and the letter can simply be retried."""
    relay = _ScriptedRelay({"DATA": 0.8})
    try:
        started = time.monotonic()
        with pytest.raises(SmtpTemporaryError) as caught:
            _bounded(relay.port, session_timeout=1.2).send(SENDER, [RECIPIENT], MESSAGE)
        elapsed = time.monotonic() - started
    finally:
        relay.close()
    from kanalvaxel.adapters.smtp import SmtpUncertainError

    assert not isinstance(caught.value, SmtpUncertainError)
    assert caught.value.step == "data"
    assert elapsed < 5  # bounded by the session, not by the 30 s step time-out
    assert b".\r\n" not in relay.lines


def test_a_session_with_time_enough_sends_as_usual() -> None:
    relay = _ScriptedRelay({"EHLO": 0.1, "RCPT": 0.1})
    try:
        receipt = _bounded(relay.port, session_timeout=5.0).send(SENDER, [RECIPIENT], MESSAGE)
    finally:
        relay.close()
    assert receipt.queue_id == "SCRIPTED1"
    assert b".\r\n" in relay.lines
    # The message is 8-bit UTF-8: MAIL FROM declares it (aiosmtpd's sink would take it undeclared too).
    [mail_from] = [line for line in relay.lines if line.upper().startswith(b"MAIL FROM:")]
    assert b" BODY=8BITMIME" in mail_from


def test_after_the_final_dot_running_out_of_time_is_never_a_retryable_error() -> None:
    """A pause (GC, a frozen VM) between the check before the dot and the wait for the reply must not turn a
    message the relay may have queued into a retry: the reply gets a short wait; no reply means in doubt."""
    from kanalvaxel.adapters.smtp import _Session

    class Sock:
        timeout: float | None = None

        def settimeout(self, value: float) -> None:
            self.timeout = value

    class Client:
        timeout = 30.0
        sock = Sock()

    config = SmtpConfig("127.0.0.1", 25, "none", timeout=30.0, data_timeout=5.0, session_timeout=10.0)
    session = _Session(Client(), config, deadline=time.monotonic() - 1)  # type: ignore[arg-type]
    session.in_message = True
    with pytest.raises(SmtpTemporaryError):  # before the dot: nothing was finished, hang up without QUIT
        session.enter("data")
    assert session.broken
    session.enter("end")
    assert Client.sock.timeout == pytest.approx(0.5)
