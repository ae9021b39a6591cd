"""Property: whatever a letter holds, sign → wire with random prefixes → verify succeeds, and flipping any
one character of the Delivery makes it fail."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from lxml import etree

from formedlare import mm
from tests.mm.conftest import reprefix

# Characters XML 1.0 can carry, with Swedish letters, markup characters and CR/TAB weighted in.
_CHARS = st.one_of(
    st.sampled_from(list("åäöÅÄÖéü<>&\"'\t\n\r –€ ")),
    st.characters(exclude_categories=("Cs", "Cc"), exclude_characters="\ufffe\uffff"),
)
_TEXT = st.text(_CHARS, min_size=1, max_size=40)

_attachments = st.lists(
    st.builds(
        mm.AttachmentContent,
        filename=_TEXT,
        content_type=st.just("application/pdf"),
        data=st.binary(max_size=300),
    ),
    max_size=3,
).map(tuple)
_message = st.builds(
    mm.MessageContent,
    message_id=_TEXT,
    subject=_TEXT,
    body=st.binary(max_size=200),
    body_content_type=st.sampled_from(["text/plain", "text/html"]),
    support_text=_TEXT,
    support_url=st.none() | st.just("https://sandlada.example.se/"),
    attachments=_attachments,
)
_delivery = st.builds(
    mm.DeliveryContent,
    sender_id=st.just("162120000001"),
    sender_name=_TEXT,
    recipient_id=st.sampled_from(["198101032384", "165568402266"]),
    messages=st.lists(_message, min_size=1, max_size=2).map(tuple),
    reference=st.none() | _TEXT,
    correlation_id=st.none() | _TEXT,
)


def _texts(element: etree._Element) -> list[etree._Element]:
    return [e for e in element.iter() if isinstance(e.tag, str) and e.text]


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(content=_delivery, seed=st.integers(0, 2**16), pick=st.integers(0, 10**6))
def test_sign_wire_verify_and_any_flip_fails(
    sender: mm.SigningIdentity, policy: mm.TrustPolicy, content: mm.DeliveryContent, seed: int, pick: int
) -> None:
    envelope = reprefix(mm.distribute_secure_request(mm.sign_delivery(sender, content)), seed)
    wire = mm.soap_request_payload(envelope)[0]
    mm.verify_element(wire, policy)
    assert mm.read_delivery(wire).subjects == tuple(m.subject for m in content.messages)

    delivery = wire[0]
    candidates = _texts(delivery)
    target = candidates[pick % len(candidates)]
    text = target.text or ""
    at = pick % len(text)
    target.text = text[:at] + ("b" if text[at] == "a" else "a") + text[at + 1 :]
    with pytest.raises(mm.SignatureInvalidError) as caught:
        mm.verify_element(wire, policy)
    assert caught.value.reason is mm.SignatureProblem.DIGEST_MISMATCH
