"""Namespace URIs of the Mina meddelanden contracts (mm-protocol §0)."""

from __future__ import annotations

from typing import Final

_MM: Final = "http://minameddelanden.gov.se/schema/"

MSG_V1: Final = _MM + "Message"
MSG_V2: Final = _MM + "Message/v2"
MSG_V3: Final = _MM + "Message/v3"
SENDER: Final = _MM + "Sender"
RECIPIENT_V1: Final = _MM + "Recipient"
SERVICE_V1: Final = _MM + "Service"
SERVICE_V3: Final = _MM + "Service/v3"
COMMON_V3: Final = _MM + "Common/v3"
DS: Final = "http://www.w3.org/2000/09/xmldsig#"
SOAP_ENV: Final = "http://schemas.xmlsoap.org/soap/envelope/"
#: The v1 WSDL wrapper namespace of the Service (deliverSecure with an unqualified ``arg0``).
SERVICE_WSDL_V1: Final = "http://minameddelanden.gov.se/Service"
#: The v1 WSDL wrapper namespace of the Message service (distributeSecure with an unqualified ``arg0``).
MESSAGE_WSDL_V1: Final = "http://minameddelanden.gov.se/Message"


def qname(namespace: str, local: str) -> str:
    """Clark notation, as lxml wants it."""
    return f"{{{namespace}}}{local}"
