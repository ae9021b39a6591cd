"""far_client: a client of FaR (Förmedlingsadressregistret), Mina meddelanden's register of digital mailboxes.

It asks FaR's Recipient v3 SOAP service whether recipients have a secure mailbox, at which operator, and
whether they accept a given sender. It never imports ``kanalvaxel`` or ``formedlare``.

Usage::

    settings = FarSettings(
        url="https://far.example/Recipient/v3",
        client_certificate=Path("client.pem"), client_key=Path("client.key"), ca_bundle=Path("ca.pem"),
    )
    with FarClient(settings) as far:
        answers = far.is_reachable("2120000001", ["197001011234", "165568402266"])
        if answers["197001011234"].deliverable:
            address = answers["197001011234"].account.service_supplier.service_address

- Any number of recipient ids: they are deduplicated and sent in chunks of at most 1000 (the contract's
  limit), up to ``max_concurrency`` calls at once; the answer is keyed by recipient id.
- Answers of ``is_reachable`` are cached per (sender, recipient) for ``cache_ttl`` (0 disables). Pending
  accounts and failures are never cached; ``bypass_cache=True`` asks FaR again and refreshes the cache.
- Errors form one tree under :class:`FarError`, each with ``retryable`` and the original exception chained::

      FarError
      ├── InvalidIdentifierError   malformed sender or recipient id (also a ValueError); nothing was sent
      ├── FarTransportError        connection refused, TLS failure, HTTP error without a fault (retryable,
      │   │                        except HTTP 4xx)
      │   └── FarTimeoutError      connect or read timeout (retryable)
      ├── FarFaultError            SOAP fault: .error_code, .description, .call_id (not retryable)
      └── FarResponseError         malformed answer, or one that does not match the question

  Retryable errors are retried ``retries`` times with a short backoff before they are raised.
- The WSDL and schemas are our own subset of the contract (``far_client/wsdl/``), loaded from the package.
- Recipient ids are personal data: far_client logs only counts (DEBUG), never ids. zeep's own
  ``zeep.transports`` logger writes whole messages at DEBUG; keep it above DEBUG in production.
"""

from far_client._client import FarClient
from far_client._errors import (
    FarError,
    FarFaultError,
    FarResponseError,
    FarTimeoutError,
    FarTransportError,
    InvalidIdentifierError,
)
from far_client._model import AccountStatus, AccountType, FarSettings, Reachability, ServiceSupplier

__all__ = [
    "AccountStatus",
    "AccountType",
    "FarClient",
    "FarError",
    "FarFaultError",
    "FarResponseError",
    "FarSettings",
    "FarTimeoutError",
    "FarTransportError",
    "InvalidIdentifierError",
    "Reachability",
    "ServiceSupplier",
]
