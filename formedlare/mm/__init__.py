"""The Mina meddelanden XML layer: build, sign, seal and verify deliveries in the MM canonical form
(mm-protocol §5.2), validate them against our own schemas, and wrap them in SOAP 1.1 envelopes."""

from formedlare.mm import ns
from formedlare.mm.build import build_signed_delivery, md5_checksum, read_delivery
from formedlare.mm.errors import (
    InvalidContentError,
    MalformedXmlError,
    MmError,
    SchemaViolationError,
    SignatureInvalidError,
    SignatureProblem,
)
from formedlare.mm.model import AttachmentContent, DeliveryContent, MessageContent, ParsedDelivery
from formedlare.mm.schema import validate
from formedlare.mm.signature import (
    SigningIdentity,
    TrustPolicy,
    VerifiedSignature,
    canonical_document,
    organisation_number_of,
    seal_delivery,
    sign_delivery,
    sign_element,
    signed_delivery_of,
    verify_element,
)
from formedlare.mm.soap import (
    DistributionStatusEntry,
    MmFault,
    SoapFaultError,
    check_distribution_status_request,
    check_distribution_status_response,
    deliver_secure_request,
    deliver_secure_response,
    distribute_secure_request,
    distribute_secure_response,
    parse_check_distribution_status_response,
    parse_deliver_secure_response,
    parse_distribute_secure_response,
    parse_fault,
    soap_fault,
    soap_request_payload,
)
from formedlare.mm.xml import parse_xml

__all__ = [
    "AttachmentContent",
    "DeliveryContent",
    "DistributionStatusEntry",
    "InvalidContentError",
    "MalformedXmlError",
    "MessageContent",
    "MmError",
    "MmFault",
    "ParsedDelivery",
    "SchemaViolationError",
    "SignatureInvalidError",
    "SignatureProblem",
    "SigningIdentity",
    "SoapFaultError",
    "TrustPolicy",
    "VerifiedSignature",
    "build_signed_delivery",
    "canonical_document",
    "check_distribution_status_request",
    "check_distribution_status_response",
    "deliver_secure_request",
    "deliver_secure_response",
    "distribute_secure_request",
    "distribute_secure_response",
    "md5_checksum",
    "ns",
    "organisation_number_of",
    "parse_check_distribution_status_response",
    "parse_deliver_secure_response",
    "parse_distribute_secure_response",
    "parse_fault",
    "parse_xml",
    "read_delivery",
    "seal_delivery",
    "sign_delivery",
    "sign_element",
    "signed_delivery_of",
    "soap_fault",
    "soap_request_payload",
    "validate",
    "verify_element",
]
