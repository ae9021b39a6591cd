"""The canonical writer (canonical_chunks) against libxml2: for any tree, its bytes are exactly what
exclusive c14n gives for the rebuilt copy (``c14n(rebuild(...))``), which is what signing and verification
used before and what every other implementation digests."""

from __future__ import annotations

import glob
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from lxml import etree

from formedlare import mm
from formedlare.mm._canon import c14n, canonical_chunks, direct_signatures, rebuild, type_name
from tests.mm.conftest import RECEIVED, letter

VECTORS = Path(__file__).resolve().parents[3] / "shared" / "interop-vectors"

_URIS = [None, "urn:a", "urn:b", mm.ns.MSG_V3, mm.ns.DS]
_CHARS = st.one_of(
    st.sampled_from(list("<>&\"'\t\n\r ]åÖ–€\U0001f600")),
    st.characters(exclude_categories=("Cs", "Cc"), exclude_characters="\ufffe\uffff"),
)
_TEXT = st.none() | st.text(_CHARS, max_size=12) | st.sampled_from(["]]>", "&amp;", "a\r\nb"])


@st.composite
def _trees(draw: st.DrawFn) -> bytes:
    """A document as bytes: namespaces declared with and without prefixes (also redundantly), attributes
    (now and then a namespaced one), texts and tails with every character c14n escapes, comments and
    processing instructions; parsed by the caller as a receiver would."""
    counter = iter(range(10_000))

    def element(depth: int) -> etree._Element:
        uri = draw(st.sampled_from(_URIS))
        local = draw(st.sampled_from(["a", "b", "Delivery", "SignedDelivery", "Signature"]))
        prefix = draw(st.sampled_from([None, "p", "q"])) if uri else None
        tag = f"{{{uri}}}{local}" if uri else local
        node = etree.Element(tag, nsmap={prefix: uri} if uri else None)
        for name in draw(
            st.lists(st.sampled_from(["Id", "z", "b", "A", "{urn:b}x"]), max_size=3, unique=True)
        ):
            node.set(name, draw(st.text(_CHARS, max_size=8)))
        node.text = draw(_TEXT)
        if depth < 3:
            for _ in range(draw(st.integers(0, 3))):
                kind = draw(st.sampled_from(["element", "element", "comment", "pi"]))
                if kind == "element":
                    child = element(depth + 1)
                elif kind == "comment":
                    child = etree.Comment(f"c{next(counter)}")
                else:
                    child = etree.ProcessingInstruction("pi", f"p{next(counter)}")
                child.tail = draw(_TEXT)
                node.append(child)
        return node

    return etree.tostring(element(0))


def _same_as_libxml2(
    source: etree._Element,
    *,
    tag: str | None = None,
    unqualified: str | None = None,
    drop: etree._Element | None = None,
) -> None:
    try:
        expected = c14n(rebuild(source, tag=tag, unqualified=unqualified, drop=drop))
    except mm.MalformedXmlError:
        with pytest.raises(mm.MalformedXmlError):
            canonical_chunks(source, tag=tag, unqualified=unqualified, drop=drop)
        return
    chunks = canonical_chunks(source, tag=tag, unqualified=unqualified, drop=drop)
    assert b"".join(chunks) == expected
    assert chunks[-1].startswith(b"</"), "the root's end tag comes alone"
    assert chunks[-1].count(b"<") == 1, "the root's end tag comes alone"


@settings(max_examples=300, deadline=None)
@given(document=_trees(), pick=st.integers(0, 10**6), rename=st.booleans(), qualify=st.booleans())
def test_the_writer_gives_libxml2s_bytes_for_any_tree(
    document: bytes, pick: int, rename: bool, qualify: bool
) -> None:
    for keep in (True, False):  # with comments and PIs in the tree, and as parse_xml leaves it
        root = etree.fromstring(document) if keep else mm.parse_xml(document)
        elements = [e for e in root.iter() if isinstance(e.tag, str)]
        drop = elements[pick % len(elements)] if pick % 3 else None
        start = elements[pick % 2 % len(elements)]  # the root, or a subtree inside its document
        _same_as_libxml2(
            start,
            tag="{urn:renamed}Root" if rename else None,
            unqualified="urn:u" if qualify else None,
            drop=drop if drop is not start else None,
        )


def test_a_large_text_with_markup_characters_is_escaped_like_libxml2() -> None:
    root = etree.Element("{urn:a}a", nsmap={None: "urn:a"})
    body = etree.SubElement(root, "{urn:b}Body", nsmap={None: "urn:b"})
    body.text = "QUJD" * 40_000 + "&<>\r\"'" + "QUJD" * 40_000  # a chunk of its own (over 64 KiB)
    body.tail = "x" * 70_000 + "&"
    _same_as_libxml2(root)
    assert len(canonical_chunks(root)) > 2


@pytest.mark.parametrize(
    "path", sorted(glob.glob(str(VECTORS / "**" / "*.xml"), recursive=True)), ids=lambda p: Path(p).name
)
def test_the_writer_gives_libxml2s_bytes_for_every_element_of_the_interop_vectors(path: str) -> None:
    checked = 0
    for element in etree.parse(path).getroot().iter():
        if not isinstance(element.tag, str):
            continue
        tag, unqualified = type_name(element)
        for drop in [None, *direct_signatures(element)]:
            _same_as_libxml2(element, tag=tag, unqualified=unqualified, drop=drop)
            checked += 1
    assert checked > 10


def test_our_signed_and_sealed_bytes_are_their_own_canonical_form(
    sender: mm.SigningIdentity, relay: mm.SigningIdentity
) -> None:
    # The writer's bytes with the Signature put in before the end tag: still a fixed point of libxml2's c14n.
    signed = mm.sign_delivery(sender, letter(attachments=2))
    sealed = mm.seal_delivery(relay, signed, received=RECEIVED, signatures_ok=True)
    for data in (signed, sealed):
        assert c14n(mm.parse_xml(data)) == data
    assert mm.sign_element(sender, mm.build_signed_delivery(letter(attachments=2))) == signed
