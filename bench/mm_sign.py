"""Sign, seal and verify (both signatures) a letter with a 100 KB PDF attachment, on one core.

Beside formedlare.mm it measures (a) the floor: two RSA-2048 signatures plus SHA-256 over the same bytes with
`cryptography` alone, and (b) the same sign + seal + verify done with python-xmlsec (libxmlsec1, C) as the
peer. formedlare.mm signs with signxml and verifies with its own code (see formedlare/mm/signature.py).
Prints figures; asserts nothing. Run: .venv/bin/python bench/mm_sign.py
"""

from __future__ import annotations

import argparse
import copy
import datetime as dt
import hashlib
import os
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

SECONDS = 3.0
RECEIVED = dt.date(2025, 3, 14)


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


def rate(work: Callable[[], object]) -> float:
    work()  # warm up
    count, start = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - start) < SECONDS:
        work()
        count += 1
    return count / elapsed


def main() -> None:
    argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    ).parse_args()  # no options: --help explains what it measures
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {0})
    certs = Path(tempfile.mkdtemp(prefix="mm-bench-"))
    ensure_dev_certs(certs)
    sender = mm.SigningIdentity.from_pem(certs / "sender.pem", certs / "sender.key")
    relay = mm.SigningIdentity.from_pem(certs / "relay.pem", certs / "relay.key")
    policy = mm.TrustPolicy.from_pem_files(certs / "ca.pem")
    pdf = b"%PDF-1.4\n" + os.urandom(100 * 1024 - 9)
    content = letter(pdf)

    def ours() -> None:
        signed = mm.sign_delivery(sender, content)
        sealed = mm.parse_xml(mm.seal_delivery(relay, signed, received=RECEIVED, signatures_ok=True))
        mm.verify_element(sealed, policy)
        mm.verify_element(mm.signed_delivery_of(sealed), policy)

    signed_bytes = mm.sign_delivery(sender, content)
    sealed_bytes = mm.seal_delivery(relay, signed_bytes, received=RECEIVED, signatures_ok=True)
    keys = [
        serialization.load_pem_private_key((certs / f"{n}.key").read_bytes(), None)
        for n in ("sender", "relay")
    ]
    rsa_keys = [k for k in keys if isinstance(k, rsa.RSAPrivateKey)]

    def floor() -> None:
        for key, data in zip(rsa_keys, (signed_bytes, sealed_bytes), strict=True):
            key.sign(hashlib.sha256(data).digest(), padding.PKCS1v15(), hashes.SHA256())

    sender_key = xmlsec.Key.from_file(str(certs / "sender.key"), xmlsec.constants.KeyDataFormatPem)
    sender_key.load_cert_from_file(str(certs / "sender.pem"), xmlsec.constants.KeyDataFormatPem)
    relay_key = xmlsec.Key.from_file(str(certs / "relay.key"), xmlsec.constants.KeyDataFormatPem)
    relay_key.load_cert_from_file(str(certs / "relay.pem"), xmlsec.constants.KeyDataFormatPem)
    manager = xmlsec.KeysManager()
    manager.add_key(xmlsec.Key.from_file(str(certs / "ca.pem"), xmlsec.constants.KeyDataFormatCertPem))
    manager.load_cert(
        str(certs / "ca.pem"), xmlsec.constants.KeyDataFormatPem, xmlsec.constants.KeyDataTypeTrusted
    )

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

    def xmlsec_verify(document: etree._Element) -> None:
        xmlsec.SignatureContext(manager).verify(document[-1])  # type: ignore[call-arg]  # stub lacks manager

    def peer() -> None:
        signed = mm.build_signed_delivery(content)
        xmlsec_sign(signed, sender_key)
        sealed = etree.Element(f"{{{mm.ns.MSG_V3}}}SealedDelivery", nsmap={None: mm.ns.MSG_V3})
        sealed.append(signed)
        seal = etree.SubElement(sealed, f"{{{mm.ns.MSG_V3}}}Seal")
        etree.SubElement(
            seal, f"{{{mm.ns.MSG_V1}}}ReceivedTime", nsmap={None: mm.ns.MSG_V1}
        ).text = "2025-03-14"
        etree.SubElement(seal, f"{{{mm.ns.MSG_V1}}}SignaturesOK", nsmap={None: mm.ns.MSG_V1}).text = "true"
        xmlsec_sign(sealed, relay_key)
        received = etree.fromstring(etree.tostring(sealed), etree.XMLParser(huge_tree=True))
        xmlsec_verify(received)
        inner = copy.deepcopy(received[0])  # a document of its own: URI="" means the whole document
        xmlsec_verify(inner)

    # The peer's output must verify with ours, or the comparison would be meaningless.
    check = mm.build_signed_delivery(content)
    xmlsec_sign(check, sender_key)
    mm.verify_element(mm.parse_xml(etree.tostring(check)), policy)

    results = {
        "formedlare.mm": rate(ours),
        "floor (2x RSA-2048 + SHA-256)": rate(floor),
        "python-xmlsec": rate(peer),
    }
    size = len(sealed_bytes) / 1024
    print(f"letter: 100 KiB PDF, SealedDelivery {size:.0f} KiB, one core, {SECONDS:.0f} s per row")
    print(f"{'path':32} {'letters/s':>10} {'ms/letter':>10}")
    for name, value in results.items():
        print(f"{name:32} {value:10.1f} {1000 / value:10.2f}")
    ours_rate = results["formedlare.mm"]
    floor_rate, peer_rate = results["floor (2x RSA-2048 + SHA-256)"], results["python-xmlsec"]
    print(f"ours / floor: a letter takes {floor_rate / ours_rate:.1f}x the floor's time")
    print(f"ours / python-xmlsec: {ours_rate / peer_rate:.2f}x its throughput")


if __name__ == "__main__":
    main()
