"""Enveloped XMLDSig in the MM canonical form: signing, sealing, verifying, and the trust decision.

Signing is signxml's (``XMLSigner``: enveloped, exc-c14n, RSA-SHA256, SHA-256, ``ds`` as the default
namespace), applied to the element already in the MM canonical form (mm-protocol §5.2: stand-alone,
prefix-free, named after its type; :mod:`formedlare.mm._canon`). That form is ours, and so are its bytes:
:func:`~formedlare.mm._canon.canonical_chunks` writes them once, signxml is handed them as the reference's
canonical form (see :class:`_Signer`) and builds, signs and annotates the Signature, and the signed bytes
are ours with signxml's Signature put in before the end tag. That is what callers embed verbatim; it is
byte for byte what signxml produced on its own before (issue 10), in about a third of the time.

Verification is ours, not signxml's ``XMLVerifier``: a delivery arrives renamed and re-prefixed inside a SOAP
envelope (``s3:deliverSecure``, v1 ``arg0``), and ``URI=""`` then means the enclosing document, so the
receiver must rebuild the canonical form before digesting (signxml digests what it is given). Real senders
still sign with RSA-SHA1/SHA-1 (the Kivra vector), which signxml refuses outright, and the trust decision
(anchors, KeyUsage, validity at a chosen time, with a SignatureProblem for each failure) must be ours to
report in the relay's terms. The digest is taken over :func:`~formedlare.mm._canon.canonical_chunks`, fed
to the hash as written. Both directions are checked against xmlsec1, signxml's XMLVerifier and
python-xmlsec in the tests.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.serialization import pkcs12
from cryptography.x509.oid import NameOID
from lxml import etree
from signxml.algorithms import CanonicalizationMethod, SignatureConstructionMethod
from signxml.signer import XMLSigner
from signxml.util import SigningSettings

from formedlare.mm import ns
from formedlare.mm._canon import c14n, canonical_chunks, direct_signatures, rebuild, type_name
from formedlare.mm.build import build_without_bodies
from formedlare.mm.errors import (
    InvalidContentError,
    MalformedXmlError,
    MmError,
    SignatureInvalidError,
    SignatureProblem,
)
from formedlare.mm.model import DeliveryContent
from formedlare.mm.xml import local_name, namespace, parse_xml

EXC_C14N = "http://www.w3.org/2001/10/xml-exc-c14n#"
C14N_10 = "http://www.w3.org/TR/2001/REC-xml-c14n-20010315"
ENVELOPED = "http://www.w3.org/2000/09/xmldsig#enveloped-signature"
RSA_SHA1 = "http://www.w3.org/2000/09/xmldsig#rsa-sha1"
RSA_SHA256 = "http://www.w3.org/2001/04/xmldsig-more#rsa-sha256"
RSA_SHA384 = "http://www.w3.org/2001/04/xmldsig-more#rsa-sha384"
RSA_SHA512 = "http://www.w3.org/2001/04/xmldsig-more#rsa-sha512"
SHA1 = "http://www.w3.org/2000/09/xmldsig#sha1"
SHA256 = "http://www.w3.org/2001/04/xmlenc#sha256"
SHA384 = "http://www.w3.org/2001/04/xmldsig-more#sha384"
SHA512 = "http://www.w3.org/2001/04/xmlenc#sha512"

_SIGNATURE_METHODS: dict[str, type[hashes.HashAlgorithm]] = {
    RSA_SHA1: hashes.SHA1,
    RSA_SHA256: hashes.SHA256,
    RSA_SHA384: hashes.SHA384,
    RSA_SHA512: hashes.SHA512,
}
_DIGEST_METHODS = {SHA1: "sha1", SHA256: "sha256", SHA384: "sha384", SHA512: "sha512"}
_SHA1_URIS = frozenset({RSA_SHA1, SHA1})
# Inclusive c14n 1.0 of a prefix-free stand-alone document gives the same bytes as exclusive (§5.2).
_TRANSFORMS = frozenset({ENVELOPED, EXC_C14N, C14N_10})
_ORGNR = re.compile(r"16(\d{10})")
_MAX_CHAIN = 8


def _ds(local: str) -> str:
    return ns.qname(ns.DS, local)


# ---------------------------------------------------------------------------------------------- identity


class SigningIdentity:
    """A signing certificate and its RSA key, loaded once (loading validates the key, ~40 ms: deps-notes
    pitfall 9). ``chain`` holds further certificates from the same file (intermediates), sent in KeyInfo."""

    __slots__ = ("_key", "certificate", "chain", "organisation_number")

    def __init__(
        self,
        certificate: x509.Certificate,
        key: rsa.RSAPrivateKey,
        chain: tuple[x509.Certificate, ...] = (),
    ) -> None:
        if not isinstance(key, rsa.RSAPrivateKey):
            raise InvalidContentError("signeringsnyckeln måste vara en RSA-nyckel")
        public = certificate.public_key()
        if not isinstance(public, rsa.RSAPublicKey) or public != key.public_key():
            raise InvalidContentError("certifikatet hör inte till nyckeln")
        self._key = key
        self.certificate = certificate
        self.chain = chain
        self.organisation_number: str | None = organisation_number_of(certificate)

    @classmethod
    def from_pem(cls, certificate: Path, key: Path, password: bytes | None = None) -> SigningIdentity:
        """From a PEM certificate file (leaf first, then any intermediates) and a PEM key file.
        Raises InvalidContentError when the files do not hold a matching RSA certificate and key."""
        try:
            certs = x509.load_pem_x509_certificates(certificate.read_bytes())
            private = serialization.load_pem_private_key(key.read_bytes(), password)
        except (ValueError, TypeError) as exc:
            raise InvalidContentError(f"kunde inte läsa certifikat eller nyckel: {exc}") from exc
        if not isinstance(private, rsa.RSAPrivateKey):
            raise InvalidContentError("signeringsnyckeln måste vara en RSA-nyckel")
        return cls(certs[0], private, tuple(certs[1:]))

    @classmethod
    def from_pkcs12(cls, path: Path, password: bytes | None) -> SigningIdentity:
        """From a PKCS#12 file holding the key, its certificate and optionally intermediates.
        Raises InvalidContentError when it cannot be opened or holds no RSA key with a certificate."""
        try:
            private, cert, extra = pkcs12.load_key_and_certificates(path.read_bytes(), password)
        except (ValueError, TypeError) as exc:
            raise InvalidContentError(f"kunde inte öppna PKCS#12-filen: {exc}") from exc
        if cert is None or not isinstance(private, rsa.RSAPrivateKey):
            raise InvalidContentError("PKCS#12-filen saknar RSA-nyckel eller certifikat")
        return cls(cert, private, tuple(extra))


def organisation_number_of(certificate: x509.Certificate) -> str | None:
    """The 10-digit organisation number from the subject's serialNumber ``16`` + 10 digits, else None."""
    for attribute in certificate.subject.get_attributes_for_oid(NameOID.SERIAL_NUMBER):
        value = attribute.value if isinstance(attribute.value, str) else attribute.value.decode()
        match = _ORGNR.fullmatch(value.strip())
        if match:
            return match.group(1)
    return None


