"""E-mail and SMS end to end inside one process: kanalväxel's worker, a real SMTP server (the sandbox's
aiosmtpd sink, STARTTLS with the development certificate) and the SMS gateway simulator over HTTPS, on SQLite
and PostgreSQL. What the SMTP server stored is opened with `openssl cms` and the recipient's key."""

from __future__ import annotations

import email
import email.policy
import logging
import subprocess
import time
from collections.abc import Iterator
from dataclasses import replace
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from kanalvaxel.bootstrap import Container, build
from kanalvaxel.domain.model import Attachment, Channel, Confidentiality, Letter, Notice, RecipientInfo
from kanalvaxel.domain.rules import NoticeRule, Policy, Rule, RuleMatch, decide
from kanalvaxel.entrypoints.worker import Worker
from kanalvaxel.ports import ClientRecord, DeliveryJob, OutcomeKind
from kanalvaxel.sandbox.messaging_world import MessagingWorld
from tests.integration.conftest import make_letter, make_pdf, settings_for

ADDRESS = "mottagare@example.se"
MOBILE = "070-123 45 67"


def messaging_settings(db_url: str, tmp_path: Path, dev_certs: Path, **overrides: Any) -> Any:
    return settings_for(
        db_url,
        tmp_path,
        dev_certs,
        email={"enabled": True, **overrides.pop("email", {})},
        sms={"enabled": True, "retries": 0, **overrides.pop("sms", {})},
        worker={
            "poll_interval_seconds": 0.05,
            "backoff_base_seconds": 0.2,
            "backoff_max_seconds": 1,
            "threads": 2,
        },
        print={"batch_max_age_seconds": 0},
        **overrides,
    )


class Running:
    def __init__(self, container: Container) -> None:
        self.c = container
        assert container.messaging is not None
        assert container.messaging.world is not None
        self.world: MessagingWorld = container.messaging.world
        self.worker: Worker | None = None

    def start(self, policy: Policy | None = None) -> Running:
        """Start the worker, with `policy` instead of the built-in one (a Policy made in code may break the
        loader's rules on purpose)."""
        if policy is not None:
            self.c.policy = policy
        self.worker = Worker(self.c)
        self.worker.start()
        return self

    def stop(self) -> None:
        if self.worker is not None:
            self.worker.stop(grace=5)

    @property
    def sink(self) -> Any:
        assert self.world.sink is not None
        return self.world.sink

    @property
    def sms(self) -> Any:
        assert self.world.sms is not None
        return self.world.sms

    def submit(self, client: ClientRecord, letter: Letter, key: str) -> str:
        return self.c.intake.submit(client, key, key, letter).shipment.id

    def wait(self, sid: str, check: Any, timeout: float = 30) -> Any:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.c.uow() as uow:
                shp = uow.shipment(sid)
            assert shp is not None
            if check(shp):
                return shp
            time.sleep(0.05)
        raise AssertionError(f"shipment {sid} never got there: {self.events(sid)}")

    def wait_state(self, sid: str, *states: str) -> Any:
        return self.wait(sid, lambda s: s.state in states)

    def events(self, sid: str) -> list[tuple[str, str, dict[str, object]]]:
        with self.c.uow() as uow:
            return [(e.type, e.message, dict(e.details)) for e in uow.events(sid)]


@pytest.fixture
def running(db_url: str, tmp_path: Path, dev_certs: Path) -> Iterator[Running]:
    c = build(messaging_settings(db_url, tmp_path, dev_certs))
    c.migrate()
    r = Running(c)
    try:
        yield r
    finally:
        r.stop()
        c.close()


@pytest.fixture
def client(running: Running) -> ClientRecord:
    return running.c.clients.add("ärendesystem", ["sandbox"]).client


def letter(
    *,
    confidentiality: Confidentiality = Confidentiality.PUBLIC,
    certificate: str | None = None,
    mobile: str | None = None,
    email_address: str | None = ADDRESS,
    subject: str = "Beslut om bygglov",
) -> Letter:
    base = make_letter(confidentiality=confidentiality, email=email_address, subject=subject)
    info: RecipientInfo = replace(base.recipient_info, smime_certificate_pem=certificate, mobile=mobile)
    return replace(
        base,
        body="Hej!\n\nHär kommer beslutet om ditt bygglov. Hemlig-markör-7731.",
        attachments=(Attachment("Beslut om bygglov – åäö.pdf", make_pdf("PDF-markör-4412")),),
        recipient_info=info,
    )


