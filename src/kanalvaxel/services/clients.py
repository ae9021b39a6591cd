"""API clients (case systems). A key is shown once at creation and stored only as a hash."""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import uuid
from collections.abc import Collection, Sequence
from dataclasses import dataclass

from kanalvaxel.domain.errors import ConflictError, NotFoundError, ValidationError
from kanalvaxel.ports import ClientRecord, Clock
from kanalvaxel.services import UowFactory

KEY_PREFIX = "kvx"
_KEY = re.compile(rf"^{KEY_PREFIX}_(?P<id>[0-9a-f]{{16}})_(?P<secret>[A-Za-z0-9_-]{{32,128}})$")


def _hash(secret: str) -> str:
    # The secret is 256 random bits, so a plain SHA-256 cannot be brute-forced; no slow KDF is needed.
    return hashlib.sha256(secret.encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class NewClient:
    client: ClientRecord
    api_key: str  # shown once, never stored


class ClientService:
    def __init__(self, uow: UowFactory, clock: Clock, known_senders: Collection[str]) -> None:
        self._uow = uow
        self._clock = clock
        self._known_senders = set(known_senders)

    def add(self, name: str, senders: Sequence[str]) -> NewClient:
        name = name.strip()
        if not name:
            raise ValidationError("name", "must not be empty")
        if not senders:
            raise ValidationError("senders", "name at least one sender identity the client may use")
        unknown = [s for s in senders if s not in self._known_senders]
        if unknown:
            raise ValidationError("senders", f"unknown sender identity: {', '.join(unknown)}")
        key_id = secrets.token_hex(8)
        secret = secrets.token_urlsafe(32)
        record = ClientRecord(
            id=str(uuid.uuid4()),
            name=name,
            key_id=key_id,
            key_hash=_hash(secret),
            senders=tuple(dict.fromkeys(senders)),
            created_at=self._clock.now(),
            revoked_at=None,
        )
        with self._uow() as uow:
            if uow.client_by_name(name) is not None:
                raise ConflictError(f"a client named {name!r} exists already")
            uow.add_client(record)
            uow.commit()
        return NewClient(record, f"{KEY_PREFIX}_{key_id}_{secret}")

    def list(self) -> Sequence[ClientRecord]:
        with self._uow() as uow:
            return uow.list_clients()

    def revoke(self, name: str) -> None:
        with self._uow() as uow:
            if not uow.revoke_client(name, self._clock.now()):
                raise NotFoundError(f"no active client named {name!r}")
            uow.commit()

    def authenticate(self, api_key: str) -> ClientRecord | None:
        """The active client the key belongs to, or None. Constant-time on the secret."""
        m = _KEY.match(api_key.strip())
        if m is None:
            return None
        with self._uow() as uow:
            client = uow.client_by_key_id(m["id"])
        if client is None or client.revoked_at is not None:
            return None
        if not hmac.compare_digest(client.key_hash, _hash(m["secret"])):
            return None
        return client