# ---------------------------------------------------------------------------------------------- signing


def sign_element(identity: SigningIdentity, element: etree._Element) -> bytes:
    """`element` signed in the MM profile; returns the signed element's bytes (exclusive c14n, no XML
    declaration).

    The element is rebuilt in the canonical form first (renamed after its type, prefixes dropped), then gets
    an enveloped ``Signature`` (``ds`` as default namespace) as its last child: exc-c14n, RSA-SHA256, SHA-256,
    ``Reference URI=""``, transforms enveloped-signature + exc-c14n, KeyInfo with the certificate (+ chain)
    and its subject name; signed by signxml. Deterministic: equal input gives equal bytes. A root carrying
    an ``Id``/``ID`` attribute is referenced as ``URI="#<Id>"`` instead (signxml's rule; same content, and
    :func:`verify_element` accepts it). Raises MalformedXmlError when the element already carries a
    signature (a second one would break both: deps-notes pitfall 8).
    """
    if direct_signatures(element):
        raise MalformedXmlError(f"{local_name(element)} är redan signerat")
    tag, unqualified = type_name(element)
    document = rebuild(element, tag=tag, unqualified=unqualified)
    return _sign_document(identity, document)


def sign_delivery(identity: SigningIdentity, content: DeliveryContent) -> bytes:
    """The signed ``m3:SignedDelivery`` of `content` (see :func:`sign_element`; build rules in
    :func:`formedlare.mm.build_signed_delivery`)."""
    document, bodies = build_without_bodies(content)
    return _sign_document(identity, document, bodies)