def openssl(*args: str, data: bytes) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(["openssl", *args], input=data, capture_output=True, check=False)


def decrypt_and_verify(raw: bytes, certs: Path, key: str = "smime-recipient") -> email.message.EmailMessage:
    dec = openssl(
        "cms", "-decrypt", "-recip", str(certs / f"{key}.pem"), "-inkey", str(certs / f"{key}.key"), data=raw
    )
    assert dec.returncode == 0, dec.stderr.decode()
    ver = openssl("cms", "-verify", "-CAfile", str(certs / "ca.pem"), data=dec.stdout)
    assert ver.returncode == 0, ver.stderr.decode()
    assert b"Verification successful" in ver.stderr
    msg = email.message_from_bytes(ver.stdout, policy=email.policy.default)
    assert isinstance(msg, email.message.EmailMessage)
    return msg


def body_and_pdfs(msg: email.message.EmailMessage) -> tuple[str, dict[str, bytes]]:
    body = msg.get_body(preferencelist=("plain",))
    assert body is not None
    pdfs = {
        str(part.get_filename()): part.get_content()
        for part in msg.iter_attachments()
        if part.get_content_type() == "application/pdf"
    }
    # MIME text travels with CRLF line ends (RFC 5322); the letter's text is compared with LF.
    return str(body.get_content()).replace("\r\n", "\n"), pdfs


# --------------------------------------------------------------------------------------- encrypted e-mail


def test_a_confidential_letter_arrives_encrypted_and_only_the_recipients_key_opens_it(
    running: Running, client: ClientRecord, dev_certs: Path
) -> None:
    running.start()
    pem = (dev_certs / "smime-recipient.pem").read_text()
    sent = letter(confidentiality=Confidentiality.CONFIDENTIAL, certificate=pem, mobile=MOBILE)
    sid = running.submit(client, sent, "conf-1")
    shp = running.wait_state(sid, "DELIVERED", "FAILED", "HANDED_OVER")
    assert (shp.state, shp.channel) == ("DELIVERED", "email_encrypted")
    [mail] = running.sink.messages
    assert mail.rcpt_tos == (ADDRESS,)
    assert mail.tls
    raw = mail.data
    # Without the key nothing of the content is readable in what the server stored.
    for secret in (b"Hemlig-m", b"bygglov", "Hemlig-markör".encode(), b"PDF-mark", b"Beslut", b"%PDF"):
        assert secret not in raw
    outer = email.message_from_bytes(raw, policy=email.policy.default)
    assert outer.get_content_type() == "application/pkcs7-mime"
    assert "bygglov" not in str(outer["Subject"])
    printed = openssl("cms", "-cmsout", "-print", "-inform", "SMIME", data=raw).stdout
    assert b"aes-256-cbc" in printed
    inner = decrypt_and_verify(raw, dev_certs)
    text, pdfs = body_and_pdfs(inner)
    assert sent.body in text
    assert pdfs == {a.filename: a.content for a in sent.attachments}
    assert inner["Subject"] == sent.subject
    # Another key cannot open it.
    other = openssl(
        "cms", "-decrypt", "-recip", str(dev_certs / "smime-sender.pem"),
        "-inkey", str(dev_certs / "smime-sender.key"), data=raw,
    )  # fmt: skip
    assert other.returncode != 0
    # The record names the channel, a masked address and the SMTP queue id; never the full address.
    delivered = [d for t, _m, d in running.events(sid) if t == "DELIVERED"]
    assert delivered
    assert delivered[0]["email"] == "mo*******@example.se"
    assert delivered[0]["smtp_queue_id"] == mail.queue_id
    assert all(ADDRESS not in m and ADDRESS not in str(d) for _t, m, d in running.events(sid))
    # A confidential letter never gets an SMS, mobile number or not.
    assert running.sms.requests == 0


