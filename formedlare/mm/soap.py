"""SOAP 1.1 envelopes of the MM operations we use. Signed content is embedded as bytes, verbatim: a SOAP
library would re-render it with its own prefixes or line breaks and break the signature (deps-notes §4)."""

from __future__ import annotations

import re
from dataclasses import dataclass

from lxml import etree

from formedlare.mm import ns
from formedlare.mm._canon import type_name
from formedlare.mm.errors import InvalidContentError, MalformedXmlError, MmError
from formedlare.mm.xml import local_name, parse_xml

_DECLARATION = re.compile(rb"\A\s*<\?xml\s[^>]*\?>\s*")
_ENCODING = re.compile(rb"""encoding\s*=\s*["']([A-Za-z0-9._-]+)["']""")
_SOAP_PREFIX = b"soap"


@dataclass(frozen=True)
class MmFault:
    """A SOAP fault as the peer sent it; the MM details (``c3:applicationFault``) when present."""

    error_code: int | None
    description: str
    call_id: str | None
    faultstring: str


@dataclass(frozen=True)
class DistributionStatusEntry:
    """One ``m1:DistributionStatus``: ``kind`` Digital|Paper|Not, ``status`` Delivered|Pending|
    DeliveryFailed or None."""

    recipient_id: str
    kind: str
    status: str | None


class SoapFaultError(MmError):
    """The peer answered with a SOAP fault where a response was expected."""

    def __init__(self, fault: MmFault) -> None:
        super().__init__(f"SOAP-fel {fault.error_code}: {fault.description or fault.faultstring}")
        self.fault = fault


# ---------------------------------------------------------------------------------------------- requests


def deliver_secure_request(sealed_delivery: bytes) -> bytes:
    """The ``deliverSecure`` request (relay → mailbox operator) carrying `sealed_delivery` verbatim.

    On the wire the SealedDelivery element is named ``s3:deliverSecure`` inside the ``s3:deliverSecure``
    wrapper (mm-protocol §4.1); only its start and end tags are rewritten, every other byte is kept.
    Raises MalformedXmlError unless `sealed_delivery` is a UTF-8 v3 SealedDelivery.
    """
    inner = _renamed(
        sealed_delivery, ns.qname(ns.MSG_V3, "SealedDelivery"), ns.SERVICE_V3, b"deliverSecure", b"s3"
    )
    return _envelope(inner.wrapper(b"deliverSecure"))


def distribute_secure_request(signed_delivery: bytes) -> bytes:
    """The ``distributeSecure`` request (sender → relay): ``m3:distributeSecure/m3:signedDelivery`` carrying
    `signed_delivery` verbatim but for its renamed tags. Raises MalformedXmlError unless it is a v3
    SignedDelivery in UTF-8."""
    inner = _renamed(
        signed_delivery, ns.qname(ns.MSG_V3, "SignedDelivery"), ns.MSG_V3, b"signedDelivery", b"m3"
    )
    return _envelope(inner.wrapper(b"distributeSecure"))


def check_distribution_status_request(sender_id: str, distribution_id: str) -> bytes:
    """The ``checkDistributionStatus`` request: the sender's 12-digit id and the id distributeSecure
    returned."""
    body = _element(ns.MSG_V3, "checkDistributionStatus")
    _leaf(body, ns.MSG_V3, "senderId", sender_id)
    _leaf(body, ns.MSG_V3, "distributionId", distribution_id)
    return _envelope(_serialise(body))


def soap_request_payload(envelope: bytes) -> etree._Element:
    """The first element child of the SOAP 1.1 Body of `envelope`. Raises MalformedXmlError when `envelope`
    is not a SOAP 1.1 envelope with a non-empty Body."""
    body = _body(parse_xml(envelope))
    child = next((c for c in body if isinstance(c.tag, str)), None)
    if child is None:
        raise MalformedXmlError("SOAP-meddelandets Body är tom")
    return child


# ---------------------------------------------------------------------------------------------- responses


def deliver_secure_response(trans_id: str, recipient_id: str, delivered: bool) -> bytes:
    """``s3:deliverSecureResponse/s3:return`` (``s1:DeliveryResult`` with one Status)."""
    response = _element(ns.SERVICE_V3, "deliverSecureResponse")
    result = _leaf(response, ns.SERVICE_V3, "return")
    _leaf(result, ns.SERVICE_V1, "TransId", trans_id)
    status = _leaf(result, ns.SERVICE_V1, "Status")
    _leaf(status, ns.SERVICE_V1, "RecipientId", recipient_id)
    _leaf(status, ns.SERVICE_V1, "Delivered", "true" if delivered else "false")
    return _envelope(_serialise(response))


def distribute_secure_response(distribution_id: str) -> bytes:
    """``m3:distributeSecureResponse/m3:return`` holding the relay's distribution id."""
    response = _element(ns.MSG_V3, "distributeSecureResponse")
    _leaf(response, ns.MSG_V3, "return", distribution_id)
    return _envelope(_serialise(response))