def seal_delivery(
    identity: SigningIdentity, signed_delivery: bytes, *, received: date, signatures_ok: bool
) -> bytes:
    """The relay's ``m3:SealedDelivery``: the sender's SignedDelivery embedded unchanged in content (its
    canonical form, sender signature included), ``Seal{ReceivedTime, SignaturesOK}``, then the relay's
    enveloped signature over both (last child). Returns its bytes as :func:`sign_element` does.

    `signatures_ok` records whether the caller verified the sender's signature; this function checks nothing.
    Raises MalformedXmlError unless `signed_delivery` is a signed v3 SignedDelivery (or
    ``m3:signedDelivery``).
    """
    source = parse_xml(signed_delivery)
    tag, _ = type_name(source)
    if tag != ns.qname(ns.MSG_V3, "SignedDelivery"):
        raise MalformedXmlError(f"väntade en v3 SignedDelivery, fick {local_name(source)}")
    if len(direct_signatures(source)) != 1:
        raise MalformedXmlError("SignedDelivery ska bära avsändarens signatur")
    sealed = etree.Element(ns.qname(ns.MSG_V3, "SealedDelivery"), nsmap={None: ns.MSG_V3})
    if source.tag == tag:
        # Parsed here, so ours to move: the canonical writer renders it prefix-free as rebuild() would.
        sealed.append(source)
    else:
        rebuild(source, tag=tag, parent=sealed)
    seal = etree.SubElement(sealed, ns.qname(ns.MSG_V3, "Seal"))
    received_time = etree.SubElement(seal, ns.qname(ns.MSG_V1, "ReceivedTime"), nsmap={None: ns.MSG_V1})
    received_time.text = received.isoformat()
    ok = etree.SubElement(seal, ns.qname(ns.MSG_V1, "SignaturesOK"), nsmap={None: ns.MSG_V1})
    ok.text = "true" if signatures_ok else "false"
    return _sign_document(identity, sealed)