@pytest.mark.parametrize(
    ("certificate", "code"),
    [
        (None, "NO_CERTIFICATE"),
        ("smime-expired", "CERTIFICATE_EXPIRED"),
        ("smime-signonly", "CERTIFICATE_NOT_FOR_ENCRYPTION"),
    ],
)
def test_a_confidential_letter_without_a_usable_certificate_goes_to_print_never_email_or_sms(
    running: Running, client: ClientRecord, dev_certs: Path, certificate: str | None, code: str
) -> None:
    running.start()
    pem = (dev_certs / f"{certificate}.pem").read_text() if certificate else None
    sid = running.submit(
        client, letter(confidentiality=Confidentiality.CONFIDENTIAL, certificate=pem, mobile=MOBILE), "c"
    )
    shp = running.wait_state(sid, "HANDED_OVER", "DELIVERED", "FAILED")
    assert shp.channel == "print"
    options = {o["channel"]: o for o in shp.decision["options"]}
    assert code in options["email_encrypted"]["codes"]
    assert "email" not in options  # the built-in policy never lists plain e-mail for confidential letters
    running.wait_state(sid, "DELIVERED")  # the print batch closes (max age 0)
    time.sleep(0.3)  # a notice, if one were (wrongly) queued, would go now
    assert running.sink.attempts == 0
    assert running.sink.messages == []
    assert running.sms.requests == 0


def test_a_policy_listing_plain_email_first_still_never_sends_confidential_content_by_email_or_sms(
    running: Running, client: ClientRecord
) -> None:
    # The loader refuses such a policy; one built in code must be refused again by the decision.
    running.start(
        Policy(
            rules=(
                Rule(
                    "felaktig",
                    RuleMatch(),
                    (Channel.EMAIL, Channel.EMAIL_ENCRYPTED, Channel.PRINT),
                    (NoticeRule(Notice.SMS, frozenset({Channel.PRINT, Channel.EMAIL})),),
                ),
            )
        )
    )
    sid = running.submit(client, letter(confidentiality=Confidentiality.CONFIDENTIAL, mobile=MOBILE), "f")
    shp = running.wait_state(sid, "DELIVERED", "FAILED")
    assert shp.channel == "print"
    options = {o["channel"]: o for o in shp.decision["options"]}
    assert options["email"]["codes"] == ["CONFIDENTIAL_CONTENT"]
    assert options["email_encrypted"]["codes"] == ["NO_CERTIFICATE"]
    assert shp.decision["notices"][0]["eligible"] is False
    time.sleep(0.3)
    assert running.sink.attempts == 0
    assert running.sms.requests == 0
    assert "notices" not in (shp.result or {})


# ------------------------------------------------------------------------------------------ plain e-mail


def test_a_public_letter_goes_by_plain_email_with_correct_mime(
    running: Running, client: ClientRecord
) -> None:
    running.start()
    sent = letter()
    sid = running.submit(client, sent, "pub-1")
    shp = running.wait_state(sid, "DELIVERED", "FAILED", "HANDED_OVER")
    assert (shp.state, shp.channel) == ("DELIVERED", "email")
    [mail] = running.sink.messages
    assert mail.mail_from == "noreply@sandlada.example.se"
    assert mail.rcpt_tos == (ADDRESS,)
    msg = email.message_from_bytes(mail.data, policy=email.policy.default)
    assert msg["To"] == ADDRESS
    assert msg["From"].addresses[0].display_name == "Sandlådans kommun (utveckling)"
    assert msg["From"].addresses[0].addr_spec == "noreply@sandlada.example.se"
    assert msg["Subject"] == "Beslut om bygglov"
    assert msg["Message-ID"] == f"<{sid}.email@sandlada.example.se>"
    assert msg["Date"].datetime is not None
    text, pdfs = body_and_pdfs(msg)
    assert sent.body in text
    assert "Ring kontaktcenter" in text
    assert pdfs == {a.filename: a.content for a in sent.attachments}
    assert shp.result["smtp_queue_id"] == mail.queue_id