def check_distribution_status_response(recipient_id: str, kind: str, status: str | None) -> bytes:
    """``m3:checkDistributionStatusResponse`` with one ``m1:DistributionStatus{RecipientId, Type
    Digital|Paper|Not, DeliveryStatus Delivered|Pending|DeliveryFailed}``. Raises InvalidContentError for
    other values of `kind` or `status`."""
    if kind not in ("Digital", "Paper", "Not"):
        raise InvalidContentError(f"okänd distributionstyp {kind!r}")
    if status is not None and status not in ("Delivered", "Pending", "DeliveryFailed"):
        raise InvalidContentError(f"okänd leveransstatus {status!r}")
    response = _element(ns.MSG_V3, "checkDistributionStatusResponse")
    result = _leaf(response, ns.MSG_V3, "return")
    _leaf(result, ns.MSG_V1, "RecipientId", recipient_id)
    _leaf(result, ns.MSG_V1, "Type", kind)
    if status is not None:
        _leaf(result, ns.MSG_V1, "DeliveryStatus", status)
    return _envelope(_serialise(response))


def soap_fault(error_code: int, description: str, call_id: str, *, faultcode: str = "soap:Server") -> bytes:
    """A SOAP 1.1 fault with ``detail/c3:applicationFault{ErrorCode, Description, CallId}``. `faultcode` is
    written as given; the envelope binds the prefix ``soap``. Raises InvalidContentError when `error_code`
    is outside 1..9998 or `call_id` is not 20..50 characters (the contract's limits)."""
    if not 0 < error_code < 9999:
        raise InvalidContentError(f"felkoden {error_code} ligger utanför 1–9998")
    if not 20 <= len(call_id) <= 50:
        raise InvalidContentError("CallId ska vara 20–50 tecken")
    fault = etree.Element(ns.qname(ns.SOAP_ENV, "Fault"), nsmap={"soap": ns.SOAP_ENV})
    etree.SubElement(fault, "faultcode").text = faultcode
    etree.SubElement(fault, "faultstring").text = description
    detail = etree.SubElement(fault, "detail")
    application = etree.SubElement(
        detail, ns.qname(ns.COMMON_V3, "applicationFault"), nsmap={"c3": ns.COMMON_V3}
    )
    etree.SubElement(application, ns.qname(ns.COMMON_V3, "ErrorCode")).text = str(error_code)
    etree.SubElement(application, ns.qname(ns.COMMON_V3, "Description")).text = description
    etree.SubElement(application, ns.qname(ns.COMMON_V3, "CallId")).text = call_id
    return _envelope(_serialise(fault))


def parse_fault(envelope: bytes) -> MmFault | None:
    """The fault in `envelope`, or None when its Body holds no ``soap:Fault``. Reads the MM detail
    (``applicationFault`` of v3, or v1's per-operation ``…Fault``) when present. Raises MalformedXmlError when
    `envelope` is not a SOAP 1.1 envelope."""
    return _fault_in(_body(parse_xml(envelope)))


def parse_deliver_secure_response(envelope: bytes) -> tuple[str, bool]:
    """(TransId, Delivered of the first Status) from a deliverSecure response. Raises SoapFaultError for a
    fault and MalformedXmlError for anything else that is not a deliverSecureResponse."""
    result = _result(envelope, "deliverSecureResponse")
    status = _required(result, "Status")
    return _text(_required(result, "TransId")), _boolean(_required(status, "Delivered"))


def parse_distribute_secure_response(envelope: bytes) -> str:
    """The distribution id from a distributeSecure response. Raises SoapFaultError / MalformedXmlError."""
    return _text(_result(envelope, "distributeSecureResponse"))


def parse_check_distribution_status_response(envelope: bytes) -> tuple[DistributionStatusEntry, ...]:
    """Every ``return`` of a checkDistributionStatus response. Raises SoapFaultError / MalformedXmlError."""
    response = _response(envelope, "checkDistributionStatusResponse")
    entries = []
    for result in (c for c in response if local_name(c) == "return"):
        status = _child(result, "DeliveryStatus")
        entries.append(
            DistributionStatusEntry(
                recipient_id=_text(_required(result, "RecipientId")),
                kind=_text(_required(result, "Type")),
                status=None if status is None else _text(status),
            )
        )
    return tuple(entries)


# ---------------------------------------------------------------------------------------------- helpers


@dataclass(frozen=True)
class _Renamed:
    content: bytes  # the element with its root renamed, prefix declared by the wrapper
    prefix: bytes
    uri: str

    def wrapper(self, local: bytes) -> bytes:
        name = self.prefix + b":" + local
        return (
            b"<"
            + name
            + b" xmlns:"
            + self.prefix
            + b'="'
            + self.uri.encode()
            + b'">'
            + self.content
            + b"</"
            + name
            + b">"
        )