class _Signer(XMLSigner):
    """signxml's XMLSigner in the MM profile, told the document's canonical form instead of computing it.

    signxml copies the document twice (serialise and re-parse, to cut it loose from a parent's namespaces)
    and canonicalises it once more through libxml2: three passes over the base64 attachment for bytes we
    already hold. Our document is a stand-alone tree made for this signature, so ``get_root`` signs it in
    place, and ``_c14n`` answers for it with the bytes :func:`canonical_chunks` wrote. Everything else (the
    Signature element, SignedInfo and its c14n, the RSA signature, KeyInfo) is signxml's own code. Both
    hooks are signxml internals (5.x); :meth:`sign_document` refuses to return a signature if the digest
    input did not come from us, so a signxml that stopped calling them fails loudly, never signs the wrong
    bytes.
    """

    def __init__(self, document: etree._Element, canonical: bytes) -> None:
        super().__init__(
            method=SignatureConstructionMethod.enveloped,
            signature_algorithm=RSA_SHA256,
            digest_algorithm=SHA256,
            c14n_algorithm=EXC_C14N,
        )
        self.namespaces = {None: ns.DS}  # type: ignore[dict-item]  # signxml's annotation omits the default
        # Anything signxml still parses is small, but keep its parser as hardened as ours (and huge-safe).
        self._parser = etree.XMLParser(  # type: ignore[assignment]  # private, but the only hook (pitfall 10)
            huge_tree=True, resolve_entities=False, no_network=True
        )
        self.signature_annotators.append(_add_subject_name)
        self._document = document
        self._canonical = canonical
        self._answered = False

    def get_root(self, data: object) -> object:
        return data if data is self._document else super().get_root(data)  # type: ignore[no-untyped-call]

    def _c14n(
        self, nodes: object, algorithm: CanonicalizationMethod, inclusive_ns_prefixes: object = None
    ) -> bytes:
        if nodes is self._document:
            self._answered = True
            return self._canonical
        result: bytes = super()._c14n(nodes, algorithm, inclusive_ns_prefixes=inclusive_ns_prefixes)
        return result

    def sign_document(self, identity: SigningIdentity) -> etree._Element:
        """Sign; the Signature element signxml appended to the document (its last child). Raises
        MalformedXmlError for a document holding a ds:Signature with Id="placeholder" (signxml would sign
        there instead: a forged input), MmError if signxml did not take our canonical form."""
        if self._document.find(f".//{_ds('Signature')}[@Id='placeholder']") is not None:
            raise MalformedXmlError("dokumentet innehåller en platshållare för ds:Signature")
        children = len(self._document)
        # The loaded key object: a PEM string would be re-parsed and validated on every call (pitfall 9).
        # No Id on the root, so signxml keeps Reference URI="" (pitfall 3).
        signed = self.sign(self._document, key=identity._key, cert=[identity.certificate, *identity.chain])
        appended = signed is self._document and len(signed) == children + 1
        # (signxml names its elements unqualified under the ds default namespace: signxml issue 275.)
        if not (self._answered and appended and local_name(signed[-1]) == "Signature"):
            raise MmError("internt fel: signxml signerade inte vår kanoniska form (ny signxml-version?)")
        return signed[-1]


def _sign_document(
    identity: SigningIdentity,
    document: etree._Element,
    bodies: dict[etree._Element, bytes] | None = None,
) -> bytes:
    """Sign `document` (ours, stand-alone, canonical and unsigned); the signed document's exc-c14n bytes.

    `bodies` are texts left out of the tree (as canonical_chunks takes them): signxml, handed the canonical
    bytes, never reads the document's content, only appends its Signature to the root."""
    chunks = canonical_chunks(document, texts=bodies)
    signature = _Signer(document, b"".join(chunks)).sign_document(identity)
    if namespace(document) == ns.DS:
        # A ds element signed as a whole (no MM document is one): the Signature inherits its namespace.
        return c14n(document)
    # The Signature is the last child and declares its own default namespace, so its canonical bytes in the
    # document are those it has alone: the signed document is the unsigned one with them before the end tag.
    chunks.insert(-1, c14n(signature))
    return b"".join(chunks)


def _add_subject_name(signature: etree._Element, signing_settings: SigningSettings) -> None:
    """Annotator run after signxml's KeyInfo: the signer's subject name beside its certificate, as before."""
    leaf = (signing_settings.cert_chain or [None])[0]
    x509_data = next((e for e in signature.iter() if etree.QName(e).localname == "X509Data"), None)
    if x509_data is None or not isinstance(leaf, x509.Certificate):
        return  # cannot happen with _sign_document's arguments; the subject name is optional anyway
    # Same namespace form as signxml's siblings (with ds as default it builds unqualified tags, issue 275).
    name = etree.Element(etree.QName(etree.QName(x509_data).namespace, "X509SubjectName"))
    name.text = leaf.subject.rfc4514_string()
    x509_data.insert(0, name)


# ---------------------------------------------------------------------------------------------- verifying


@dataclass(frozen=True)
class TrustPolicy:
    """Whom to trust: certificates must chain to one of ``anchors`` (through ``intermediates`` or the
    certificates in KeyInfo). ``allow_sha1`` admits RSA-SHA1/SHA-1, which real senders still use (the Kivra
    vector of 2023)."""

    anchors: tuple[x509.Certificate, ...]
    intermediates: tuple[x509.Certificate, ...] = ()
    allow_sha1: bool = True

    def __post_init__(self) -> None:
        if not self.anchors:
            raise ValueError("a TrustPolicy needs at least one anchor")

    @classmethod
    def from_pem_files(cls, *paths: Path, allow_sha1: bool = True) -> TrustPolicy:
        """Every self-signed certificate in the files is an anchor, every other one an intermediate."""
        anchors: list[x509.Certificate] = []
        intermediates: list[x509.Certificate] = []
        for path in paths:
            for cert in x509.load_pem_x509_certificates(path.read_bytes()):
                (anchors if cert.subject == cert.issuer else intermediates).append(cert)
        return cls(tuple(anchors), tuple(intermediates), allow_sha1)


