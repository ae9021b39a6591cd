"""The Mina meddelanden path on one core: sign a letter, seal it at the relay, verify both signatures.

Per letter, each path builds the SignedDelivery from the same values (formedlare.mm.build_signed_delivery,
or formedlare.mm.sign_delivery for ours) and signs it as the sender; the relay parses the signed bytes and
verifies the sender's signature, then seals (SignedDelivery embedded + Seal + the relay's signature); the
operator parses the sealed bytes and verifies the outer, then the inner signature. Trust: the dev CA. Rows:

  formedlare.mm   ours: sign_delivery; parse_xml + verify_element; seal_delivery; parse_xml + verify_element
                  twice (what kanalvaxel, the relay's intake and worker, and an operator call)
  python-xmlsec   the C peer (libxmlsec1 through python-xmlsec) doing the same, trusted CA in its key manager
  floor           for each of the five signature operations, lxml's exclusive c14n of the document it covers
                  (built and parsed beforehand) + SHA-256, then RSA-2048 (two PKCS#1 v1.5 signatures, three
                  verifications). Building the letter, base64, the attachment's MD5, parsing and the trust
                  checks are not in it. Our path canonicalises with its own writer, which is faster than
                  lxml's c14n on a large base64 text, so it can come close to this floor.
  crypto only     the SHA-256 and RSA part of the floor alone (no c14n): no implementation does less.

Each size is measured in `--rounds` rounds; a round runs every row for `--seconds` in turn, so the rows
share the machine's state; the figure printed is the median round, in letters per second of CPU time.
Prints figures and ratios; asserts only that the peer's output verifies with ours (otherwise the comparison
would be meaningless). Run: .venv/bin/python bench/mm_sign.py [--sizes 100k,2m]
"""

from __future__ import annotations

import argparse
import copy
import datetime as dt
import hashlib
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import xmlsec
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from lxml import etree

from formedlare import mm
from kanalvaxel.devcerts import ensure_dev_certs

RECEIVED = dt.date(2025, 3, 14)
OURS, PEER = "formedlare.mm", "python-xmlsec"
FLOOR, CRYPTO = "floor (c14n+SHA-256+RSA)", "crypto only (SHA-256+RSA)"
_UNITS = {"k": 1024, "m": 1024 * 1024}


def letter(pdf: bytes) -> mm.DeliveryContent:
    message = mm.MessageContent(
        message_id="bench-1",
        subject="Beslut om bygglov",
        body="Hej! Ditt ärende är klart.".encode(),
        body_content_type="text/plain",
        support_text="Ring växeln.",
        attachments=(mm.AttachmentContent("beslut.pdf", "application/pdf", pdf),),
    )
    return mm.DeliveryContent("162120000001", "Sandlådans kommun", "198101032384", (message,))


def size_of(text: str) -> int:
    """'100k' -> 102400, '2m' -> 2097152, '5000' -> 5000 (bytes of PDF attachment)."""
    text = text.strip().lower()
    unit = _UNITS.get(text[-1:], 1)
    return int(float(text[:-1] if unit != 1 else text) * unit)


def rate(work: Callable[[], object], seconds: float) -> float:
    """Runs of `work` per second of this thread's CPU time, over `seconds` of wall time (at least 3 runs).
    CPU time, not wall time: the machine is shared, and time spent waiting for the core is not the path's."""
    count, wall, start = 0, time.perf_counter(), time.thread_time()
    while time.perf_counter() - wall < seconds or count < 3:
        work()
        count += 1
    return count / (time.thread_time() - start)


