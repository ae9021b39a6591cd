"""The e-mail channels: building plain and S/MIME messages, sending them over SMTP, and one end-to-end run.

The letter carries one 100 KiB PDF: a real PDF made with reportlab (uncompressed pages of random text, so it
passes intake's PDF check in the end-to-end run), padded to at least 100 KiB. MIME, CMS and AES do not
compress, so text pages cost the same as any other 100 KiB.

1. Building, on one core, 2 s per row: `build_plain_email`; `build_encrypted_email` (signed with the dev
   smime-sender, encrypted to smime-recipient, AES-256); cryptography's PKCS#7 builders alone on the same
   inner entity (sign + envelope, no MIME around them); and the floor: `cryptography` doing one SHA-256 over
   the inner entity, one RSA-2048 PKCS#1 v1.5 signature, one RSA-2048 encryption of a 32-byte key and
   AES-256-CBC over as many bytes as the signed entity has.
2. SMTP to the sandbox's sink (aiosmtpd) on loopback, 3 s per row, one connection per message as the channel
   does: STARTTLS (dev server certificate, verified against ca.pem) sequentially and with 4 threads; the same
   sink without TLS (security "none"); and the floor: the same bytes over a plain TCP loopback connection to a
   socket that only reads and acknowledges. The sink runs in this process (as in the sandbox), so it shares
   the GIL with the client: these figures are client and server together. Not pinned to one core.
3. End to end: `bootstrap.build` with sandbox settings on SQLite, 300 public letters (plain e-mail) and 100
   confidential ones (S/MIME to the recipient certificate) submitted through `intake.submit`, then a Worker
   with 4 threads runs until all are DELIVERED; the sink's message count is printed (should be 400).

Prints figures; asserts nothing. Run (from the repo root): .venv/bin/python bench/email_channels.py
"""

from __future__ import annotations

import argparse
import hashlib
import io
import os
import random
import socket
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.serialization import pkcs7
from reportlab.pdfgen import canvas
from sqlalchemy import func, select

from kanalvaxel.adapters.email_message import (
    MailParties,
    build_plain_email,
    fill_content,
    new_message,
    to_bytes,
)
from kanalvaxel.adapters.persistence.tables import ShipmentRow
from kanalvaxel.adapters.smime import SmimeSigner, build_encrypted_email
from kanalvaxel.adapters.smtp import SmtpConfig, SmtpTransport
from kanalvaxel.bootstrap import build
from kanalvaxel.config import load_settings
from kanalvaxel.devcerts import ensure_dev_certs
from kanalvaxel.domain.identity import RecipientId
from kanalvaxel.domain.model import (
    Attachment,
    BodyType,
    Confidentiality,
    Letter,
    PostalAddress,
    RecipientInfo,
    SupportInfo,
)
from kanalvaxel.entrypoints.worker import Worker
from kanalvaxel.ports import SenderInfo
from kanalvaxel.sandbox.smtp_sink import SmtpSink

BUILD_SECONDS = 2.0
SMTP_SECONDS = 3.0
PDF_BYTES = 100 * 1024
FROM = "noreply@sandlada.example.se"
TO = "mottagare@example.se"  # the address in the smime-recipient certificate
PUBLIC_LETTERS, CONFIDENTIAL_LETTERS, WORKER_THREADS = 300, 100, 4
_PDF_TEXT = "abcdefghijklmnopqrstuvwxyz0123456789 "