def test_email_notice_only_sends_no_content(running: Running, client: ClientRecord, tmp_path: Path) -> None:
    running.start(
        Policy(
            rules=(Rule("avisering", RuleMatch(), (Channel.EMAIL, Channel.PRINT), email_notice_only=True),)
        )
    )
    sid = running.submit(client, letter(), "n-1")
    assert running.wait_state(sid, "DELIVERED", "FAILED").channel == "email"
    [mail] = running.sink.messages
    msg = email.message_from_bytes(mail.data, policy=email.policy.default)
    assert list(msg.iter_attachments()) == []
    body = msg.get_body(preferencelist=("plain",))
    assert body is not None
    assert "Sandlådans kommun" in str(body.get_content())
    assert "Hemlig-markör" not in str(body.get_content())


# --------------------------------------------------------------------------------------------------- SMTP


def test_an_smtp_server_answering_4xx_for_a_while_gets_the_letter_once_after_it_recovers(
    running: Running, client: ClientRecord
) -> None:
    running.start()
    running.sink.behave("451 4.3.0 Tillfälligt fel, försök igen", times=2)
    sid = running.submit(client, letter(), "r-1")
    shp = running.wait_state(sid, "DELIVERED", "FAILED", "HANDED_OVER")
    assert (shp.state, shp.channel) == ("DELIVERED", "email")
    assert len(running.sink.messages) == 1
    assert running.sink.attempts == 3
    with running.c.uow() as uow:
        outcomes = [(a.channel, a.outcome) for a in uow.attempts(sid)]
    assert outcomes == [("email", "RETRY"), ("email", "RETRY"), ("email", "DELIVERED")]
    assert any("451" in m for t, m, _d in running.events(sid) if t == "ATTEMPT")


def test_an_smtp_server_answering_5xx_makes_the_letter_fall_back_with_the_reason(
    running: Running, client: ClientRecord
) -> None:
    running.start()
    running.sink.behave("554 5.7.1 Meddelandet avvisat av policy")
    sid = running.submit(client, letter(), "f-1")
    shp = running.wait_state(sid, "HANDED_OVER", "DELIVERED", "FAILED")
    assert shp.channel == "print"
    failed = [m for t, m, _d in running.events(sid) if t == "CHANNEL_FAILED"]
    assert failed
    assert "554" in failed[0]
    assert "avvisat av policy" in failed[0]
    assert running.sink.messages == []


def test_a_resend_after_a_crash_is_answered_from_the_journal_not_sent_again(
    running: Running, client: ClientRecord
) -> None:
    running.start()
    sid = running.submit(client, letter(), "j-1")
    running.wait_state(sid, "DELIVERED")
    c = running.c
    sent = letter()
    decision = decide(
        sent, c.facts.gather(sent, c.senders["sandbox"], c.clock.now()), c.policy, c.clock.now()
    )
    job = DeliveryJob(sid, 9, Channel.EMAIL, sent, c.senders["sandbox"], decision)
    again = c.channels[Channel.EMAIL].send(job)
    assert again.kind is OutcomeKind.DELIVERED
    assert again.external_ref == running.sink.messages[0].queue_id
    assert len(running.sink.messages) == 1
    assert running.sink.attempts == 1


# ---------------------------------------------------------------------------------------------------- SMS


def _print_with_sms(running: Running) -> None:
    running.start(
        Policy(
            rules=(
                Rule(
                    "papper med sms",
                    RuleMatch(confidentiality=frozenset({Confidentiality.PUBLIC, Confidentiality.INTERNAL})),
                    (Channel.PRINT,),
                    (NoticeRule(Notice.SMS, frozenset({Channel.PRINT})),),
                ),
                Rule("övrigt", RuleMatch(), (Channel.PRINT,)),
            )
        )
    )


def test_an_sms_notice_accompanies_a_print_letter_when_the_policy_says_so(
    running: Running, client: ClientRecord
) -> None:
    _print_with_sms(running)
    sid = running.submit(client, letter(mobile=MOBILE, email_address=None), "s-1")
    shp = running.wait(
        sid, lambda s: (s.result or {}).get("notices", {}).get("sms", {}).get("state") == "SENT"
    )
    assert (shp.state, shp.channel) == ("DELIVERED", "print")
    [sms] = running.sms.messages
    assert sms.to == "+46701234567"
    assert "Sandlådans kommun" in sms.text
    assert "posten" in sms.text
    assert sms.reference == sid
    notice = shp.result["notices"]["sms"]
    assert notice["sms_message_id"] == sms.id
    assert notice["mobile"] == "+4670*****67"
    notices = [(m, d) for t, m, d in running.events(sid) if t == "NOTICE"]
    assert len(notices) == 1
    assert "+4670*****67" in notices[0][0]
    assert all("701234567" not in m and "701234567" not in str(d) for _t, m, d in running.events(sid))
    # The notice went after the print file was handed to the printer, not before.
    kinds = [t for t, _m, _d in running.events(sid)]
    assert kinds.index("NOTICE") > kinds.index("DELIVERED")