@dataclass(frozen=True)
class VerifiedSignature:
    certificate: x509.Certificate
    organisation_number: str | None
    signature_algorithm: str
    digest_algorithm: str


@dataclass(frozen=True)
class _Parsed:
    signed_info: etree._Element
    canonicalization: str
    signature_method: str
    reference_uri: str
    transforms: tuple[str, ...]
    digest_method: str
    digest_value: bytes
    signature_value: bytes
    certificates: tuple[x509.Certificate, ...]


def verify_element(
    element: etree._Element,
    policy: TrustPolicy | None,
    *,
    at: datetime | None = None,
    allow_sha1: bool = True,
) -> VerifiedSignature:
    """Verify the ``ds:Signature`` that is a direct child of `element` in the MM canonical form.

    `element` is a SignedDelivery or SealedDelivery in any prefix form, also as it arrives on the wire
    (``s3:deliverSecure``, ``m3:signedDelivery``, v1 ``arg0``). The digest is computed over the canonical
    form without that Signature, SignedInfo is rebuilt prefix-free, the key is the certificate in KeyInfo.
    With a `policy` the certificate must also chain to its anchors, be valid at `at` (default: now, UTC) and
    allow digitalSignature or contentCommitment when it has a KeyUsage; ``policy.allow_sha1`` governs SHA-1.
    With `policy` None no trust decision is made (interop vectors, tools) and `allow_sha1` governs SHA-1.
    Raises SignatureInvalidError with the first check that failed; returns what was verified.
    """
    signatures = direct_signatures(element)
    if not signatures:
        raise SignatureInvalidError(SignatureProblem.UNSIGNED, f"{local_name(element)} saknar signatur")
    if len(signatures) > 1:
        raise _malformed(f"{local_name(element)} har {len(signatures)} signaturer")
    signature = signatures[0]
    parsed = _parse_signature(signature)
    _check_algorithms(parsed, policy.allow_sha1 if policy is not None else allow_sha1)
    _check_reference_uri(element, parsed.reference_uri)

    tag, unqualified = type_name(element)
    hasher = hashlib.new(_DIGEST_METHODS[parsed.digest_method])
    try:
        for chunk in canonical_chunks(element, tag=tag, unqualified=unqualified, drop=signature):
            hasher.update(chunk)
    except MalformedXmlError as exc:
        raise _malformed(str(exc)) from exc
    if hasher.digest() != parsed.digest_value:
        raise SignatureInvalidError(
            SignatureProblem.DIGEST_MISMATCH,
            "innehållet har ändrats efter signeringen (kontrollsumman stämmer inte)",
        )

    certificate = _signer_certificate(parsed.certificates)
    public_key = certificate.public_key()
    if not isinstance(public_key, rsa.RSAPublicKey):
        raise SignatureInvalidError(
            SignatureProblem.UNSUPPORTED_ALGORITHM, "certifikatets nyckel är inte RSA"
        )
    signed_info = b"".join(canonical_chunks(parsed.signed_info))
    try:
        public_key.verify(
            parsed.signature_value,
            signed_info,
            padding.PKCS1v15(),
            _SIGNATURE_METHODS[parsed.signature_method](),
        )
    except InvalidSignature as exc:
        raise SignatureInvalidError(
            SignatureProblem.SIGNATURE_MISMATCH, "signaturvärdet stämmer inte med certifikatets nyckel"
        ) from exc

    if policy is not None:
        when = at or datetime.now(UTC)
        _check_trust(
            certificate, parsed.certificates, policy, when if when.tzinfo else when.replace(tzinfo=UTC)
        )
    return VerifiedSignature(
        certificate=certificate,
        organisation_number=organisation_number_of(certificate),
        signature_algorithm=parsed.signature_method,
        digest_algorithm=parsed.digest_method,
    )