def make_pdf(min_size: int) -> bytes:
    """A valid PDF of at least `min_size` bytes (and about that): uncompressed pages of random text."""

    def render(lines: int) -> bytes:
        rng = random.Random(4)  # the same text every run
        buf = io.BytesIO()
        pdf = canvas.Canvas(buf, pageCompression=0)
        for i in range(lines):
            if i % 120 == 0:
                if i:
                    pdf.showPage()
                pdf.setFont("Helvetica", 5)
            pdf.drawString(30, 800 - (i % 120) * 6.5, "".join(rng.choice(_PDF_TEXT) for _ in range(150)))
        pdf.showPage()
        pdf.save()
        return buf.getvalue()

    base, hundred = len(render(0)), len(render(100))
    lines = max(0, (min_size - base) * 100 // (hundred - base))
    while len(pdf := render(lines)) < min_size:
        lines += 1
    return pdf


def make_letter(pdf: bytes, confidentiality: Confidentiality, certificate: str | None) -> Letter:
    return Letter(
        sender="sandbox",
        recipient=RecipientId.parse("19121212-1212"),
        subject="Beslut om bygglov",
        body="Hej!\n\nHär kommer beslutet om ditt bygglov. Kontakta oss om något är oklart.",
        body_type=BodyType.TEXT,
        confidentiality=confidentiality,
        message_type="beslut",
        case_reference="BN 2026/42",
        support_info=SupportInfo("Ring kontaktcenter", phone="010-000 00 00", email="kontakt@example.se"),
        attachments=(Attachment("beslut.pdf", pdf),),
        recipient_info=RecipientInfo(
            name="Tolvan Tolvansson",
            postal_address=PostalAddress(("Storgatan 1",), "123 45", "Småstad"),
            email=TO,
            smime_certificate_pem=certificate,
        ),
    )


def rate(work: Callable[[], object], seconds: float) -> float:
    work()  # warm up
    count, start = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - start) < seconds:
        work()
        count += 1
    return count / elapsed


def sequential_rate(work: Callable[[], object], seconds: float) -> tuple[float, float, float]:
    """Calls per second, and CPU ms per call: this thread's (the client), and the rest of the process's
    (the in-process sink's event loop)."""
    work()  # warm up
    count = 0
    start, thread_cpu, process_cpu = time.perf_counter(), time.thread_time(), time.process_time()
    while (elapsed := time.perf_counter() - start) < seconds:
        work()
        count += 1
    client_ms = (time.thread_time() - thread_cpu) * 1000 / count
    return count / elapsed, client_ms, (time.process_time() - process_cpu) * 1000 / count - client_ms


def threaded_rate(work: Callable[[], object], threads: int, seconds: float) -> float:
    """Messages per second with `threads` threads each calling `work` until the time is up."""
    work()  # warm up
    start = time.perf_counter()
    deadline = start + seconds

    def loop() -> int:
        done = 0
        while time.perf_counter() < deadline:
            work()
            done += 1
        return done

    with ThreadPoolExecutor(threads) as pool:
        total = sum(pool.map(lambda _: loop(), range(threads)))
    return total / (time.perf_counter() - start)


def table(title: str, rows: dict[str, float], unit: str) -> None:
    print(title)
    print(f"  {'path':46} {unit:>10} {'ms each':>9}")
    for name, value in rows.items():
        print(f"  {name:46} {value:10.1f} {1000 / value:9.2f}")


# ------------------------------------------------------------------------------------------- 1. building