def test_an_sms_gateway_failing_for_now_sends_the_notice_once_later_and_never_fails_the_letter(
    running: Running, client: ClientRecord
) -> None:
    _print_with_sms(running)
    running.sms.behave(status=503, times=2)
    sid = running.submit(client, letter(mobile=MOBILE, email_address=None), "s-2")
    shp = running.wait(
        sid, lambda s: (s.result or {}).get("notices", {}).get("sms", {}).get("state") == "SENT"
    )
    assert shp.state == "DELIVERED"
    assert len(running.sms.messages) == 1
    assert running.sms.requests == 3
    assert shp.result["notices"]["sms"]["attempts"] == 3


def test_an_sms_gateway_refusing_records_the_notice_as_not_sent_and_the_letter_stays_delivered(
    running: Running, client: ClientRecord
) -> None:
    _print_with_sms(running)
    running.sms.behave(status=422)
    sid = running.submit(client, letter(mobile=MOBILE, email_address=None), "s-3")
    shp = running.wait(
        sid, lambda s: (s.result or {}).get("notices", {}).get("sms", {}).get("state") == "FAILED"
    )
    assert shp.state == "DELIVERED"
    assert running.sms.messages == []
    assert any("skickades inte" in m for t, m, _d in running.events(sid) if t == "NOTICE")


def test_no_sms_without_a_mobile_number_and_the_decision_says_why(
    running: Running, client: ClientRecord
) -> None:
    _print_with_sms(running)
    sid = running.submit(client, letter(email_address=None), "s-4")
    shp = running.wait_state(sid, "DELIVERED")
    assert shp.decision["notices"][0]["codes"] == ["NO_MOBILE_NUMBER"]
    time.sleep(0.3)
    assert running.sms.requests == 0


def test_backoff_is_used_between_smtp_retries(running: Running, client: ClientRecord) -> None:
    running.start()
    running.sink.behave("421 4.7.0 Try again later", times=1)
    sid = running.submit(client, letter(), "b-1")
    running.wait_state(sid, "DELIVERED")
    with running.c.uow() as uow:
        first, second = uow.attempts(sid)
    assert first.finished_at is not None
    assert second.started_at - first.finished_at >= timedelta(seconds=0.15)


# -------------------------------------------------------------------------------------------- wiring


def _sqlite(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'wiring.db'}"


def test_a_sender_without_an_smime_identity_has_no_encrypted_email_and_the_decision_says_so(
    tmp_path: Path, dev_certs: Path
) -> None:
    sender = {
        "key": "sandbox",
        "organisation_number": "2120000001",
        "name": "Kommunen",
        "email_address": "noreply@sandlada.example.se",
    }
    c = build(messaging_settings(_sqlite(tmp_path), tmp_path, dev_certs, senders=[sender]))
    try:
        c.migrate()
        pem = (dev_certs / "smime-recipient.pem").read_text()
        sent = letter(confidentiality=Confidentiality.CONFIDENTIAL, certificate=pem)
        facts = c.facts.gather(sent, c.senders["sandbox"], c.clock.now())
        decision = decide(sent, facts, c.policy, c.clock.now())
        options = {o.channel: o for o in decision.options}
        assert options[Channel.EMAIL_ENCRYPTED].codes == ("CHANNEL_NOT_CONFIGURED",)
        assert decision.channels == (Channel.PRINT,)
    finally:
        c.close()


