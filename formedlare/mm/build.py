"""Building an unsigned SignedDelivery from plain values, and reading the header back from any delivery."""

from __future__ import annotations

import base64
import hashlib

from lxml import etree

from formedlare.mm import ns
from formedlare.mm.errors import InvalidContentError, MalformedXmlError
from formedlare.mm.model import AttachmentContent, DeliveryContent, MessageContent, ParsedDelivery
from formedlare.mm.xml import local_name


def build_signed_delivery(content: DeliveryContent) -> etree._Element:
    """An unsigned ``m3:SignedDelivery`` holding `content`, already in the MM canonical form (no prefixes;
    a default ``xmlns`` wherever the namespace changes), ready for :func:`formedlare.mm.sign_element`.

    Bodies are base64 without line breaks; an attachment's Checksum is the MD5 of its bytes as 32 upper-case
    hex digits (mm-protocol §3.1). Nothing is checked against the schema here (see
    :func:`formedlare.mm.validate`). Raises InvalidContentError for text XML cannot carry (control
    characters).
    """
    root, bodies = build_without_bodies(content)
    for element, text in bodies.items():
        element.text = text  # lxml takes ASCII bytes, at half the cost of a str
    return root


def build_without_bodies(content: DeliveryContent) -> tuple[etree._Element, dict[etree._Element, bytes]]:
    """:func:`build_signed_delivery`'s tree with the base64 Body texts left out, and those texts by element.

    Signing needs the bodies only as canonical bytes (base64 is its own canonical form), so they are never
    set into lxml (which checks every character) only to be read back. Raises as build_signed_delivery.
    """
    if not content.messages:
        raise InvalidContentError("en försändelse måste innehålla minst ett meddelande")
    bodies: dict[etree._Element, bytes] = {}
    try:
        root = etree.Element(ns.qname(ns.MSG_V3, "SignedDelivery"), nsmap={None: ns.MSG_V3})
        delivery = _sub(root, ns.MSG_V3, "Delivery")
        header = _sub(delivery, ns.MSG_V3, "Header")
        sender = _sub(header, ns.MSG_V2, "Sender")
        _sub(sender, ns.SENDER, "Id", content.sender_id)
        _sub(sender, ns.SENDER, "Name", content.sender_name)
        _sub(header, ns.MSG_V2, "Recipient", content.recipient_id)
        if content.reference is not None:
            _sub(header, ns.MSG_V2, "Reference", content.reference)
        if content.correlation_id is not None:
            _sub(header, ns.MSG_V2, "CorrelationId", content.correlation_id)
        for message in content.messages:
            _message(delivery, message, bodies)
    except ValueError as exc:  # lxml: "All strings must be XML compatible"
        raise InvalidContentError(f"texten kan inte bäras i XML: {exc}") from exc
    return root, bodies


def _message(delivery: etree._Element, message: MessageContent, bodies: dict[etree._Element, bytes]) -> None:
    element = _sub(delivery, ns.MSG_V3, "Message")
    header = _sub(element, ns.MSG_V3, "Header")
    _sub(header, ns.MSG_V3, "Id", message.message_id)
    _sub(header, ns.MSG_V3, "Subject", message.subject)
    support = _sub(header, ns.MSG_V3, "Supportinfo")
    _sub(support, ns.MSG_V3, "Text", message.support_text)
    if message.support_url is not None:
        _sub(support, ns.MSG_V3, "URL", message.support_url)
    if message.support_phone is not None:
        _sub(support, ns.MSG_V3, "PhoneNumber", message.support_phone)
    if message.support_email is not None:
        _sub(support, ns.MSG_V3, "EmailAdress", message.support_email)
    _sub(header, ns.MSG_V3, "Language", message.language)
    body = _sub(element, ns.MSG_V3, "Body")
    _sub(body, ns.MSG_V1, "ContentType", message.body_content_type)
    bodies[_sub(body, ns.MSG_V1, "Body")] = base64.b64encode(message.body)
    for attachment in message.attachments:
        _attachment(element, attachment, bodies)


def _attachment(
    message: etree._Element, attachment: AttachmentContent, bodies: dict[etree._Element, bytes]
) -> None:
    element = _sub(message, ns.MSG_V3, "Attachment")
    _sub(element, ns.MSG_V1, "ContentType", attachment.content_type)
    bodies[_sub(element, ns.MSG_V1, "Body")] = base64.b64encode(attachment.data)
    _sub(element, ns.MSG_V1, "Checksum", md5_checksum(attachment.data))
    _sub(element, ns.MSG_V1, "Filename", attachment.filename)


def md5_checksum(data: bytes) -> str:
    """The Checksum MM expects of an attachment: MD5 of the bytes, 32 upper-case hex digits."""
    # MD5 is what receivers compare with (mm-protocol §3.1); it is an integrity hint, not security.
    return hashlib.md5(data, usedforsecurity=False).hexdigest().upper()


def _sub(parent: etree._Element, uri: str, local: str, text: str | None = None) -> etree._Element:
    parent_uri = parent.tag[1:].partition("}")[0] if isinstance(parent.tag, str) else None
    nsmap = {None: uri} if uri != parent_uri else None
    element = etree.SubElement(parent, ns.qname(uri, local), nsmap=nsmap)
    if text is not None:
        element.text = text
    return element


def read_delivery(element: etree._Element) -> ParsedDelivery:
    """The header facts of a SignedDelivery or SealedDelivery element, whatever its prefixes or wire name
    (``s3:deliverSecure``, ``m3:signedDelivery``, v1 ``arg0``). Raises MalformedXmlError when the Delivery or
    a required header field is missing. Checks no signature: verify first, then read.
    """
    node = element
    signed = _child(node, "SignedDelivery")
    if signed is not None:
        node = signed
    delivery = _child(node, "Delivery")
    if delivery is None:
        raise MalformedXmlError(f"{local_name(element)} innehåller ingen Delivery")
    header = _required(delivery, "Header")
    sender = _required(header, "Sender")
    messages = [m for m in delivery if local_name(m) == "Message"]
    if not messages:
        raise MalformedXmlError("Delivery innehåller inget Message")
    message_headers = [_required(m, "Header") for m in messages]
    return ParsedDelivery(
        sender_id=_text(_required(sender, "Id")),
        sender_name=_text(_required(sender, "Name")),
        recipient_id=_text(_required(header, "Recipient")),
        reference=_optional_text(header, "Reference"),
        correlation_id=_optional_text(header, "CorrelationId"),
        message_ids=tuple(_text(_required(h, "Id")) for h in message_headers),
        subjects=tuple(_text(_required(h, "Subject")) for h in message_headers),
    )


def _child(parent: etree._Element, local: str) -> etree._Element | None:
    return next((c for c in parent if local_name(c) == local), None)


def _required(parent: etree._Element, local: str) -> etree._Element:
    child = _child(parent, local)
    if child is None:
        raise MalformedXmlError(f"{local_name(parent)} saknar {local}")
    return child


def _text(element: etree._Element) -> str:
    return element.text or ""


def _optional_text(parent: etree._Element, local: str) -> str | None:
    child = _child(parent, local)
    return None if child is None else _text(child)