class Paths:
    """The rows for one letter, over one set of dev certificates."""

    def __init__(self, certs: Path, content: mm.DeliveryContent) -> None:
        self.content = content
        self.sender = mm.SigningIdentity.from_pem(certs / "sender.pem", certs / "sender.key")
        self.relay = mm.SigningIdentity.from_pem(certs / "relay.pem", certs / "relay.key")
        self.policy = mm.TrustPolicy.from_pem_files(certs / "ca.pem")
        pem = serialization.Encoding.PEM
        self.sender_key = self._xmlsec_key(certs / "sender.key", self.sender.certificate.public_bytes(pem))
        self.relay_key = self._xmlsec_key(certs / "relay.key", self.relay.certificate.public_bytes(pem))
        self.manager = xmlsec.KeysManager()
        self.manager.add_key(
            xmlsec.Key.from_file(str(certs / "ca.pem"), xmlsec.constants.KeyDataFormatCertPem)
        )
        self.manager.load_cert(
            str(certs / "ca.pem"), xmlsec.constants.KeyDataFormatPem, xmlsec.constants.KeyDataTypeTrusted
        )
        self.huge = etree.XMLParser(huge_tree=True, resolve_entities=False, no_network=True)

        signed = self.ours_sign()
        self.sealed_bytes = mm.seal_delivery(self.relay, signed, received=RECEIVED, signatures_ok=True)
        sealed = mm.parse_xml(self.sealed_bytes)
        # The floor's inputs: the five documents the signature operations cover, already parsed.
        self.floor_trees = [
            mm.canonical_document(mm.parse_xml(signed)),
            mm.canonical_document(mm.parse_xml(signed)),
            mm.canonical_document(sealed),
            mm.canonical_document(sealed),
            mm.canonical_document(mm.signed_delivery_of(sealed)),
        ]
        self.floor_bytes = [etree.tostring(t, method="c14n", exclusive=True) for t in self.floor_trees]
        keys = [
            serialization.load_pem_private_key((certs / f"{n}.key").read_bytes(), None)
            for n in ("sender", "relay")
        ]
        self.rsa_keys = [k for k in keys if isinstance(k, rsa.RSAPrivateKey)]
        self.small = b"<SignedInfo>" + b"x" * 900 + b"</SignedInfo>"
        sender_signature, relay_signature = (
            k.sign(self.small, padding.PKCS1v15(), hashes.SHA256()) for k in self.rsa_keys
        )
        sender_public, relay_public = (k.public_key() for k in self.rsa_keys)
        self.rsa_checks = [
            (sender_public, sender_signature),
            (relay_public, relay_signature),
            (sender_public, sender_signature),
        ]

    @staticmethod
    def _xmlsec_key(key_file: Path, cert_pem: bytes) -> xmlsec.Key:
        key = xmlsec.Key.from_file(str(key_file), xmlsec.constants.KeyDataFormatPem)
        key.load_cert_from_memory(cert_pem, xmlsec.constants.KeyDataFormatPem)
        return key

    def ours_sign(self) -> bytes:
        return mm.sign_delivery(self.sender, self.content)

    def ours(self) -> None:
        signed = mm.sign_delivery(self.sender, self.content)
        mm.verify_element(mm.parse_xml(signed), self.policy)  # the relay's intake
        sealed = mm.parse_xml(mm.seal_delivery(self.relay, signed, received=RECEIVED, signatures_ok=True))
        mm.verify_element(sealed, self.policy)
        mm.verify_element(mm.signed_delivery_of(sealed), self.policy)

    def floor(self) -> None:
        for tree in self.floor_trees:
            hashlib.sha256(etree.tostring(tree, method="c14n", exclusive=True)).digest()
        self._rsa()

    def crypto(self) -> None:
        for data in self.floor_bytes:
            hashlib.sha256(data).digest()
        self._rsa()

    def _rsa(self) -> None:
        for key in self.rsa_keys:
            key.sign(self.small, padding.PKCS1v15(), hashes.SHA256())
        for public, signature in self.rsa_checks:
            public.verify(signature, self.small, padding.PKCS1v15(), hashes.SHA256())

    @staticmethod
    def xmlsec_sign(document: etree._Element, key: xmlsec.Key) -> None:
        template = xmlsec.template.create(
            document, xmlsec.constants.TransformExclC14N, xmlsec.constants.TransformRsaSha256
        )
        reference = xmlsec.template.add_reference(template, xmlsec.constants.TransformSha256, uri="")
        xmlsec.template.add_transform(reference, xmlsec.constants.TransformEnveloped)
        xmlsec.template.add_x509_data(xmlsec.template.ensure_key_info(template))
        document.append(template)
        context = xmlsec.SignatureContext()
        context.key = key
        context.sign(template)

    def xmlsec_verify(self, document: etree._Element) -> None:
        xmlsec.SignatureContext(self.manager).verify(document[-1])  # type: ignore[call-arg]  # stub lacks it

    def peer_signed(self) -> etree._Element:
        signed = mm.build_signed_delivery(self.content)
        self.xmlsec_sign(signed, self.sender_key)
        return signed

    def peer(self) -> None:
        signed = etree.fromstring(etree.tostring(self.peer_signed()), self.huge)  # the relay's intake
        self.xmlsec_verify(signed)
        sealed = etree.Element(f"{{{mm.ns.MSG_V3}}}SealedDelivery", nsmap={None: mm.ns.MSG_V3})
        sealed.append(signed)
        seal = etree.SubElement(sealed, f"{{{mm.ns.MSG_V3}}}Seal")
        etree.SubElement(
            seal, f"{{{mm.ns.MSG_V1}}}ReceivedTime", nsmap={None: mm.ns.MSG_V1}
        ).text = "2025-03-14"
        etree.SubElement(seal, f"{{{mm.ns.MSG_V1}}}SignaturesOK", nsmap={None: mm.ns.MSG_V1}).text = "true"
        self.xmlsec_sign(sealed, self.relay_key)
        received = etree.fromstring(etree.tostring(sealed), self.huge)
        self.xmlsec_verify(received)
        inner = copy.deepcopy(received[0])  # a document of its own: URI="" means the whole document
        self.xmlsec_verify(inner)


