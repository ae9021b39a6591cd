"""The MM canonical form (mm-protocol §5.2): the signed element as a stand-alone, prefix-free document,
named after its schema type. :func:`rebuild` makes that document as an lxml tree; :func:`canonical_chunks`
writes its exclusive-c14n bytes straight from the source without the copy. Signing and verification both go
through :func:`canonical_chunks`, so what we sign is exactly what we check; the tests hold it byte for byte
to ``c14n(rebuild(...))``, i.e. to libxml2's canonicaliser."""

from __future__ import annotations

import re

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


class _Unsupported(Exception):
    """A shape the writer does not reproduce byte for byte (namespaced attributes, odd namespace URIs)."""


# A namespace URI that needs no escaping in an xmlns="" attribute (libxml2 writes it unescaped, c14n would
# escape it): anything else takes the slow path, which is libxml2's own output.
_PLAIN_URI = re.compile(r"[^&<>\"'\t\n\r]*\Z")


def canonical_chunks(
    source: etree._Element,
    *,
    tag: str | None = None,
    unqualified: str | None = None,
    drop: etree._Element | None = None,
    texts: dict[etree._Element, bytes] | None = None,
) -> list[bytes]:
    """``c14n(rebuild(source, tag=…, unqualified=…, drop=…))`` as a list of byte strings, without building
    the copy: rebuilding and canonicalising a letter copies its base64 attachment twice, through Python
    strings and libxml2's character-by-character escaping; here the text is read once and encoded as is
    when it needs no escaping (base64 never does). A large text is a chunk of its own, the markup between
    them one chunk each; the last chunk is the root's end tag, so a signature can be put before it. `texts`
    gives the canonical text of elements whose text was left out of the tree (our own builder's attachment
    bodies: the base64 is never set into lxml only to be read back).

    Raises MalformedXmlError as :func:`rebuild` does (an unqualified element inside a namespaced one).
    """
    writer = _Writer(unqualified, drop, texts)
    try:
        end = writer.element(source, tag if tag is not None else _tag_of(source, unqualified), None)
    except _Unsupported:
        if texts:
            raise MalformedXmlError("internt fel: egna dokument ska kunna skrivas direkt") from None
        # Rare shapes (no MM message has them): libxml2 canonicalises the rebuilt copy instead.
        whole = c14n(rebuild(source, tag=tag, unqualified=unqualified, drop=drop))
        cut = whole.rindex(b"</")
        return [whole[:cut], whole[cut:]]
    writer.flush()
    writer.out.append(end.encode())
    return writer.out


# Texts at least this long get a chunk of their own instead of being joined with the markup around them.
_LARGE_TEXT = 1 << 16


class _Writer:
    """The rules of rebuild() followed by exclusive c14n: the default namespace is declared where it differs
    from the parent's; attributes sorted by name; text escaped as c14n escapes it; comments, processing
    instructions and `drop` left out with the text after them kept."""

    __slots__ = ("drop", "out", "pending", "texts", "unqualified")

    def __init__(
        self,
        unqualified: str | None,
        drop: etree._Element | None,
        texts: dict[etree._Element, bytes] | None,
    ) -> None:
        self.unqualified = unqualified
        self.drop = drop
        self.texts = texts
        self.out: list[bytes] = []
        self.pending: list[str] = []  # markup and short texts, encoded together

    def flush(self) -> None:
        if self.pending:
            self.out.append("".join(self.pending).encode())
            self.pending.clear()

    def text(self, text: str) -> None:
        if len(text) < _LARGE_TEXT:
            self.pending.append(_escape_text(text))
        else:
            self.flush()
            self.out.append(_escape_text(text).encode())

    def element(self, source: etree._Element, tag: str, parent_uri: str | None) -> str:
        """Writes `source` under `tag` but for its end tag, which it returns."""
        uri: str | None = None
        local = tag
        if tag[:1] == "{":
            uri, _, local = tag[1:].partition("}")
        elif parent_uri is not None:
            raise MalformedXmlError(f"elementet {local_name(source)} saknar namnrymd inuti {parent_uri}")
        pending = self.pending
        if uri is None or uri == parent_uri:
            pending.append("<" + local)
        elif _PLAIN_URI.match(uri):
            pending.append(f'<{local} xmlns="{uri}"')
        else:
            raise _Unsupported
        attributes = source.attrib
        if attributes:
            for name, value in sorted(attributes.items()):
                if name[:1] == "{":
                    raise _Unsupported
                pending.append(f' {name}="{_escape_attribute(value)}"')
        pending.append(">")
        if self.texts is not None and source in self.texts:
            self.flush()
            self.out.append(self.texts[source])
        elif source.text:
            self.text(source.text)
        drop, unqualified = self.drop, self.unqualified
        for child in source:
            child_tag = child.tag
            if child is not drop and isinstance(child_tag, str):
                if unqualified is not None and child_tag[:1] != "{":
                    child_tag = ns.qname(unqualified, child_tag)
                self.pending.append(self.element(child, child_tag, uri))
            tail = child.tail
            if tail:
                self.text(tail)
        return f"</{local}>"


def _escape_text(text: str) -> str:
    # `in` before replace: a multi-megabyte base64 text is scanned, never copied, when it needs nothing.
    if "&" in text:
        text = text.replace("&", "&amp;")
    if "<" in text:
        text = text.replace("<", "&lt;")
    if ">" in text:
        text = text.replace(">", "&gt;")
    if "\r" in text:
        text = text.replace("\r", "&#xD;")
    return text


def _escape_attribute(value: str) -> str:
    return (
        value.replace("&", "&amp;")
        .replace("<", "&lt;")
        .replace('"', "&quot;")
        .replace("\t", "&#x9;")
        .replace("\n", "&#xA;")
        .replace("\r", "&#xD;")
    )