def test_an_smime_certificate_for_another_address_than_the_from_address_is_refused_at_start(
    tmp_path: Path, dev_certs: Path
) -> None:
    from kanalvaxel.domain.errors import ConfigurationError

    sender = {
        "key": "sandbox",
        "organisation_number": "2120000001",
        "name": "Kommunen",
        "email_address": "registrator@kommun.example.se",
        "smime_certificate": str(dev_certs / "smime-sender.pem"),
        "smime_key": str(dev_certs / "smime-sender.key"),
    }
    with pytest.raises(ConfigurationError, match=r"registrator@kommun\.example\.se"):
        build(messaging_settings(_sqlite(tmp_path), tmp_path, dev_certs, senders=[sender]))


def test_a_certificate_directory_supplies_the_certificate_the_case_system_did_not_send(
    tmp_path: Path, dev_certs: Path
) -> None:
    directory = tmp_path / "certifikat"
    directory.mkdir()
    (directory / "mottagare.pem").write_bytes((dev_certs / "smime-recipient.pem").read_bytes())
    c = build(
        messaging_settings(
            _sqlite(tmp_path), tmp_path, dev_certs, email={"certificate_directory": str(directory)}
        )
    )
    try:
        c.migrate()
        r = Running(c).start()
        client = c.clients.add("ärendesystem", ["sandbox"]).client
        sid = r.submit(client, letter(confidentiality=Confidentiality.CONFIDENTIAL), "dir-1")
        shp = r.wait_state(sid, "DELIVERED", "FAILED", "HANDED_OVER")
        assert shp.channel == "email_encrypted"
        [mail] = r.sink.messages
        text, _pdfs = body_and_pdfs(decrypt_and_verify(mail.data, dev_certs))
        assert "Hemlig-markör-7731" in text
        r.stop()
    finally:
        c.close()


# ------------------------------------------------------------- what the channels refuse on their own


def _job(
    running: Running, sent: Letter, channel: Channel, sid: str = "00000000-0000-4000-8000-000000000001"
) -> Any:
    c = running.c
    decision = decide(
        sent, c.facts.gather(sent, c.senders["sandbox"], c.clock.now()), c.policy, c.clock.now()
    )
    return DeliveryJob(sid, 1, channel, sent, c.senders["sandbox"], decision)


def test_the_channels_refuse_on_their_own_what_no_decision_may_allow(
    running: Running, dev_certs: Path
) -> None:
    """Called directly, past the rule engine (a stale or buggy decision): nothing leaves."""
    from kanalvaxel.ports import NoticeJob

    running.start()
    c = running.c
    confidential = letter(confidentiality=Confidentiality.CONFIDENTIAL, mobile=MOBILE)
    out = c.channels[Channel.EMAIL].send(_job(running, confidential, Channel.EMAIL))
    assert out.kind is OutcomeKind.FAILED
    assert "sekretess" in out.detail
    protected = replace(
        letter(mobile=MOBILE),
        recipient_info=replace(letter(mobile=MOBILE).recipient_info, protected_identity=True),
    )
    for channel in (Channel.EMAIL, Channel.EMAIL_ENCRYPTED):
        out = c.channels[channel].send(_job(running, protected, channel))
        assert out.kind is OutcomeKind.FAILED
        assert "skyddad identitet" in out.detail
    # A certificate that is no longer valid when the letter is sent.
    expired = letter(
        confidentiality=Confidentiality.CONFIDENTIAL,
        certificate=(dev_certs / "smime-expired.pem").read_text(),
    )
    out = c.channels[Channel.EMAIL_ENCRYPTED].send(_job(running, expired, Channel.EMAIL_ENCRYPTED))
    assert out.kind is OutcomeKind.FAILED
    assert "gått ut" in out.detail
    notifier = c.notifiers[Notice.SMS]
    for refused in (confidential, protected):
        job = NoticeJob(
            "00000000-0000-4000-8000-000000000002", Notice.SMS, Channel.PRINT, refused, c.senders["sandbox"]
        )
        assert notifier.notify(job).kind is OutcomeKind.FAILED
    assert running.sink.attempts == 0
    assert running.sms.requests == 0