def measure(paths: Paths, rounds: int, seconds: float) -> dict[str, float]:
    """Median letters/s of each path over `rounds` interleaved rounds."""
    work = {OURS: paths.ours, PEER: paths.peer, FLOOR: paths.floor, CRYPTO: paths.crypto}
    for run in work.values():
        run()  # warm up
    rates: dict[str, list[float]] = {name: [] for name in work}
    for _ in range(rounds):
        for name, run in work.items():
            rates[name].append(rate(run, seconds))
    return {name: statistics.median(values) for name, values in rates.items()}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", default="100k,2m", help="PDF sizes, comma-separated (default: 100k,2m)")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds per size (default: 5)")
    parser.add_argument("--seconds", type=float, default=1.0, help="seconds per path per round (default: 1)")
    args = parser.parse_args()
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {0})
    certs = Path(tempfile.mkdtemp(prefix="mm-bench-"))
    ensure_dev_certs(certs)

    print(f"one core, CPU time, median of {args.rounds} rounds of {args.seconds:g} s per path")
    for text in args.sizes.split(","):
        size = size_of(text)
        paths = Paths(certs, letter(b"%PDF-1.4\n" + os.urandom(size - 9)))
        # The peer's output must verify with ours, or the comparison would be meaningless.
        mm.verify_element(mm.parse_xml(etree.tostring(paths.peer_signed())), paths.policy)
        results = measure(paths, args.rounds, args.seconds)
        sealed_kib = len(paths.sealed_bytes) / 1024
        print()
        print(f"letter: {size / 1024:.0f} KiB PDF, SealedDelivery {sealed_kib:.0f} KiB")
        print(f"  {'path':28} {'letters/s':>10} {'ms/letter':>10}")
        for name, value in results.items():
            print(f"  {name:28} {value:10.1f} {1000 / value:10.2f}")
        ours, peer, floor, crypto = results[OURS], results[PEER], results[FLOOR], results[CRYPTO]
        print(f"  ours / floor:         a letter takes {floor / ours:.2f}x the floor's time")
        print(f"  ours / crypto only:   a letter takes {crypto / ours:.2f}x the time of its crypto alone")
        print(
            f"  ours / python-xmlsec: a letter takes {peer / ours:.2f}x the peer's time "
            f"({ours / peer:.2f}x its throughput)"
        )


if __name__ == "__main__":
    main()