def _renamed(data: bytes, expected: str, uri: str, new_local: bytes, preferred: bytes) -> _Renamed:
    """`data` with its root's start and end tag renamed to ``<prefix>:<new_local>``; nothing else changes."""
    root = parse_xml(data)
    if type_name(root)[0] != expected:
        raise MalformedXmlError(f"väntade {expected}, fick {local_name(root)}")
    declaration = _DECLARATION.match(data)
    if declaration:
        encoding = _ENCODING.search(declaration.group(0))
        if encoding and encoding.group(1).lower().replace(b"_", b"-") not in (b"utf-8", b"utf8"):
            raise MalformedXmlError("endast UTF-8 kan bäddas in")
        data = data[declaration.end() :]
    data = data.rstrip()
    # The wrapper binds the prefix; it must not be rebound inside the embedded element.
    prefix = next(p for p in (preferred, b"mmw", b"mmwrap0") if b"xmlns:" + p + b"=" not in data)
    start = re.match(rb"<((?:[A-Za-z_][\w.\-]*:)?)([A-Za-z_][\w.\-]*)(?=[\s/>])", data)
    if start is None:
        raise MalformedXmlError("kunde inte hitta rotelementets starttagg")
    end_tag = b"</" + start.group(1) + start.group(2) + b">"
    end = re.search(re.escape(end_tag[:-1]) + rb"\s*>\Z", data)
    if end is None:
        raise MalformedXmlError("rotelementet måste ha en sluttagg")
    name = prefix + b":" + new_local
    return _Renamed(b"<" + name + data[start.end() : end.start()] + b"</" + name + b">", prefix, uri)


def _envelope(body_content: bytes) -> bytes:
    return (
        b'<soap:Envelope xmlns:soap="'
        + ns.SOAP_ENV.encode()
        + b'"><soap:Body>'
        + body_content
        + b"</soap:Body></soap:Envelope>"
    )


def _element(uri: str, local: str) -> etree._Element:
    return etree.Element(ns.qname(uri, local), nsmap={_prefix(uri): uri})


def _leaf(parent: etree._Element, uri: str, local: str, text: str | None = None) -> etree._Element:
    nsmap = None if uri in parent.nsmap.values() else {_prefix(uri): uri}
    element = etree.SubElement(parent, ns.qname(uri, local), nsmap=nsmap)
    if text is not None:
        try:
            element.text = text
        except ValueError as exc:
            raise InvalidContentError(f"texten kan inte bäras i XML: {exc}") from exc
    return element


_PREFIXES = {
    ns.MSG_V1: "m1",
    ns.MSG_V3: "m3",
    ns.SERVICE_V1: "s1",
    ns.SERVICE_V3: "s3",
    ns.COMMON_V3: "c3",
}


def _prefix(uri: str) -> str:
    return _PREFIXES[uri]


def _serialise(element: etree._Element) -> bytes:
    return etree.tostring(element, encoding="UTF-8", xml_declaration=False)


def _body(root: etree._Element) -> etree._Element:
    if root.tag != ns.qname(ns.SOAP_ENV, "Envelope"):
        raise MalformedXmlError(f"inte ett SOAP 1.1-kuvert: {local_name(root)}")
    body = root.find(ns.qname(ns.SOAP_ENV, "Body"))
    if body is None:
        raise MalformedXmlError("SOAP-kuvertet saknar Body")
    return body


def _fault_in(body: etree._Element) -> MmFault | None:
    fault = body.find(ns.qname(ns.SOAP_ENV, "Fault"))
    if fault is None:
        return None
    faultstring = _text(fault.find("faultstring"))
    detail = fault.find("detail")
    info = None
    if detail is not None:
        info = next(
            (c for c in detail if local_name(c) == "applicationFault" or local_name(c).endswith("Fault")),
            None,
        )
    if info is None:
        return MmFault(error_code=None, description=faultstring, call_id=None, faultstring=faultstring)
    code_text = _text(_child(info, "ErrorCode"))
    call_id = _child(info, "CallId")
    return MmFault(
        error_code=int(code_text) if code_text.strip().isdigit() else None,
        description=_text(_child(info, "Description")) or faultstring,
        call_id=None if call_id is None else _text(call_id),
        faultstring=faultstring,
    )


def _response(envelope: bytes, local: str) -> etree._Element:
    body = _body(parse_xml(envelope))
    fault = _fault_in(body)
    if fault is not None:
        raise SoapFaultError(fault)
    response = _child(body, local)
    if response is None:
        raise MalformedXmlError(f"svaret saknar {local}")
    return response


def _result(envelope: bytes, local: str) -> etree._Element:
    return _required(_response(envelope, local), "return")


def _child(parent: etree._Element, local: str) -> etree._Element | None:
    return next((c for c in parent if local_name(c) == local), None)


def _required(parent: etree._Element, local: str) -> etree._Element:
    child = _child(parent, local)
    if child is None:
        raise MalformedXmlError(f"{local_name(parent)} saknar {local}")
    return child


def _text(element: etree._Element | None) -> str:
    return "" if element is None else (element.text or "")


def _boolean(element: etree._Element) -> bool:
    value = _text(element).strip()
    if value in ("true", "1"):
        return True
    if value in ("false", "0"):
        return False
    raise MalformedXmlError(f"{local_name(element)} är inte ett xs:boolean: {value!r}")