def bench_building(certs: Path, pdf: bytes) -> bytes:
    """Print the building figures; return the plain message (sent in part 2)."""
    sender = SenderInfo("sandbox", "2120000001", "Sandlådans kommun", ("Box 1", "111 11 Sandby"))
    parties = MailParties(FROM, sender.name, TO, "kontakt@example.se", "<bench-1.email@sandlada.example.se>")
    recipient_pem = (certs / "smime-recipient.pem").read_text()
    signer = SmimeSigner.from_files(certs / "smime-sender.pem", certs / "smime-sender.key")
    public = make_letter(pdf, Confidentiality.PUBLIC, None)
    confidential = make_letter(pdf, Confidentiality.CONFIDENTIAL, recipient_pem)
    now = datetime.now(UTC)

    plain = build_plain_email(public, sender, parties, now=now)
    encrypted = build_encrypted_email(confidential, sender, parties, recipient_pem, signer, now=now)
    # The entity smime.py signs and encrypts, made the same way, so the floor works on the same bytes.
    inner = new_message(parties, subject=confidential.subject, now=now, inner=True)
    fill_content(inner, confidential, sender)
    inner.set_param("protected-headers", "v1")
    content = to_bytes(inner)
    signed = (
        pkcs7.PKCS7SignatureBuilder()
        .set_data(content)
        .add_signer(signer.certificate, signer.key, hashes.SHA256())
        .sign(serialization.Encoding.SMIME, [pkcs7.PKCS7Options.DetachedSignature])
    )
    recipient = x509.load_pem_x509_certificate(recipient_pem.encode())
    recipient_key = recipient.public_key()
    assert isinstance(recipient_key, rsa.RSAPublicKey)
    to_encrypt = signed + b"\x00" * (-len(signed) % 16)  # CBC's padding, added once outside the loop

    def plain_build() -> None:
        build_plain_email(public, sender, parties, now=now)

    def smime_build() -> None:
        build_encrypted_email(confidential, sender, parties, recipient_pem, signer, now=now)

    def pkcs7_only() -> None:
        payload = (
            pkcs7.PKCS7SignatureBuilder()
            .set_data(content)
            .add_signer(signer.certificate, signer.key, hashes.SHA256())
            .sign(serialization.Encoding.SMIME, [pkcs7.PKCS7Options.DetachedSignature])
        )
        (
            pkcs7.PKCS7EnvelopeBuilder()
            .set_data(payload)
            .add_recipient(recipient)
            .set_content_encryption_algorithm(algorithms.AES256)
            .encrypt(serialization.Encoding.SMIME, [pkcs7.PKCS7Options.Binary])
        )

    def floor() -> None:
        digest = hashlib.sha256(content).digest()
        signer.key.sign(digest, padding.PKCS1v15(), Prehashed(hashes.SHA256()))
        recipient_key.encrypt(os.urandom(32), padding.PKCS1v15())
        encryptor = Cipher(algorithms.AES256(os.urandom(32)), modes.CBC(os.urandom(16))).encryptor()
        encryptor.update(to_encrypt)
        encryptor.finalize()

    plain_row, smime_row = "plain e-mail (build_plain_email)", "S/MIME e-mail (build_encrypted_email)"
    pkcs7_row = "pkcs7 sign + envelope alone (no MIME)"
    floor_row = "floor (SHA-256, 2x RSA-2048, AES-256-CBC)"
    rows = {
        plain_row: rate(plain_build, BUILD_SECONDS),
        smime_row: rate(smime_build, BUILD_SECONDS),
        pkcs7_row: rate(pkcs7_only, BUILD_SECONDS),
        floor_row: rate(floor, BUILD_SECONDS),
    }
    print(f"letter: one PDF of {len(pdf) / 1024:.1f} KiB (reportlab, uncompressed random text), text body")
    print(
        f"sizes: plain message {len(plain) / 1024:.1f} KiB ({len(plain) / len(pdf):.2f}x the PDF), "
        f"S/MIME message {len(encrypted) / 1024:.1f} KiB ({len(encrypted) / len(pdf):.2f}x the PDF), "
        f"signed inner entity {len(signed) / 1024:.1f} KiB"
    )
    table(f"1. building, one core, {BUILD_SECONDS:.0f} s per row", rows, "letters/s")
    smime_rate = rows[smime_row]
    print(f"  S/MIME / floor: a letter takes {rows[floor_row] / smime_rate:.1f}x")
    print(f"  S/MIME / plain: a letter takes {rows[plain_row] / smime_rate:.1f}x")
    print(f"  S/MIME / pkcs7 builders alone: a letter takes {rows[pkcs7_row] / smime_rate:.1f}x")
    return plain


# ------------------------------------------------------------------------------------------------ 2. SMTP