def test_a_relay_quoting_the_address_in_its_refusal_is_recorded_masked(
    running: Running, client: ClientRecord
) -> None:
    running.start()
    running.sink.behave(f"550 5.1.1 <{ADDRESS}>: Recipient address rejected", at="rcpt")
    sid = running.submit(client, letter(), "m-1")
    shp = running.wait_state(sid, "HANDED_OVER", "DELIVERED", "FAILED")
    assert shp.channel == "print"
    failed = [m for t, m, _d in running.events(sid) if t == "CHANNEL_FAILED"]
    assert "550" in failed[0]
    assert "mo*******@example.se" in failed[0]
    with running.c.uow() as uow:
        details = [a.detail or "" for a in uow.attempts(sid)]
    assert all(ADDRESS not in text for text in [*details, *(m for _t, m, _d in running.events(sid))])


def test_no_answer_after_the_whole_message_leaves_the_letter_in_doubt_never_resent_nor_printed(
    tmp_path: Path, dev_certs: Path, caplog: pytest.LogCaptureFixture
) -> None:
    c = build(messaging_settings(_sqlite(tmp_path), tmp_path, dev_certs, email={"data_timeout_seconds": 0.3}))
    try:
        c.migrate()
        r = Running(c).start()
        r.sink.answer_late(1.5)
        client = c.clients.add("ärendesystem", ["sandbox"]).client
        sid = r.submit(client, letter(), "doubt-1")
        shp = r.wait_state(sid, "HANDED_OVER", "DELIVERED", "FAILED")
        assert (shp.state, shp.channel) == ("HANDED_OVER", "email")
        time.sleep(2.0)  # past the late answer and several backoff periods: nothing more may happen
        with c.uow() as uow:
            shp = uow.shipment(sid)
            attempts = uow.attempts(sid)
        assert shp is not None
        assert shp.state == "HANDED_OVER"
        assert [a.outcome for a in attempts] == ["HANDED_OVER"]
        assert "Oklart" in (attempts[0].detail or "")
        assert len(r.sink.messages) == 1
        assert r.sink.attempts == 1
        # Operators are told at ERROR, with the Message-ID to look for and without the address.
        alerts = [rec for rec in caplog.records if rec.levelno >= logging.ERROR and "in doubt" in rec.message]
        assert len(alerts) == 1
        assert sid in alerts[0].message
        assert "Message-ID <" in alerts[0].message
        assert ADDRESS not in alerts[0].message
        r.stop()
    finally:
        c.close()


def test_an_smtp_send_is_bounded_below_the_workers_lease(tmp_path: Path, dev_certs: Path) -> None:
    """No other worker may take a letter over while it may still be on its way to the relay."""
    settings = messaging_settings(_sqlite(tmp_path), tmp_path, dev_certs)
    c = build(settings)
    try:
        assert c.messaging is not None
        assert c.messaging.transport is not None
        config = c.messaging.transport.config
        assert config.session_timeout == pytest.approx(0.8 * settings.worker.lease_seconds)
        assert config.session_timeout > config.data_timeout
    finally:
        c.close()


# ------------------------------------------------------------------------------------- letters in doubt


def _in_doubt(
    db_url: str, tmp_path: Path, dev_certs: Path, count: int
) -> tuple[Container, Running, list[str]]:
    """`count` letters sent whole to a relay that answers only after our 0.3 s data time-out: in doubt."""
    c = build(messaging_settings(db_url, tmp_path, dev_certs, email={"data_timeout_seconds": 0.3}))
    c.migrate()
    r = Running(c).start()
    r.sink.answer_late(1.0, times=count)
    client = c.clients.add("ärendesystem", ["sandbox"]).client
    ids = [r.submit(client, letter(), f"doubt-{i}") for i in range(count)]
    for sid in ids:
        shp = r.wait_state(sid, "HANDED_OVER", "DELIVERED", "FAILED")
        assert (shp.state, shp.channel) == ("HANDED_OVER", "email")
    return c, r, ids


