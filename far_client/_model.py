"""The values a FaR lookup returns and the client's settings."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from pathlib import Path


@dataclass(frozen=True, slots=True)
class FarSettings:
    """How to reach FaR's Recipient v3 service (mutual TLS) and how hard to use it."""

    url: str
    client_certificate: Path
    client_key: Path
    ca_bundle: Path
    connect_timeout: float = 5.0
    read_timeout: float = 30.0
    retries: int = 2
    chunk_size: int = 1000
    max_concurrency: int = 4
    cache_ttl: timedelta = timedelta(minutes=5)

    def __post_init__(self) -> None:
        if not 1 <= self.chunk_size <= 1000:
            raise ValueError("chunk_size must be 1..1000 (the contract allows at most 1000 ids per call)")
        if self.max_concurrency < 1 or self.retries < 0:
            raise ValueError("max_concurrency must be at least 1 and retries at least 0")
        if self.connect_timeout <= 0 or self.read_timeout <= 0:
            raise ValueError("timeouts must be positive")


@dataclass(frozen=True, slots=True)
class ServiceSupplier:
    """The mailbox operator holding a recipient's mailbox; ``service_address`` takes ``deliverSecure``."""

    id: str
    name: str
    service_address: str
    ui_address: str | None = None
    logo: str | None = None


class AccountType(StrEnum):
    SECURE = "Secure"
    ANONYMOUS = "Anonymous"
    NOT = "Not"


@dataclass(frozen=True, slots=True)
class AccountStatus:
    """A recipient's account in FaR (``r1:AccountStatus``)."""

    recipient_id: str
    type: AccountType
    pending: bool
    service_supplier: ServiceSupplier | None
    last_registration: datetime | None


@dataclass(frozen=True, slots=True)
class Reachability:
    """FaR's answer about one recipient for one sender (``r1:ReachabilityStatus``)."""

    account: AccountStatus
    sender_accepted: bool
    last_sender_accept_change: datetime | None

    @property
    def has_mailbox(self) -> bool:
        """A secure mailbox exists at a known operator (it may still be pending or refuse this sender)."""
        return self.account.type is AccountType.SECURE and self.account.service_supplier is not None

    @property
    def deliverable(self) -> bool:
        """A secure delivery from this sender may be made now (mm-protocol §2.4)."""
        supplier = self.account.service_supplier
        return (
            self.has_mailbox
            and not self.account.pending
            and self.sender_accepted
            and supplier is not None
            and bool(supplier.service_address.strip())
        )