class _AckServer:
    """Loopback TCP: read one message of a known size per connection, answer one byte, close."""

    def __init__(self, size: int) -> None:
        self._size = size
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        self._thread = threading.Thread(target=self._serve, name="ack-server", daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self._listener.accept()
            except OSError:  # closed by stop()
                return
            with conn:
                got = 0
                while got < self._size and (chunk := conn.recv(65536)):
                    got += len(chunk)
                conn.sendall(b"k")

    def send(self, data: bytes) -> None:
        with socket.create_connection(("127.0.0.1", self.port)) as conn:
            conn.sendall(data)
            conn.recv(1)

    def stop(self) -> None:
        self._listener.close()
        self._thread.join(timeout=5)


def bench_smtp(certs: Path, message: bytes) -> None:
    rows: dict[str, float] = {}
    cpu: dict[str, tuple[float, float]] = {}
    received: dict[str, int] = {}

    def measure(sink: SmtpSink, label: str, send: Callable[[], object]) -> None:
        sink.clear()
        name = f"{label}, sequential"
        rows[name], *split = sequential_rate(send, SMTP_SECONDS)
        cpu[name] = (split[0], split[1])
        received[name] = len(sink.messages)
        sink.clear()
        name = f"{label}, 4 threads"
        rows[name] = threaded_rate(send, 4, SMTP_SECONDS)
        received[name] = len(sink.messages)

    with SmtpSink(certificate=certs / "server.pem", key=certs / "server.key", require_starttls=True) as sink:
        tls = SmtpTransport(
            SmtpConfig(host=sink.host, port=sink.port, security="starttls", ca_bundle=certs / "ca.pem")
        )
        measure(sink, "STARTTLS", lambda: tls.send(FROM, [TO], message))
        if not all(m.tls for m in sink.messages):
            print("  (!) a message arrived at the STARTTLS sink without TLS")
    with SmtpSink(require_starttls=False) as sink:
        clear = SmtpTransport(SmtpConfig(host=sink.host, port=sink.port, security="none"))
        measure(sink, "no TLS (security none)", lambda: clear.send(FROM, [TO], message))
    ack = _AckServer(len(message))
    try:
        rows["floor: raw TCP loopback, sequential"] = rate(lambda: ack.send(message), SMTP_SECONDS)
    finally:
        ack.stop()

    table(
        f"2. SMTP on loopback, {len(message) / 1024:.1f} KiB message, one connection per message, "
        f"{SMTP_SECONDS:.0f} s per row",
        rows,
        "msgs/s",
    )
    for name, (client_ms, sink_ms) in cpu.items():
        print(
            f"  {name}: CPU per message {client_ms:.2f} ms client (smtplib), {sink_ms:.2f} ms sink (aiosmtpd)"
        )
    print("  sink received (warm-up included): " + ", ".join(f"{n} {c}" for n, c in received.items()))
    seq, par = rows["STARTTLS, sequential"], rows["STARTTLS, 4 threads"]
    clear_seq = rows["no TLS (security none), sequential"]
    print(f"  STARTTLS / no TLS (sequential): a message takes {clear_seq / seq:.2f}x")
    print(f"  STARTTLS / raw TCP: a message takes {rows['floor: raw TCP loopback, sequential'] / seq:.0f}x")
    print(f"  4 threads / sequential (STARTTLS): {par / seq:.2f}x the throughput")


# ------------------------------------------------------------------------------------------ 3. end to end


def bench_end_to_end(pdf: bytes) -> None:
    with tempfile.TemporaryDirectory(prefix="email-bench-") as tmp:
        root = Path(tmp)
        certs = root / "certs"
        ensure_dev_certs(certs)
        settings = load_settings(
            database={"url": f"sqlite:///{root / 'bench.db'}"},
            print={"spool_dir": str(root / "spool"), "batch_max_age_seconds": 0},
            var_dir=str(root / "var"),
            dev_certs_dir=str(certs),
            mina_meddelanden={"enabled": False},
            email={"enabled": True},
            sms={"enabled": True, "retries": 0},
            worker={"threads": WORKER_THREADS, "poll_interval_seconds": 0.05},
        )
        c = build(settings)
        worker: Worker | None = None
        try:
            c.migrate()
            assert c.messaging is not None
            assert c.messaging.world is not None
            sink = c.messaging.world.sink
            assert sink is not None
            client = c.clients.add(f"bench-{time.time_ns()}", ["sandbox"]).client
            recipient_pem = (certs / "smime-recipient.pem").read_text()
            public = make_letter(pdf, Confidentiality.PUBLIC, None)
            confidential = make_letter(pdf, Confidentiality.CONFIDENTIAL, recipient_pem)
            letters = [public] * PUBLIC_LETTERS + [confidential] * CONFIDENTIAL_LETTERS
            letters = [replace(letter, subject=f"{letter.subject} {i}") for i, letter in enumerate(letters)]
            total = len(letters)

            t0 = time.perf_counter()
            for i, letter in enumerate(letters):
                c.intake.submit(client, f"bench-{i}", f"hash-{i}", letter)
            intake = time.perf_counter() - t0

            def states() -> Counter[str]:
                with c.engine.connect() as conn:
                    query = select(ShipmentRow.state, func.count()).group_by(ShipmentRow.state)
                    return Counter({state: n for state, n in conn.execute(query)})

            worker = Worker(c)
            t0, cpu0 = time.perf_counter(), time.process_time()
            worker.start()
            deadline = t0 + 90
            while (now := states()).get("DELIVERED", 0) < total and time.perf_counter() < deadline:
                if now.get("FAILED", 0) + now.get("DELIVERED", 0) >= total:
                    break
                time.sleep(0.05)
            dispatch, dispatch_cpu = time.perf_counter() - t0, time.process_time() - cpu0
            final = states()
            mails = sink.messages
            encrypted = sum(b"application/pkcs7-mime" in m.data for m in mails)
        finally:
            if worker is not None:
                worker.stop(grace=5)
            c.close()

    print(
        f"3. end to end (SQLite, worker with {WORKER_THREADS} threads): {PUBLIC_LETTERS} public + "
        f"{CONFIDENTIAL_LETTERS} confidential letters"
    )
    print(f"  intake:   {total / intake:8.1f} letters/s  ({intake * 1000 / total:.2f} ms each, one thread)")
    print(f"  delivery: {total / dispatch:8.1f} letters/s  ({dispatch:.2f} s until all DELIVERED)")
    print(
        f"  delivery used {dispatch_cpu:.1f} CPU-s in {dispatch:.1f} s "
        f"({dispatch_cpu / dispatch:.2f} cores busy, {dispatch_cpu * 1000 / total:.1f} CPU-ms a letter; "
        "worker and in-process sink together)"
    )
    print(f"  both:     {total / (intake + dispatch):8.1f} letters/s")
    print(f"  shipment states: {dict(final)}")
    print(f"  the sink got {len(mails)} messages ({encrypted} S/MIME); expected {total}")


def main() -> None:
    argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    ).parse_args()  # no options: --help explains what it measures
    certs = Path(tempfile.mkdtemp(prefix="email-bench-certs-"))
    ensure_dev_certs(certs)
    pdf = make_pdf(PDF_BYTES)
    cores = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else None
    if cores is not None:
        os.sched_setaffinity(0, {min(cores)})
    message = bench_building(certs, pdf)
    if cores is not None:
        os.sched_setaffinity(0, cores)  # SMTP and end to end use what the machine has
    print(f"cores for parts 2 and 3: {len(cores) if cores is not None else os.cpu_count()}")
    bench_smtp(certs, message)
    bench_end_to_end(pdf)


if __name__ == "__main__":
    main()