def test_an_operator_settles_letters_in_doubt_delivered_or_on_to_the_next_channel(
    db_url: str, tmp_path: Path, dev_certs: Path
) -> None:
    from kanalvaxel.domain.errors import ConflictError, NotFoundError, ValidationError
    from kanalvaxel.services.queries import letters_in_doubt

    c, r, (found, lost) = _in_doubt(db_url, tmp_path, dev_certs, 2)
    try:
        listed = letters_in_doubt(c.uow)
        assert {x.shipment_id for x in listed} == {found, lost}  # two worker threads: either order
        assert {x.email for x in listed} == {"mo*******@example.se"}
        assert all(x.message_id and x.message_id.startswith(f"<{x.shipment_id}.") for x in listed)
        dispatcher = c.dispatcher("operator")
        with pytest.raises(ValidationError):
            dispatcher.resolve_in_doubt(found, delivered=True, operator="Kim", note="  ")
        with pytest.raises(NotFoundError):
            dispatcher.resolve_in_doubt("0" * 26, delivered=True, operator="Kim", note="x")

        shp = dispatcher.resolve_in_doubt(
            found,
            delivered=True,
            operator="Kim Handläggare",
            note=f"Finns i reläets logg: to=<{ADDRESS}>, status=sent",
        )
        assert shp.state == "DELIVERED"
        with c.uow() as uow:
            stored = uow.shipment(found)
        assert stored is not None
        assert stored.state == "DELIVERED"
        assert stored.result is not None
        assert (stored.result["in_doubt"], stored.result["resolved_by"]) == ("resolved", "Kim Handläggare")
        [delivered] = [(m, d) for t, m, d in r.events(found) if t == "DELIVERED"]
        assert "Bekräftat av Kim Handläggare" in delivered[0]
        assert delivered[1]["resolution"] == "delivered"
        # A pasted relay log line keeps the address masked in the record case systems read.
        assert delivered[1]["note"] == "Finns i reläets logg: to=<mo*******@example.se>, status=sent"
        assert all(ADDRESS not in m and ADDRESS not in str(d) for _t, m, d in r.events(found))
        with pytest.raises(ConflictError):  # settled once; a second answer changes nothing
            dispatcher.resolve_in_doubt(found, delivered=False, operator="Kim", note="ångrar mig")

        dispatcher.resolve_in_doubt(lost, delivered=False, operator="Kim", note="Saknas i reläets logg")
        shp = r.wait(lost, lambda s: s.channel == "print" and s.state in ("HANDED_OVER", "DELIVERED"))
        failed = [(m, d) for t, m, d in r.events(lost) if t == "CHANNEL_FAILED"]
        assert failed
        assert "inte mottaget enligt Kim" in failed[-1][0]
        assert failed[-1][1]["next_channel"] == "print"
        assert letters_in_doubt(c.uow) == []
        time.sleep(0.5)  # the worker had its chance to send again: it must not have
        assert len(r.sink.messages) == 2
        assert r.sink.attempts == 2
    finally:
        r.stop()
        c.close()


def test_the_in_doubt_commands_list_and_settle_with_one_line_errors(tmp_path: Path, dev_certs: Path) -> None:
    import json

    from tests.conftest import run_cli

    c, r, (sid,) = _in_doubt(f"sqlite:///{tmp_path / 'cli.db'}", tmp_path, dev_certs, 1)
    r.stop()
    c.close()

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return run_cli(tmp_path, dev_certs, *args)

    listed = cli("in-doubt", "list", "--json")
    assert listed.returncode == 0, listed.stderr
    [row] = [json.loads(line) for line in listed.stdout.splitlines()]
    assert (row["shipment_id"], row["email"], row["channel"]) == (sid, "mo*******@example.se", "email")
    assert ADDRESS not in listed.stdout + listed.stderr

    undecided = cli("in-doubt", "resolve", sid, "--note", "kollat")
    assert undecided.returncode != 0
    assert undecided.stderr.splitlines() == ["kanalvaxel: error: resolve: say --delivered or --not-delivered"]

    settled = cli("in-doubt", "resolve", sid, "--delivered", "--note", "I reläets logg", "--by", "Kim")
    assert settled.returncode == 0, settled.stderr
    assert f"letter {sid} is now DELIVERED" in settled.stdout

    again = cli("in-doubt", "resolve", sid, "--not-delivered", "--note", "x", "--by", "Kim")
    assert again.returncode != 0
    assert again.stderr.splitlines() == [f"kanalvaxel: error: letter {sid} is not in doubt (state DELIVERED)"]
    assert cli("in-doubt", "list").stdout.strip() == "no letters in doubt"
