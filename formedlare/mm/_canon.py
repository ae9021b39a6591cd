"""The MM canonical form (mm-protocol §5.2): the signed element as a stand-alone, prefix-free document,
named after its schema type. Signing and verification both go through :func:`rebuild`, so what we sign is
exactly what we check."""

from __future__ import annotations

from lxml import etree

from formedlare.mm import ns
from formedlare.mm.errors import MalformedXmlError
from formedlare.mm.xml import local_name, namespace

_SIGNATURE = ns.qname(ns.DS, "Signature")


def type_name(element: etree._Element) -> tuple[str, str | None]:
    """The tag the element is signed under, and the namespace its unqualified descendants are put in.

    A SealedDelivery travels as ``s3:deliverSecure`` (v3) or ``arg0`` (v1), a v3 distributeSecure payload as
    ``m3:signedDelivery``; the reference implementations sign them under their type's name (§5.2 step 2).
    v1 ``arg0`` payloads were signed with their unqualified children in the v1 Message namespace.
    """
    uri, local = namespace(element), local_name(element)
    if local in ("SignedDelivery", "SealedDelivery"):
        return ns.qname(uri, local) if uri else local, None
    if uri == ns.SERVICE_V3 and local == "deliverSecure":
        return ns.qname(ns.MSG_V3, "SealedDelivery"), None
    if uri == ns.MSG_V3 and local == "signedDelivery":
        return ns.qname(ns.MSG_V3, "SignedDelivery"), None
    if uri is None and local == "arg0":
        first = next((c for c in element if isinstance(c.tag, str)), None)
        kind = (
            "SealedDelivery"
            if first is not None and local_name(first) == "SignedDelivery"
            else "SignedDelivery"
        )
        return ns.qname(ns.MSG_V1, kind), ns.MSG_V1
    if uri is None:
        return local, None
    return ns.qname(uri, local), None


def direct_signatures(element: etree._Element) -> list[etree._Element]:
    return [child for child in element if child.tag == _SIGNATURE]


def rebuild(
    source: etree._Element,
    *,
    tag: str | None = None,
    parent: etree._Element | None = None,
    unqualified: str | None = None,
    drop: etree._Element | None = None,
) -> etree._Element:
    """A prefix-free copy of `source`: every element declares ``xmlns="…"`` exactly where its namespace
    differs from its parent's; text is kept character for character; comments and processing instructions
    are left out (exclusive c14n without comments leaves them out too) but the text around them is kept.
    `drop` (a descendant) is left out the way the enveloped-signature transform leaves it out.
    """
    new_tag = tag if tag is not None else _tag_of(source, unqualified)
    uri = new_tag[1:].partition("}")[0] if new_tag.startswith("{") else None
    parent_uri = namespace(parent) if parent is not None else None
    if uri is None and parent_uri is not None:
        # lxml cannot undeclare a default namespace (xmlns=""), and no MM element is unqualified there.
        raise MalformedXmlError(f"elementet {local_name(source)} saknar namnrymd inuti {parent_uri}")
    nsmap = {None: uri} if uri is not None and uri != parent_uri else None
    if parent is None:
        element = etree.Element(new_tag, nsmap=nsmap)
    else:
        element = etree.SubElement(parent, new_tag, nsmap=nsmap)
    for key, value in source.attrib.items():
        element.set(key, value)
    element.text = source.text
    last: etree._Element | None = None
    for child in source:
        if isinstance(child.tag, str) and child is not drop:
            last = rebuild(child, parent=element, unqualified=unqualified, drop=drop)
            last.tail = child.tail
            continue
        tail = child.tail
        if tail:
            if last is None:
                element.text = (element.text or "") + tail
            else:
                last.tail = (last.tail or "") + tail
    return element


def _tag_of(source: etree._Element, unqualified: str | None) -> str:
    tag = str(source.tag)
    if unqualified is not None and not tag.startswith("{"):
        return ns.qname(unqualified, tag)
    return tag


def c14n(element: etree._Element) -> bytes:
    """Exclusive XML canonicalisation without comments, UTF-8."""
    return etree.tostring(element, method="c14n", exclusive=True, with_comments=False)