def canonical_document(element: etree._Element) -> etree._Element:
    """The stand-alone canonical form of a signed element (renamed after its type, no prefixes, its
    Signature rebuilt prefix-free and still last): what an independent XMLDSig tool such as xmlsec1 can
    verify (mm-protocol §8). Raises MalformedXmlError for unqualified elements inside namespaced ones."""
    tag, unqualified = type_name(element)
    return rebuild(element, tag=tag, unqualified=unqualified)


def signed_delivery_of(element: etree._Element) -> etree._Element:
    """The SignedDelivery child of a SealedDelivery (any wire name or prefix), to verify the sender's
    signature. Raises MalformedXmlError when there is none."""
    for child in element:
        if local_name(child) == "SignedDelivery":
            return child
    raise MalformedXmlError(f"{local_name(element)} innehåller ingen SignedDelivery")


def _malformed(detail: str) -> SignatureInvalidError:
    return SignatureInvalidError(SignatureProblem.MALFORMED_SIGNATURE, detail)


def _one(parent: etree._Element, local: str) -> etree._Element:
    found = parent.findall(_ds(local))
    if len(found) != 1:
        raise _malformed(f"{local_name(parent)} ska ha exakt ett {local}-element (har {len(found)})")
    return found[0]


def _algorithm(parent: etree._Element, local: str) -> str:
    value = _one(parent, local).get("Algorithm")
    if not value:
        raise _malformed(f"{local} saknar Algorithm")
    return value


