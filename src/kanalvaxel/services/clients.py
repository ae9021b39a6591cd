"""API clients (case systems). A key is shown once at creation and stored only as a hash."""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import threading
import uuid
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

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
    def __init__(
        self,
        uow: UowFactory,
        clock: Clock,
        known_senders: Collection[str],
        *,
        remember_for: timedelta = timedelta(0),
    ) -> None:
        """`remember_for`: how long a verified key is accepted without asking the database again. A key
        revoked here is refused at once; one revoked elsewhere (`kanalvaxel clients revoke`, another
        process) within at most that time."""
        self._uow = uow
        self._clock = clock
        self._known_senders = set(known_senders)
        self._remember_for = remember_for
        # key id -> (the client as read, when to read it again). Only keys that were verified are kept, so
        # there are at most as many entries as clients.
        self._verified: dict[str, tuple[ClientRecord, datetime]] = {}
        self._verified_lock = threading.Lock()
        # Moved on by every revocation here: a lookup that began before it must not be remembered.
        self._revocations = 0

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
        with self._uow(read_only=True) as uow:
            return uow.list_clients()

    def revoke(self, name: str) -> None:
        with self._uow() as uow:
            if not uow.revoke_client(name, self._clock.now()):
                raise NotFoundError(f"no active client named {name!r}")
            uow.commit()
        with self._verified_lock:
            self._revocations += 1
            self._verified = {k: v for k, v in self._verified.items() if v[0].name != name}

    def remembered(self, api_key: str) -> ClientRecord | None:
        """The client of `api_key` if the key was verified less than `remember_for` ago (no database
        asked), else None: then ask `authenticate`. Constant-time on the secret."""
        m = _KEY.match(api_key.strip())
        if m is None:
            return None
        entry = self._verified.get(m["id"])
        if entry is None:
            return None
        client, until = entry
        if self._clock.now() >= until:
            return None
        if not hmac.compare_digest(client.key_hash, _hash(m["secret"])):
            return None
        return client

    def authenticate(self, api_key: str) -> ClientRecord | None:
        """The active client the key belongs to, or None. Constant-time on the secret."""
        known = self.remembered(api_key)
        if known is not None:
            return known
        m = _KEY.match(api_key.strip())
        if m is None:
            return None
        revocations = self._revocations
        with self._uow(read_only=True) as uow:
            client = uow.client_by_key_id(m["id"])
        if client is None or client.revoked_at is not None:
            return None
        if not hmac.compare_digest(client.key_hash, _hash(m["secret"])):
            return None
        if self._remember_for > timedelta(0):
            with self._verified_lock:
                if self._revocations == revocations:
                    self._verified[client.key_id] = (client, self._clock.now() + self._remember_for)
        return client
