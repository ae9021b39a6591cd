"""The one way this package parses XML that comes from outside: hardened, no DTDs, no network."""

from __future__ import annotations

from lxml import etree

from formedlare.mm.errors import MalformedXmlError

_PARSER_ARGS = {
    "resolve_entities": False,
    "no_network": True,
    "load_dtd": False,
    "dtd_validation": False,
    # Whitespace is signed content (mm-protocol §5.3): never drop blank text.
    "remove_blank_text": False,
    # Comments and processing instructions are outside the digest (c14n without comments), so anyone can add
    # them to signed content; kept, they would split a text node and `.text` would read only its first part
    # (a truncated Recipient or message id that still verifies). Dropped here, the text parts are joined.
    "remove_comments": True,
    "remove_pis": True,
    "collect_ids": False,
}
_PARSER = etree.XMLParser(huge_tree=False, **_PARSER_ARGS)  # type: ignore[call-overload]
_HUGE_PARSER = etree.XMLParser(huge_tree=True, **_PARSER_ARGS)  # type: ignore[call-overload]


def parse_xml(data: bytes, *, huge: bool = True) -> etree._Element:
    """Parse `data` into its root element.

    Refuses (MalformedXmlError) anything that is not well-formed, and any document with a DTD (a DOCTYPE):
    no MM message has one, and refusing it rules out entity tricks. ``huge`` lifts libxml2's 10 MB
    text-node limit, which a base64 attachment of more than about 7.5 MiB hits (deps-notes pitfall 10).
    """
    if not isinstance(data, bytes):
        raise MalformedXmlError("XML ska lämnas som bytes")
    try:
        root = etree.fromstring(data, _HUGE_PARSER if huge else _PARSER)
    except etree.XMLSyntaxError as exc:
        raise MalformedXmlError(f"inte välformad XML: {exc}") from exc
    if not isinstance(root, etree._Element):
        raise MalformedXmlError("tomt XML-dokument")
    if root.getroottree().docinfo.doctype:
        raise MalformedXmlError("XML med DOCTYPE tas inte emot")
    return root


def local_name(element: etree._Element) -> str:
    """The local part of an element's tag ('' for comments and processing instructions)."""
    tag = element.tag
    if not isinstance(tag, str):
        return ""
    return tag.rpartition("}")[2]


def namespace(element: etree._Element) -> str | None:
    """The namespace URI of an element, None when it has none."""
    tag = element.tag
    if not isinstance(tag, str) or not tag.startswith("{"):
        return None
    return tag[1:].partition("}")[0]