def _b64decode(text: str | None, what: str) -> bytes:
    try:
        return base64.b64decode("".join((text or "").split()), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise _malformed(f"{what} är inte giltig base64") from exc


def _parse_signature(signature: etree._Element) -> _Parsed:
    signed_info = _one(signature, "SignedInfo")
    reference = _one(signed_info, "Reference")
    transforms_element = reference.findall(_ds("Transforms"))
    transforms: tuple[str, ...] = ()
    if len(transforms_element) > 1:
        raise _malformed("Reference har flera Transforms")
    if transforms_element:
        transforms = tuple(t.get("Algorithm", "") for t in transforms_element[0].findall(_ds("Transform")))
    key_info = signature.findall(_ds("KeyInfo"))
    certificates: list[x509.Certificate] = []
    for x509_data in key_info[0].findall(_ds("X509Data")) if len(key_info) == 1 else []:
        for cert_element in x509_data.findall(_ds("X509Certificate")):
            der = _b64decode(cert_element.text, "X509Certificate")
            try:
                certificates.append(x509.load_der_x509_certificate(der))
            except ValueError as exc:
                raise _malformed(f"X509Certificate går inte att läsa: {exc}") from exc
    if not certificates:
        raise _malformed("KeyInfo saknar X509Certificate")
    return _Parsed(
        signed_info=signed_info,
        canonicalization=_algorithm(signed_info, "CanonicalizationMethod"),
        signature_method=_algorithm(signed_info, "SignatureMethod"),
        reference_uri=reference.get("URI", ""),
        transforms=transforms,
        digest_method=_algorithm(reference, "DigestMethod"),
        digest_value=_b64decode(_one(reference, "DigestValue").text, "DigestValue"),
        signature_value=_b64decode(_one(signature, "SignatureValue").text, "SignatureValue"),
        certificates=tuple(certificates),
    )


def _check_algorithms(parsed: _Parsed, allow_sha1: bool) -> None:
    unsupported = SignatureProblem.UNSUPPORTED_ALGORITHM
    if parsed.canonicalization != EXC_C14N:
        raise SignatureInvalidError(unsupported, f"kanoniseringen {parsed.canonicalization} stöds inte")
    if parsed.signature_method not in _SIGNATURE_METHODS:
        raise SignatureInvalidError(unsupported, f"signaturmetoden {parsed.signature_method} stöds inte")
    if parsed.digest_method not in _DIGEST_METHODS:
        raise SignatureInvalidError(unsupported, f"kontrollsummemetoden {parsed.digest_method} stöds inte")
    for transform in parsed.transforms:
        if transform not in _TRANSFORMS:
            raise SignatureInvalidError(unsupported, f"transformen {transform} stöds inte")
    if ENVELOPED not in parsed.transforms:
        raise _malformed("signaturen är inte inbäddad (enveloped-signature saknas)")
    if not allow_sha1 and {parsed.signature_method, parsed.digest_method} & _SHA1_URIS:
        raise SignatureInvalidError(SignatureProblem.SHA1_NOT_ALLOWED, "SHA-1 tas inte emot")


def _check_reference_uri(element: etree._Element, uri: str) -> None:
    if uri == "":
        return
    # SV signs with URI="#<Id>" when the root has an Id (mm-protocol §5.1): same content, named.
    ids = {element.get(name) for name in ("Id", "ID", "id")} - {None}
    if not (uri.startswith("#") and uri[1:] in ids):
        raise _malformed(f"Reference URI {uri!r} pekar inte på det signerade elementet")


def _signer_certificate(certificates: tuple[x509.Certificate, ...]) -> x509.Certificate:
    """The leaf among the KeyInfo certificates: the one that issued none of the others."""
    if len(certificates) == 1:
        return certificates[0]
    issuers = {c.issuer.public_bytes() for c in certificates if c.subject != c.issuer}
    leaves = [c for c in certificates if c.subject.public_bytes() not in issuers]
    return leaves[0] if leaves else certificates[0]


def _check_trust(
    certificate: x509.Certificate,
    key_info: tuple[x509.Certificate, ...],
    policy: TrustPolicy,
    at: datetime,
) -> None:
    _check_validity(certificate, at, "signeringscertifikatet")
    try:
        key_usage = certificate.extensions.get_extension_for_class(x509.KeyUsage).value
    except x509.ExtensionNotFound:
        key_usage = None  # RFC 5280: no KeyUsage extension means no restriction
    if key_usage is not None and not (key_usage.digital_signature or key_usage.content_commitment):
        raise SignatureInvalidError(
            SignatureProblem.CERTIFICATE_UNUSABLE, "certifikatet får inte användas för signering"
        )
    candidates = tuple(policy.intermediates) + tuple(c for c in key_info if c is not certificate)
    current = certificate
    for _ in range(_MAX_CHAIN):
        if current in policy.anchors:
            return
        anchor = next((a for a in policy.anchors if _issued_by(current, a)), None)
        if anchor is not None:
            _check_validity(anchor, at, "tillitsankaret")
            return
        issuer = next((c for c in candidates if _is_ca(c) and _issued_by(current, c)), None)
        if issuer is None:
            break
        _check_validity(issuer, at, "mellanliggande certifikat")
        current = issuer
    raise SignatureInvalidError(
        SignatureProblem.CERTIFICATE_UNTRUSTED,
        f"certifikatet ({certificate.subject.rfc4514_string()}) är inte utfärdat av någon betrodd utfärdare",
    )


def _check_validity(certificate: x509.Certificate, at: datetime, what: str) -> None:
    if at < certificate.not_valid_before_utc:
        raise SignatureInvalidError(
            SignatureProblem.CERTIFICATE_NOT_YET_VALID,
            f"{what} gäller först från {certificate.not_valid_before_utc:%Y-%m-%d %H:%M} UTC",
        )
    if at > certificate.not_valid_after_utc:
        raise SignatureInvalidError(
            SignatureProblem.CERTIFICATE_EXPIRED,
            f"{what} gick ut {certificate.not_valid_after_utc:%Y-%m-%d %H:%M} UTC",
        )


def _is_ca(certificate: x509.Certificate) -> bool:
    try:
        return certificate.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    except x509.ExtensionNotFound:
        return False


def _issued_by(certificate: x509.Certificate, issuer: x509.Certificate) -> bool:
    if certificate.issuer != issuer.subject:
        return False
    try:
        certificate.verify_directly_issued_by(issuer)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True
