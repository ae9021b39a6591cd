"""Validation against our own, smaller schemas (``formedlare/mm/xsd/``), written for the parts of the MM
contracts we use; the official ones are only a reference (tests check that both agree on what we send)."""

from __future__ import annotations

import copy
import threading
from functools import cache
from pathlib import Path

from lxml import etree

from formedlare.mm import ns
from formedlare.mm.errors import SchemaViolationError
from formedlare.mm.xml import local_name, namespace

XSD_DIR = Path(__file__).resolve().parent / "xsd"
WSDL_DIR = Path(__file__).resolve().parent / "wsdl"

_FILES = {
    ns.MSG_V3: "Message_v3.xsd",
    ns.SERVICE_V3: "Service_v3.xsd",
    ns.COMMON_V3: "Common_v3.xsd",
}
# An XMLSchema's error log belongs to the object: one validation at a time per schema.
_LOCK = threading.Lock()


@cache
def _schema(uri: str) -> etree.XMLSchema:
    parser = etree.XMLParser(resolve_entities=False, no_network=True)
    return etree.XMLSchema(etree.parse(str(XSD_DIR / _FILES[uri]), parser))


def validate(element: etree._Element) -> None:
    """Validate `element` against our schema for its namespace: Message v3 (SignedDelivery, SealedDelivery,
    distributeSecure, checkDistributionStatus and their responses), Service v3 (deliverSecure and its
    response) or Common v3 (applicationFault). The inner ``s3:deliverSecure`` (a SealedDelivery on the wire)
    and ``m3:signedDelivery`` are validated as their type. Raises SchemaViolationError with one message per
    violation; no element of another namespace passes.
    """
    uri, local = namespace(element), local_name(element)
    target = element
    if uri == ns.SERVICE_V3 and local == "deliverSecure" and _first_child(element) == "SignedDelivery":
        target = _wrapped(element, ns.SERVICE_V3, "deliverSecure")
    elif uri == ns.MSG_V3 and local == "signedDelivery":
        target = _wrapped(element, ns.MSG_V3, "distributeSecure")
    if uri not in _FILES:
        raise SchemaViolationError([f"inget schema för elementet {local_name(element)} i {uri}"])
    schema = _schema(uri)
    with _LOCK:
        if schema.validate(target):
            return
        errors = [f"rad {e.line}: {e.message}" for e in schema.error_log]
    raise SchemaViolationError(errors)


def _first_child(element: etree._Element) -> str:
    return next((local_name(c) for c in element if isinstance(c.tag, str)), "")


def _wrapped(element: etree._Element, uri: str, local: str) -> etree._Element:
    wrapper = etree.Element(ns.qname(uri, local))
    wrapper.append(copy.deepcopy(element))
    return wrapper
