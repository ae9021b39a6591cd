"""The relay (förmedlare): take a sender's signed delivery, check it, keep it, and deliver it sealed to the
recipient's mailbox operator — buffering and retrying per operator (mm-protocol §1.3, §4).

Intake (:meth:`Relay.distribute_secure`) refuses at the door whatever it cannot vouch for (the seal says
``SignaturesOK=true``): not XML, not a v3 SignedDelivery, a schema violation, a sender it does not relay for,
a signature that does not verify or chain to a trust anchor, a certificate of another organisation than
``Sender/Id``. Each refusal is a row (digest of the bytes, never the content). What it accepts is stored byte
for byte as a PENDING distribution; the same sender and message ids again give the same distribution.

Delivery (:meth:`Relay.deliver_due`, run in threads by :class:`formedlare.worker.RelayWorker`) claims due
distributions with a lease, a batch at a time (``DeliveryPolicy.claim_batch``, one ``UPDATE … WHERE id IN
(SELECT … FOR UPDATE SKIP LOCKED) RETURNING``), asks FaR about the batch with the SENDING authority's
organisation number (one lookup per sender, answers the FaR client has cached not asked again), takes the
batch's delivery slots at their operators in one transaction, and for each letter seals and POSTs
``deliverSecure`` with no database transaction open, then records the outcome only while it still holds the
lease: a lost lease writes nothing to the letter. Outcomes that end while another is being recorded are
recorded together in the next transaction (group commit); the call returns once its own is committed. Each
operator has its own queue: at most ``operator_concurrency`` calls in flight, and after a transient failure a
backoff during which only ITS letters wait. Every attempt is a row; backoff is computed from the stored
counts.

Claiming and calling are separate steps: given an :class:`OperatorCalls`, :meth:`Relay.deliver_next` hands
each call (seal, ``deliverSecure``, record) to it once the slot is taken and goes on with the batch, so the
thread that claims never waits on an operator and a slow operator holds nothing but its own slots. Without
one each call runs in the claiming thread (tests, one-off passes). A claimed letter is either worked or left
to its lease (a worker that dies, or an error in its step); a worker that is stopping gives back the letters
of its batch it has not begun.

What runs for every letter (intake, claim, slot, record, status) is SQLAlchemy Core on a connection, with
statements built once at import (or once per batch size, concurrency or dialect); the ORM session serves
only the views (:meth:`Relay.distribution_detail`, :meth:`Relay.refusals`, :meth:`Relay.operator_queues`).
A transaction on SQLite begins with the writers' turn and ``BEGIN IMMEDIATE`` (the engine's ``begin`` event
in :func:`formedlare.store.make_engine`), for a connection as for a session.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol, cast
from zoneinfo import ZoneInfo

import httpx
from sqlalchemy import (
    BindParameter,
    ColumnElement,
    Connection,
    Engine,
    Insert,
    Select,
    Table,
    Update,
    and_,
    bindparam,
    func,
    insert,
    or_,
    select,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Row
from sqlalchemy.exc import DBAPIError, IntegrityError, OperationalError
from sqlalchemy.orm import sessionmaker

from far_client import FarClient, FarError, FarSettings, Reachability
from formedlare.api import (
    DeliveryRefusedError,
    DistributionState,
    DistributionStatus,
    RelayUnavailableError,
    UnknownDistributionError,
)
from formedlare.errors import FormedlareError
from formedlare.mm import (
    MalformedXmlError,
    MmError,
    ParsedDelivery,
    SchemaViolationError,
    SignatureInvalidError,
    SignatureProblem,
    SigningIdentity,
    TrustPolicy,
    deliver_secure_request,
    ns,
    parse_xml,
    read_delivery,
    seal_delivery,
    validate,
    verify_element,
)
from formedlare.mm.xml import local_name, namespace
from formedlare.operators import (
    CallResult,
    Outcome,
    Route,
    call_deliver_secure,
    operator_http_client,
    route,
)
from formedlare.settings import RelaySettings
from formedlare.store import (
    READ_ONLY,
    RESPONSE_EXCERPT,
    AttemptRow,
    DistributionRow,
    OperatorRow,
    RefusalRow,
    ensure_schema,
    make_engine,
)

log = logging.getLogger(__name__)

#: ReceivedTime in the seal is a date (xs:date); the relay's day is the Swedish one.
RELAY_ZONE = ZoneInfo("Europe/Stockholm")

# ------------------------------------------------------------------------------------------ statements
# What the relay runs for every letter (intake, claim, slot, record, status) is built once, with bound
# parameters, and run as Core on a connection: building a statement anew, and the ORM session around it, cost
# several times running it. Parameters are named b_*, as a SET clause reserves the column names; datetime
# parameters carry their column's type, so the UTC TypeDecorator applies to them.

_DISTRIBUTIONS = cast(Table, DistributionRow.__table__)
_ATTEMPTS = cast(Table, AttemptRow.__table__)
_OPERATORS = cast(Table, OperatorRow.__table__)
_REFUSALS = cast(Table, RefusalRow.__table__)
_D = _DISTRIBUTIONS.c
_A = _ATTEMPTS.c
_O = _OPERATORS.c


def _param(table: Table, column: str, name: str | None = None) -> BindParameter[Any]:
    """A bound parameter (b_<column> unless named) of `column`'s type."""
    return bindparam(name or f"b_{column}", type_=table.c[column].type)


_INSERT_DISTRIBUTION = insert(_DISTRIBUTIONS)
_INSERT_ATTEMPT = insert(_ATTEMPTS)
_INSERT_CALL_ATTEMPT = insert(_ATTEMPTS).returning(_A.id)
_INSERT_REFUSAL = insert(_REFUSALS)
_BY_DIGEST = select(_D.id).where(_D.sha256 == bindparam("b_sha256")).limit(1)
_BY_MESSAGE_KEY = select(_D.id, _D.sha256).where(
    _D.sender_id == bindparam("b_sender"), _D.message_key == bindparam("b_key")
)
# Only what a status says: the row also holds the whole signed letter.
_STATUS = select(
    _D.id, _D.state, _D.detail, _D.operator_id, _D.operator_name, _D.attempts, _D.updated_at
).where(_D.id == bindparam("b_id"))
#: The distribution is still ours: our lease token is on it.
_OURS = (_D.id == bindparam("b_id")) & (_D.lease_token == bindparam("b_token"))
_RELEASE = (
    update(_DISTRIBUTIONS)
    .where(_D.id.in_(bindparam("b_ids", expanding=True)), _D.lease_token == bindparam("b_token"))
    .values(lease_token=None, lease_expires_at=None)
)
# Taking a slot: the operator's row (its lock orders slot-takers on PostgreSQL), its calls in flight, then the
# letter either put back in the operator's queue or counted as an attempt under the longer call lease.
_OPERATOR_FOR_UPDATE = (
    select(_O.name, _O.service_address, _O.next_attempt_at)
    .where(_O.id == bindparam("b_id"))
    .with_for_update()
)
_RENAME_OPERATOR = (
    update(_OPERATORS)
    .where(_O.id == bindparam("b_id"))
    .values(
        name=bindparam("b_name"),
        service_address=bindparam("b_address"),
        updated_at=_param(_OPERATORS, "updated_at", "b_now"),
    )
)
_IN_FLIGHT = (
    select(func.count())
    .select_from(_ATTEMPTS)
    .where(
        _A.operator_id == bindparam("b_operator"),
        _A.finished_at.is_(None),
        _A.expires_at > _param(_ATTEMPTS, "expires_at", "b_now"),
    )
)
_ROUTED = {
    "operator_id": bindparam("b_operator_id"),
    "operator_name": bindparam("b_operator_name"),
    "updated_at": _param(_DISTRIBUTIONS, "updated_at", "b_now"),
}
_PUT_BACK = (
    update(_DISTRIBUTIONS)
    .where(_OURS)
    .values(
        {
            **_ROUTED,
            "lease_token": None,
            "lease_expires_at": None,
            "next_attempt_at": _param(_DISTRIBUTIONS, "next_attempt_at", "b_wait"),
        }
    )
)
_START_CALL = (
    update(_DISTRIBUTIONS)
    .where(_OURS)
    .values(
        {
            **_ROUTED,
            "attempts": _D.attempts + 1,
            "lease_expires_at": _param(_DISTRIBUTIONS, "lease_expires_at", "b_until"),
        }
    )
)
# Recording a call.
_FINISH_ATTEMPT = (
    update(_ATTEMPTS)
    .where(_A.id == bindparam("b_id"))
    .values(
        finished_at=_param(_ATTEMPTS, "finished_at", "b_at"),
        outcome=bindparam("b_outcome"),
        http_status=bindparam("b_status"),
        outcome_unknown=_param(_ATTEMPTS, "outcome_unknown", "b_unknown"),
        response=bindparam("b_response"),
    )
)
_OPERATOR_FAILURES = select(_O.consecutive_failures).where(_O.id == bindparam("b_id"))
_OPERATOR_FAILED = (
    update(_OPERATORS)
    .where(_O.id == bindparam("b_id"))
    .values(
        consecutive_failures=bindparam("b_failures"),
        next_attempt_at=_param(_OPERATORS, "next_attempt_at", "b_next"),
        updated_at=_param(_OPERATORS, "updated_at", "b_now"),
    )
)
# Only when it was failing: an UPDATE of the operator's row after every answer made each outcome wait for the
# last one's commit on that row (PostgreSQL), and slot-taking wait for both.
_OPERATOR_ANSWERED = (
    update(_OPERATORS)
    .where(_O.id == bindparam("b_id"), or_(_O.consecutive_failures != 0, _O.next_attempt_at.is_not(None)))
    .values(
        consecutive_failures=0, next_attempt_at=None, updated_at=_param(_OPERATORS, "updated_at", "b_now")
    )
)
_MAYBE_DELIVERED = or_(_A.outcome_unknown.is_(True), _A.finished_at.is_(None))
_EARLIER_UNKNOWN = (
    select(_A.id)
    .where(
        _A.distribution_id == bindparam("b_id"),
        _A.operator_id == bindparam("b_operator"),
        _A.id != bindparam("b_attempt"),
        _MAYBE_DELIVERED,
    )
    .limit(1)
)
_OUTCOME_UNKNOWN = (
    select(_A.id)
    .where(_A.distribution_id == bindparam("b_id"), _A.operator_id.is_not(None), _MAYBE_DELIVERED)
    .limit(1)
)


def _due(now: BindParameter[Any]) -> ColumnElement[bool]:
    return and_(
        _D.state == DistributionState.PENDING.value,
        _D.next_attempt_at <= now,
        or_(_D.lease_token.is_(None), _D.lease_expires_at < now),
    )


@functools.lru_cache(maxsize=32)
def _claim_statement(limit: int, operator_concurrency: int) -> Update:
    """Lease up to `limit` due distributions in one statement: one writer's atomic UPDATE on SQLite (which
    has no FOR UPDATE), and SKIP LOCKED against the other claimers on PostgreSQL (deps-notes §5)."""
    now = _param(_DISTRIBUTIONS, "next_attempt_at", "b_now")
    blocked_by_backoff = select(_O.id).where(_O.next_attempt_at > now)
    blocked_by_slots = (
        select(_A.operator_id)
        .where(_A.finished_at.is_(None), _A.expires_at > now, _A.operator_id.is_not(None))
        .group_by(_A.operator_id)
        .having(func.count() >= operator_concurrency)
    )
    due = (
        select(_D.id)
        .where(
            _due(now),
            # A letter whose operator is slow or failing waits in that operator's queue; others pass.
            or_(
                _D.operator_id.is_(None),
                and_(_D.operator_id.not_in(blocked_by_backoff), _D.operator_id.not_in(blocked_by_slots)),
            ),
        )
        .order_by(_D.next_attempt_at, _D.received_at)
        .limit(limit)
        .with_for_update(skip_locked=True, of=_DISTRIBUTIONS)
        .scalar_subquery()
    )
    return (
        update(_DISTRIBUTIONS)
        .where(_D.id.in_(due))
        .values(
            lease_token=bindparam("b_token"),
            lease_owner=bindparam("b_owner"),
            lease_expires_at=_param(_DISTRIBUTIONS, "lease_expires_at", "b_until"),
        )
        .returning(
            _D.id,
            _D.sender_id,
            _D.recipient_id,
            _D.received_at,
            _D.attempts,
            _D.signed_delivery,
            _D.next_attempt_at,
        )
    )


@functools.lru_cache(maxsize=4)
def _due_recipients_statement(limit: int) -> Select[str, str]:
    return (
        select(_D.sender_id, _D.recipient_id)
        .where(_due(_param(_DISTRIBUTIONS, "next_attempt_at", "b_now")))
        .order_by(_D.next_attempt_at, _D.received_at)
        .limit(limit)
    )


@functools.lru_cache(maxsize=4)
def _upsert_operator_statement(dialect: str) -> Insert:
    """Insert an operator unless it is there (the parameters are the row's columns)."""
    if dialect == "postgresql":
        return postgresql.insert(_OPERATORS).on_conflict_do_nothing()
    return sqlite.insert(_OPERATORS).on_conflict_do_nothing()


@functools.lru_cache(maxsize=32)
def _finish_statement(columns: tuple[str, ...]) -> Update:
    """Set `columns` (parameters b_<column>) on the distribution while we hold its lease."""
    return update(_DISTRIBUTIONS).where(_OURS).values({c: _param(_DISTRIBUTIONS, c) for c in columns})


class RelayConfigurationError(FormedlareError):
    """The settings do not give a working relay (a missing seal identity, trust anchor, FaR or TLS file)."""


class RefusalCode:
    """The stable codes of :class:`DeliveryRefusedError` raised by :meth:`Relay.distribute_secure`. Besides
    these, a refused signature carries the :class:`formedlare.mm.SignatureProblem` value as its code
    (UNSIGNED, DIGEST_MISMATCH, CERTIFICATE_UNTRUSTED, CERTIFICATE_EXPIRED, ...)."""

    MALFORMED_XML = "MALFORMED_XML"
    NOT_SIGNED_DELIVERY = "NOT_SIGNED_DELIVERY"
    SCHEMA_VIOLATION = "SCHEMA_VIOLATION"
    SENDER_NOT_RELAYED = "SENDER_NOT_RELAYED"
    ORGANISATION_MISMATCH = "ORGANISATION_MISMATCH"

    ALL: tuple[str, ...] = (
        MALFORMED_XML,
        NOT_SIGNED_DELIVERY,
        SCHEMA_VIOLATION,
        SENDER_NOT_RELAYED,
        ORGANISATION_MISMATCH,
        *(p.value for p in SignatureProblem),
    )


class FarLookup(Protocol):
    """What the relay needs of FaR (far_client.FarClient has it)."""

    def is_reachable(
        self, sender_organisation_number: str, recipient_ids: Sequence[str]
    ) -> Mapping[str, Reachability]: ...


class OperatorCalls(Protocol):
    """Runs operator calls for :meth:`Relay.deliver_next` (:class:`formedlare.worker.OperatorThreads` has
    threads per operator). The calls it is given catch their own errors; one never run leaves its letter's
    lease to expire, after which the letter is delivered again."""

    def submit(self, operator_id: str, call: Callable[[], None]) -> None: ...


@dataclass(frozen=True, slots=True)
class DeliveryPolicy:
    """How hard and how wide the relay delivers. ``call_lease`` is the lease held while a deliverSecure call
    is running: longer than the call can take, so no other worker takes the letter meanwhile."""

    operator_concurrency: int = 4
    backoff_base: timedelta = timedelta(seconds=5)
    backoff_max: timedelta = timedelta(seconds=600)
    max_attempts: int = 20
    max_age: timedelta = timedelta(hours=72)
    lease: timedelta = timedelta(seconds=120)
    call_lease: timedelta = timedelta(seconds=300)
    #: How long a letter waits when its operator's slots are all taken.
    busy_retry: timedelta = timedelta(seconds=1)
    #: How many due letters one claim leases at once (one statement, and one FaR lookup per sender).
    claim_batch: int = 8

    @classmethod
    def from_settings(cls, settings: RelaySettings) -> DeliveryPolicy:
        lease = timedelta(seconds=settings.lease_seconds)
        # httpx's read and write timeouts apply per operation; allow both in full, plus the connect and slack.
        call = timedelta(seconds=settings.connect_timeout_seconds + 2 * settings.read_timeout_seconds + 30)
        return cls(
            operator_concurrency=settings.operator_concurrency,
            backoff_base=timedelta(seconds=settings.backoff_base_seconds),
            backoff_max=timedelta(seconds=settings.backoff_max_seconds),
            max_attempts=settings.max_attempts,
            max_age=timedelta(hours=settings.max_age_hours),
            lease=lease,
            call_lease=max(lease, call),
            claim_batch=settings.claim_batch,
        )

    def backoff(self, failures: int) -> timedelta:
        """The wait after the `failures`-th transient failure in a row: base, 2×base, 4×base, … up to max."""
        if failures <= 0:
            return timedelta(0)
        exponent: int = min(failures - 1, 30)
        wait: timedelta = self.backoff_base * (2**exponent)
        return min(wait, self.backoff_max)


@dataclass(frozen=True, slots=True)
class AttemptRecord:
    started_at: datetime
    finished_at: datetime | None
    operator_id: str | None
    outcome: str | None  # an operators.Outcome value; None while in flight (or the worker died)
    http_status: int | None
    outcome_unknown: bool
    response: str | None


@dataclass(frozen=True, slots=True)
class DistributionDetail:
    status: DistributionStatus
    sender_id: str
    recipient_id: str
    message_ids: tuple[str, ...]
    received_at: datetime
    sha256: str
    trans_id: str | None
    next_attempt_at: datetime | None  # None once DELIVERED or FAILED
    attempts: tuple[AttemptRecord, ...]


@dataclass(frozen=True, slots=True)
class Refusal:
    refused_at: datetime
    code: str
    reason: str
    sender_id: str | None
    message_ids: tuple[str, ...]
    sha256: str
    size: int


@dataclass(frozen=True, slots=True)
class OperatorQueue:
    operator_id: str | None  # None: letters not yet routed (FaR not asked yet, or it failed)
    name: str
    service_address: str | None
    pending: int
    in_flight: int
    next_attempt_at: datetime | None  # the queue's backoff: nothing goes to the operator before then
    consecutive_failures: int


#: What FaR said of one recipient: its answer, None when it gave none, or why it could not be asked.
_FarAnswer = Reachability | FarError | None


@dataclass(frozen=True, slots=True)
class _Claim:
    id: str
    token: str
    sender_id: str
    recipient_id: str
    received_at: datetime
    attempts: int
    signed_delivery: bytes


@dataclass(slots=True)
class _Outcome:
    """A call's outcome waiting to be recorded (Relay._record)."""

    claim: _Claim
    target: Route
    attempt_id: int
    result: CallResult
    now: datetime
    done: bool = False
    held: bool = False
    error: BaseException | None = None


class _Refused(Exception):
    def __init__(self, code: str, reason: str, parsed: ParsedDelivery | None = None) -> None:
        super().__init__(code)
        self.code = code
        self.reason = reason
        self.parsed = parsed


def _utc_now() -> datetime:
    return datetime.now(UTC)


class Relay:
    """The förmedlare; implements :class:`formedlare.api.RelayApi` in-process.

    Build it with :meth:`from_settings`, or directly (tests, embedding) from an engine whose schema exists,
    the seal identity, the trust policy for senders' signatures, the organisation numbers it relays for,
    a FaR lookup, an httpx client that holds the relay's client certificate towards operators, and a clock.
    Thread-safe: any number of threads may call every method. :meth:`close` releases what
    :meth:`from_settings` opened.
    """

    def __init__(
        self,
        engine: Engine,
        *,
        seal: SigningIdentity,
        trust: TrustPolicy,
        relayed_senders: Iterable[str],
        far: FarLookup,
        http: httpx.Client,
        clock: Callable[[], datetime] = _utc_now,
        policy: DeliveryPolicy | None = None,
        name: str = "formedlare",
    ) -> None:
        self._engine = engine
        #: For what only reads (status, the digest check at intake, the FaR prefetch): no writers' turn.
        self._reads = engine.execution_options(**{READ_ONLY: True})
        self._sessions = sessionmaker(engine, expire_on_commit=False)
        self._seal = seal
        self._trust = trust
        self._relayed = frozenset(s.removeprefix("16") if len(s) == 12 else s for s in relayed_senders)
        self._far = far
        self._http = http
        self._clock = clock
        self.policy = policy or DeliveryPolicy()
        self._prefetch_lock = threading.Lock()
        #: Group commit of call outcomes (_record): one recorder at a time takes all that are waiting.
        self._recording = threading.Lock()
        self._group_commit = engine.dialect.name == "sqlite"
        self._outcomes_guard = threading.Lock()
        self._outcomes: list[_Outcome] = []
        self._prefetched_at = float("-inf")
        self._asked: dict[tuple[str, str], float] = {}
        self._name = name
        self._closers: list[Callable[[], None]] = []

    @classmethod
    def from_settings(cls, settings: RelaySettings, *, clock: Callable[[], datetime] | None = None) -> Relay:
        """A relay with its own engine (schema created if missing), FaR client and operator HTTP client.
        Raises RelayConfigurationError when a needed setting or file is missing or unreadable."""
        seal = _seal_identity(settings)
        if not settings.trust_anchors:
            raise RelayConfigurationError("trust_anchors saknas: utan dem kan ingen avsändarsignatur godtas")
        if settings.far is None:
            raise RelayConfigurationError("far saknas: relayn måste kunna fråga FaR")
        if (
            settings.client_certificate is None
            or settings.client_key is None
            or settings.operator_ca_bundle is None
        ):
            raise RelayConfigurationError(
                "client_certificate, client_key och operator_ca_bundle behövs för att nå brevlådeoperatörerna"
            )
        try:
            trust = TrustPolicy.from_pem_files(*settings.trust_anchors, allow_sha1=settings.allow_sha1)
            http = operator_http_client(
                client_certificate=settings.client_certificate,
                client_key=settings.client_key,
                ca_bundle=settings.operator_ca_bundle,
                connect_timeout=settings.connect_timeout_seconds,
                read_timeout=settings.read_timeout_seconds,
                max_connections=max(64, settings.operator_concurrency * 8),
            )
        except (OSError, ValueError) as exc:
            raise RelayConfigurationError(f"kunde inte läsa certifikatfilerna: {exc}") from exc
        far_settings = settings.far
        far = FarClient(
            FarSettings(
                url=far_settings.url,
                client_certificate=far_settings.client_certificate,
                client_key=far_settings.client_key,
                ca_bundle=far_settings.ca_bundle,
                connect_timeout=far_settings.connect_timeout_seconds,
                read_timeout=far_settings.read_timeout_seconds,
                retries=far_settings.retries,
                cache_ttl=timedelta(seconds=far_settings.cache_ttl_seconds),
            ),
            clock=clock,
        )
        engine = make_engine(settings.database_url)
        ensure_schema(engine)
        relay = cls(
            engine,
            seal=seal,
            trust=trust,
            relayed_senders=settings.relayed_senders,
            far=far,
            http=http,
            clock=clock or _utc_now,
            policy=DeliveryPolicy.from_settings(settings),
        )
        relay._closers = [http.close, far.close, engine.dispose]
        if not settings.relayed_senders:
            log.warning("relayed_senders är tom: förmedlaren avvisar varje försändelse")
        return relay

    def close(self) -> None:
        """Close the clients and the engine that :meth:`from_settings` opened (nothing passed in)."""
        for closer in self._closers:
            closer()
        self._closers = []

    # ------------------------------------------------------------------------------------------ intake

    def distribute_secure(self, signed_delivery: bytes) -> str:
        """Accept one signed delivery (the ``m3:SignedDelivery`` element's bytes as signed) for delivery.

        Returns the distribution id. The same sender id and message ids again (after passing the same checks)
        return the same id and are never delivered twice. Raises DeliveryRefusedError (a refusal row is
        written first) with a :class:`RefusalCode` or SignatureProblem code and a Swedish reason, and
        RelayUnavailableError when the store cannot be reached."""
        now = self._clock()
        try:
            # The very bytes it already accepted: the same distribution, whatever changed since (a signing
            # certificate that expired meanwhile, a sender no longer relayed). Refusing the resend of a sender
            # that crashed after handing over would make it send the letter another way as well.
            with self._reads.connect() as conn:
                known = conn.execute(
                    _BY_DIGEST, {"b_sha256": hashlib.sha256(signed_delivery).hexdigest()}
                ).first()
        except OperationalError as exc:
            raise RelayUnavailableError(f"förmedlarens lager svarar inte: {exc.orig}") from exc
        if known is not None:
            return str(known.id)
        try:
            parsed = self._admit(signed_delivery, now)
        except _Refused as refused:
            self._record_refusal(signed_delivery, refused, now)
            log.info("refused a delivery: %s", refused.code)
            raise DeliveryRefusedError(refused.code, refused.reason) from None
        try:
            return self._store(signed_delivery, parsed, now)
        except OperationalError as exc:
            raise RelayUnavailableError(f"förmedlarens lager svarar inte: {exc.orig}") from exc

    def _admit(self, data: bytes, now: datetime) -> ParsedDelivery:
        try:
            element = parse_xml(data)
        except MalformedXmlError as exc:
            raise _Refused(RefusalCode.MALFORMED_XML, f"Försändelsen är inte läsbar XML: {exc}") from exc
        if namespace(element) != ns.MSG_V3 or local_name(element) != "SignedDelivery":
            raise _Refused(
                RefusalCode.NOT_SIGNED_DELIVERY,
                f"Förmedlaren tar emot en SignedDelivery (Mina meddelanden v3), inte {local_name(element)}",
            )
        if element.find(ns.qname(ns.DS, "Signature")) is None:
            # Before the schema: "not signed" tells the sender more than "Signature expected".
            raise _Refused(SignatureProblem.UNSIGNED.value, "Försändelsen är inte signerad av avsändaren")
        try:
            validate(element)
        except SchemaViolationError as exc:
            detail = "; ".join(exc.errors[:3])
            raise _Refused(
                RefusalCode.SCHEMA_VIOLATION, f"Försändelsen följer inte schemat: {detail}"
            ) from exc
        try:
            parsed = read_delivery(element)
        except MalformedXmlError as exc:
            raise _Refused(RefusalCode.SCHEMA_VIOLATION, f"Försändelsen saknar uppgifter: {exc}") from exc
        organisation = parsed.sender_id.removeprefix("16")
        if organisation not in self._relayed:
            raise _Refused(
                RefusalCode.SENDER_NOT_RELAYED,
                f"Förmedlaren förmedlar inte post från organisationsnummer {organisation}",
                parsed,
            )
        try:
            verified = verify_element(element, self._trust, at=now)
        except SignatureInvalidError as exc:
            raise _Refused(
                exc.reason.value, f"Avsändarens signatur godtas inte: {exc.detail}", parsed
            ) from exc
        if verified.organisation_number != organisation:
            raise _Refused(
                RefusalCode.ORGANISATION_MISMATCH,
                f"Signeringscertifikatet tillhör organisationsnummer "
                f"{verified.organisation_number or 'okänt'}, inte avsändaren {organisation}",
                parsed,
            )
        return parsed

    def _record_refusal(self, data: bytes, refused: _Refused, now: datetime) -> None:
        parsed = refused.parsed
        row = {
            "refused_at": now,
            "code": refused.code,
            "reason": refused.reason[:RESPONSE_EXCERPT],
            "sender_id": parsed.sender_id[:64] if parsed else None,
            "message_ids": json.dumps(list(parsed.message_ids), ensure_ascii=False) if parsed else None,
            "sha256": hashlib.sha256(data).hexdigest(),
            "size": len(data),
        }
        try:
            with self._engine.begin() as conn:
                conn.execute(_INSERT_REFUSAL, row)
        except OperationalError:
            # The refusal stands whether or not it could be written down; the caller still gets it.
            log.exception("could not record a refusal (%s)", refused.code)

    def _store(self, data: bytes, parsed: ParsedDelivery, now: datetime) -> str:
        key = _message_key(parsed.message_ids)
        digest = hashlib.sha256(data).hexdigest()
        for _ in range(2):
            try:
                with self._engine.begin() as conn:
                    existing = conn.execute(
                        _BY_MESSAGE_KEY, {"b_sender": parsed.sender_id, "b_key": key}
                    ).first()
                    if existing is not None:
                        if existing.sha256 != digest:
                            log.warning(
                                "distribution %s handed over again with other bytes; the first is kept",
                                existing.id,
                            )
                        return str(existing.id)
                    distribution_id = str(uuid.uuid4())
                    conn.execute(
                        _INSERT_DISTRIBUTION,
                        {
                            "id": distribution_id,
                            "sender_id": parsed.sender_id,
                            "message_key": key,
                            "message_ids": json.dumps(list(parsed.message_ids), ensure_ascii=False),
                            "recipient_id": parsed.recipient_id,
                            "signed_delivery": data,
                            "sha256": digest,
                            "received_at": now,
                            "state": DistributionState.PENDING.value,
                            "detail": "Mottagen av förmedlaren, väntar på leverans",
                            "attempts": 0,
                            "next_attempt_at": now,
                            "updated_at": now,
                        },
                    )
                log.info("accepted distribution %s", distribution_id)
                return distribution_id
            except IntegrityError:
                # Another thread stored the same delivery between our look and our insert: use its row.
                continue
        raise RelayUnavailableError("kunde inte spara försändelsen")

    # ------------------------------------------------------------------------------------------ status

    def check_distribution_status(self, distribution_id: str) -> DistributionStatus:
        """The current state of a distribution; ``detail`` says (in Swedish) whom it was delivered to, why it
        failed, or when the next try is. Raises UnknownDistributionError, RelayUnavailableError."""
        try:
            with self._reads.connect() as conn:
                row = conn.execute(_STATUS, {"b_id": distribution_id}).first()
        except OperationalError as exc:
            raise RelayUnavailableError(f"förmedlarens lager svarar inte: {exc.orig}") from exc
        if row is None:
            raise UnknownDistributionError(f"okänd försändelse: {distribution_id}")
        return _status(row)

    def distribution_detail(self, distribution_id: str) -> DistributionDetail:
        """Status plus every attempt, oldest first. Raises UnknownDistributionError."""
        with self._sessions() as session:
            row = session.get(DistributionRow, distribution_id)
            if row is None:
                raise UnknownDistributionError(f"okänd försändelse: {distribution_id}")
            attempts = session.scalars(
                select(AttemptRow)
                .where(AttemptRow.distribution_id == distribution_id)
                .order_by(AttemptRow.id)
            ).all()
            return DistributionDetail(
                status=_status(row),
                sender_id=row.sender_id,
                recipient_id=row.recipient_id,
                message_ids=tuple(json.loads(row.message_ids)),
                received_at=row.received_at,
                sha256=row.sha256,
                trans_id=row.trans_id,
                next_attempt_at=row.next_attempt_at if row.state == DistributionState.PENDING else None,
                attempts=tuple(
                    AttemptRecord(
                        started_at=a.started_at,
                        finished_at=a.finished_at,
                        operator_id=a.operator_id,
                        outcome=a.outcome,
                        http_status=a.http_status,
                        outcome_unknown=a.outcome_unknown,
                        response=a.response,
                    )
                    for a in attempts
                ),
            )

    def refusals(self, limit: int = 100) -> list[Refusal]:
        """The latest refusals, newest first (at most `limit`)."""
        with self._sessions() as session:
            rows = session.scalars(select(RefusalRow).order_by(RefusalRow.id.desc()).limit(limit)).all()
            return [
                Refusal(
                    refused_at=r.refused_at,
                    code=r.code,
                    reason=r.reason,
                    sender_id=r.sender_id,
                    message_ids=tuple(json.loads(r.message_ids)) if r.message_ids else (),
                    sha256=r.sha256,
                    size=r.size,
                )
                for r in rows
            ]

    def operator_queues(self) -> list[OperatorQueue]:
        """Per operator: PENDING letters routed to it, deliverSecure calls in flight, the queue's backoff.
        Letters not routed yet come last, under operator_id None."""
        now = self._clock()
        pending_state = DistributionState.PENDING.value
        with self._sessions() as session:
            pending: dict[str | None, int] = {
                operator: count
                for operator, count in session.execute(
                    select(DistributionRow.operator_id, func.count())
                    .where(DistributionRow.state == pending_state)
                    .group_by(DistributionRow.operator_id)
                )
            }
            in_flight: dict[str | None, int] = {
                operator: count
                for operator, count in session.execute(
                    select(AttemptRow.operator_id, func.count())
                    .where(_in_flight(now), AttemptRow.operator_id.is_not(None))
                    .group_by(AttemptRow.operator_id)
                )
            }
            queues = [
                OperatorQueue(
                    operator_id=op.id,
                    name=op.name,
                    service_address=op.service_address,
                    pending=pending.get(op.id, 0),
                    in_flight=in_flight.get(op.id, 0),
                    next_attempt_at=op.next_attempt_at
                    if op.next_attempt_at and op.next_attempt_at > now
                    else None,
                    consecutive_failures=op.consecutive_failures,
                )
                for op in session.scalars(select(OperatorRow).order_by(OperatorRow.name)).all()
            ]
        unrouted = pending.get(None, 0)
        if unrouted:
            queues.append(OperatorQueue(None, "Ej dirigerade", None, unrouted, 0, None, 0))
        return queues

    # ------------------------------------------------------------------------------------------ delivery

    def prefetch_reachability(self, *, every: float = 0.5, limit: int = 1000, wait: float = 2.0) -> int:
        """Ask FaR, in one call per sender for up to 1,000 recipients, about the distributions that are due,
        so that each one's own lookup (in `deliver_next`) finds its answer in the FaR client's cache.

        At most once per `every` seconds across threads; a thread that finds another prefetching waits up to
        `wait` seconds, then goes on. Recipients asked in the last minute are not asked again (a pending
        account is never cached). Read-only: a failed or late prefetch only costs the calls it would have
        saved. Returns the number of recipients asked."""
        if not self._prefetch_lock.acquire(timeout=wait):
            return 0
        try:
            started = time.monotonic()
            if started - self._prefetched_at < every:
                return 0
            self._prefetched_at = started
            now = self._clock()
            with self._reads.connect() as conn:
                rows = conn.execute(_due_recipients_statement(limit), {"b_now": now}).all()
            self._asked = {k: t for k, t in self._asked.items() if started - t < 60}
            by_sender: dict[str, list[str]] = {}
            for sender_id, recipient_id in rows:
                organisation = sender_id.removeprefix("16")
                if (organisation, recipient_id) not in self._asked:
                    by_sender.setdefault(organisation, []).append(recipient_id)
            asked = 0
            for organisation, ids in by_sender.items():
                unique = list(dict.fromkeys(ids))
                try:
                    self._far.is_reachable(organisation, unique)
                except FarError as exc:
                    log.info("FaR prefetch for %d recipients failed: %s", len(unique), type(exc).__name__)
                    continue
                for rid in unique:
                    self._asked[(organisation, rid)] = started
                asked += len(unique)
            return asked
        finally:
            self._prefetch_lock.release()

    def deliver_due(
        self, now: datetime | None = None, *, limit: int = 100, calls: OperatorCalls | None = None
    ) -> int:
        """One pass: claim due distributions in batches (``policy.claim_batch``) and work through each batch
        until none is due (or `limit`).

        `now` fixes the time of the whole pass (tests); by default the clock is read at each step. Returns the
        number of distributions worked on (delivered, failed, retried later, or put back because their
        operator had no free slot; with `calls`, also those whose call was handed over). A worker that dies
        mid-call leaves its lease to expire; the next pass then delivers again, and the operator's duplicate
        answer counts as delivered."""
        done = 0
        while done < limit:
            worked = self.deliver_next(now, calls=calls, batch=min(self.policy.claim_batch, limit - done))
            if not worked:
                break
            done += worked
        return done

    def deliver_next(
        self,
        now: datetime | None = None,
        *,
        calls: OperatorCalls | None = None,
        batch: int | None = None,
        stopping: Callable[[], bool] | None = None,
    ) -> int:
        """Claim up to `batch` (default ``policy.claim_batch``) due distributions in one statement and work on
        each in turn; returns how many were worked on, 0 when none was due.

        The batch's recipients are looked up in FaR together, one call per sender (answers the FaR client
        has cached are not asked again). With `calls`, each operator call (once its slot is taken) is handed
        to it and the next letter follows at once; without, each call runs here and is recorded before the
        next letter. Once `stopping()` is true, the letters not begun are given back (their leases cleared)
        and not counted. A letter whose work raises is logged and left to its lease; an error of the store
        ends the batch (raised), the rest of it left to their leases as well."""
        clock: Callable[[], datetime] = (lambda: now) if now is not None else self._clock
        claims = self._claim(clock(), max(1, batch or self.policy.claim_batch))
        if not claims:
            return 0
        answers = self._reachability([c for c in claims if not self._exhausted(c, clock())])
        routed: list[tuple[_Claim, Route]] = []
        rest: Sequence[_Claim] = ()
        for index, claim in enumerate(claims):
            if stopping is not None and stopping():
                rest = claims[index:]
                break
            try:
                target = self._route(claim, answers, clock)
            except DBAPIError:
                raise
            except Exception:
                log.exception("distribution %s: delivery failed; tried again once its lease ends", claim.id)
                continue
            if target is not None:
                routed.append((claim, target))
        if rest:
            self._release(rest)
        if calls is None:
            # One after the other, each call ended before the next slot is taken: a batch larger than its
            # operator's slots is delivered in full.
            for one in routed:
                for claim, target, attempt_id in self._take_slots([one], clock):
                    self._call(claim, target, attempt_id, clock)
            return len(claims) - len(rest)
        for claim, target, attempt_id in self._take_slots(routed, clock):
            # The slot is ours, so the operator's calls never outnumber its slots (in any process): they can
            # run side by side while this thread claims letters for other operators.
            calls.submit(
                target.operator_id,
                functools.partial(self._handed_over_call, claim, target, attempt_id, clock),
            )
        return len(claims) - len(rest)

    def _claim(self, now: datetime, limit: int) -> list[_Claim]:
        token = str(uuid.uuid4())
        params = {
            "b_now": now,
            "b_token": token,
            "b_owner": self._name[:100],
            "b_until": now + self.policy.lease,
        }
        with self._engine.begin() as conn:
            claimed = conn.execute(_claim_statement(limit, self.policy.operator_concurrency), params).all()
        # RETURNING gives no order (PostgreSQL): the batch is worked in the order the letters are due.
        rows = sorted(claimed, key=lambda r: (r.next_attempt_at, r.received_at))
        return [
            _Claim(r.id, token, r.sender_id, r.recipient_id, r.received_at, r.attempts, r.signed_delivery)
            for r in rows
        ]

    def _release(self, claims: Sequence[_Claim]) -> None:
        """Give back letters claimed and not begun: due again at once, for this worker or another."""
        by_token: dict[str, list[str]] = {}
        for claim in claims:
            by_token.setdefault(claim.token, []).append(claim.id)
        with self._engine.begin() as conn:
            for token, ids in by_token.items():
                conn.execute(_RELEASE, {"b_ids": ids, "b_token": token})
        log.info("gave back %d claimed distribution(s) untouched", len(claims))

    def _exhausted(self, claim: _Claim, now: datetime) -> bool:
        """Out of attempts or too old: given up unless an earlier call may have delivered it."""
        return claim.attempts >= self.policy.max_attempts or now - claim.received_at > self.policy.max_age

    def _reachability(self, claims: Sequence[_Claim]) -> dict[tuple[str, str], _FarAnswer]:
        """FaR's answers for these letters, keyed (sender organisation, recipient): one lookup per sender."""
        by_sender: dict[str, list[str]] = {}
        for claim in claims:
            by_sender.setdefault(claim.sender_id.removeprefix("16"), []).append(claim.recipient_id)
        found: dict[tuple[str, str], _FarAnswer] = {}
        for organisation, ids in by_sender.items():
            for recipient_id, answer in self._ask_far(organisation, list(dict.fromkeys(ids))).items():
                found[(organisation, recipient_id)] = answer
        return found

    def _ask_far(self, organisation: str, recipient_ids: list[str]) -> dict[str, _FarAnswer]:
        try:
            answers = self._far.is_reachable(organisation, recipient_ids)
        except FarError as exc:
            if exc.retryable or len(recipient_ids) == 1:
                # FaR down, slow or confused is FaR's problem, not the letters': all try again later.
                return dict.fromkeys(recipient_ids, exc)
            # A fault, an answer that does not fit, an id FaR cannot carry: perhaps one recipient's doing, so
            # each is asked alone and one letter cannot hold up the others.
            found: dict[str, _FarAnswer] = {}
            for recipient_id in recipient_ids:
                found |= self._ask_far(organisation, [recipient_id])
            return found
        return {recipient_id: answers.get(recipient_id) for recipient_id in recipient_ids}

    def _route(
        self, claim: _Claim, answers: Mapping[tuple[str, str], _FarAnswer], clock: Callable[[], datetime]
    ) -> Route | None:
        """The operator to call for this letter; None when it came to rest without a call (given up, FaR
        could not be asked, no mailbox), which is then recorded."""
        now = clock()
        if self._exhausted(claim, now) and not self._outcome_unknown(claim.id):
            self._give_up(claim, now)
            return None
        key = (claim.sender_id.removeprefix("16"), claim.recipient_id)
        answer = answers[key] if key in answers else self._ask_far(key[0], [key[1]])[key[1]]
        if isinstance(answer, FarError):
            self._far_unavailable(claim, clock(), answer)
            return None
        target = route(answer)
        if isinstance(target, str):
            self._unreachable(claim, clock(), target)
            return None
        return target

    def _handed_over_call(
        self, claim: _Claim, target: Route, attempt_id: int, clock: Callable[[], datetime]
    ) -> None:
        try:
            self._call(claim, target, attempt_id, clock)
        except Exception:
            # Nothing recorded (the store failed?): the lease expires and the letter is delivered again; the
            # unfinished attempt makes the operator's duplicate answer count as delivered.
            log.exception("distribution %s: the call to %s failed unrecorded", claim.id, target.operator_name)

    def _call(self, claim: _Claim, target: Route, attempt_id: int, clock: Callable[[], datetime]) -> None:
        """Seal, call the operator and record the outcome (under the lease) for a slot already taken."""
        try:
            sealed = seal_delivery(
                self._seal,
                claim.signed_delivery,
                received=claim.received_at.astimezone(RELAY_ZONE).date(),
                signatures_ok=True,
            )
            envelope = deliver_secure_request(sealed)
        except MmError as exc:
            # Verified at intake, so this is our bug or a corrupted row; retrying cannot help.
            result = CallResult(Outcome.FAULT, None, f"kunde inte förseglas: {exc}", False, str(exc))
        else:
            result = call_deliver_secure(self._http, target.service_address, envelope)
        self._record(claim, target, attempt_id, result, clock())

    def _take_slots(
        self, routed: Sequence[tuple[_Claim, Route]], clock: Callable[[], datetime]
    ) -> list[tuple[_Claim, Route, int]]:
        """Route the letters to their operators and start an attempt for each whose operator has a free slot
        and is not in backoff, in one transaction. Returns the letters whose slot was taken, with their
        attempts; the others lost their lease or were put back in their operator's queue."""
        if not routed:
            return []
        taken: list[tuple[_Claim, Route, int]] = []
        with self._engine.begin() as conn:
            operators = {target.operator_id: target for _, target in routed}
            locked: dict[str, Row[*tuple[Any, ...]]] = {}
            # In the order of their ids, as the recording of outcomes does: two transactions that lock the
            # same operators never wait for each other in a circle (PostgreSQL).
            for operator_id in sorted(operators):
                target = operators[operator_id]
                conn.execute(
                    _upsert_operator_statement(conn.dialect.name),
                    {
                        "id": target.operator_id,
                        "name": target.operator_name,
                        "service_address": target.service_address,
                        "consecutive_failures": 0,
                        "updated_at": clock(),
                    },
                )
                # The row lock serialises slot-taking per operator on PostgreSQL (SQLite has one writer).
                locked[operator_id] = conn.execute(_OPERATOR_FOR_UPDATE, {"b_id": operator_id}).one()
            # Read the time only now that we hold the locks, so an attempt never seems to start before the
            # one whose slot it took had finished.
            now = clock()
            for operator_id, operator in locked.items():
                target = operators[operator_id]
                if (
                    operator.name != target.operator_name
                    or operator.service_address != target.service_address
                ):
                    conn.execute(
                        _RENAME_OPERATOR,
                        {
                            "b_id": target.operator_id,
                            "b_name": target.operator_name,
                            "b_address": target.service_address,
                            "b_now": now,
                        },
                    )
            for claim, target in routed:
                attempt_id = self._take_slot(conn, claim, target, locked[target.operator_id], now)
                if attempt_id is not None:
                    taken.append((claim, target, attempt_id))
        return taken

    def _take_slot(
        self, conn: Connection, claim: _Claim, target: Route, operator: Row[*tuple[Any, ...]], now: datetime
    ) -> int | None:
        """Within `_take_slots`' transaction (the operator's row locked): start an attempt if the operator
        has a free slot and is not in backoff. None: lease lost, or the letter was put back in the queue."""
        in_flight = conn.execute(_IN_FLIGHT, {"b_operator": target.operator_id, "b_now": now}).scalar_one()
        wait_until: datetime | None = None
        if operator.next_attempt_at is not None and operator.next_attempt_at > now:
            wait_until = operator.next_attempt_at
        elif in_flight >= self.policy.operator_concurrency:
            wait_until = now + self.policy.busy_retry
        routed = {
            "b_id": claim.id,
            "b_token": claim.token,
            "b_operator_id": target.operator_id,
            "b_operator_name": target.operator_name,
            "b_now": now,
        }
        if wait_until is not None:
            conn.execute(_PUT_BACK, routed | {"b_wait": wait_until})
            return None
        until = now + self.policy.call_lease
        if conn.execute(_START_CALL, routed | {"b_until": until}).rowcount != 1:
            return None
        attempt_id: int = conn.execute(
            _INSERT_CALL_ATTEMPT,
            {
                "distribution_id": claim.id,
                "operator_id": target.operator_id,
                "lease_token": claim.token,
                "started_at": now,
                "expires_at": until,
                "outcome_unknown": False,
            },
        ).scalar_one()
        return attempt_id

    def _record(
        self, claim: _Claim, target: Route, attempt_id: int, result: CallResult, now: datetime
    ) -> None:
        """Record a call's outcome while the lease holds, and return once it is committed.

        On SQLite, outcomes that arrive while another thread is recording are written by the next recorder
        in one transaction (group commit): the operator calls of a busy relay end many at a time, and each
        transaction waits its turn among all the writers. Each outcome has a savepoint of its own, so one that
        cannot be written fails alone; a transaction that fails fails every outcome in it, and each letter
        then waits for its lease, as after a crash. PostgreSQL has no single writer: each outcome is recorded
        in a transaction of its own, so a slow one (a row lock, a stalled connection) holds up only itself."""
        mine = _Outcome(claim, target, attempt_id, result, now)
        if not self._group_commit:
            with self._engine.begin() as conn:
                mine.held = self._record_in(conn, mine)
        else:
            with self._outcomes_guard:
                self._outcomes.append(mine)
            with self._recording:
                if not mine.done:
                    with self._outcomes_guard:
                        group, self._outcomes = self._outcomes, []
                    self._record_group(group)
            if mine.error is not None:
                raise RelayUnavailableError(f"utfallet kunde inte sparas: {mine.error}") from mine.error
        attempts = claim.attempts + 1
        if mine.held:
            log.info(
                "distribution %s: attempt %d to %s -> %s",
                claim.id,
                attempts,
                target.operator_name,
                result.outcome.value,
            )
        else:
            log.warning("distribution %s: lease lost before recording %s", claim.id, result.outcome.value)

    def _record_group(self, group: Sequence[_Outcome]) -> None:
        """Record `group` in one transaction, each outcome in a savepoint; every one is `done` after."""
        try:
            # Operators in the order of their ids, as slots are taken (no circular waits).
            with self._engine.begin() as conn:
                for item in sorted(group, key=lambda o: o.target.operator_id):
                    try:
                        with conn.begin_nested():
                            item.held = self._record_in(conn, item)
                    except DBAPIError as exc:
                        if exc.connection_invalidated:
                            raise
                        item.error = exc
                    except Exception as exc:
                        item.error = exc
        except BaseException as exc:
            for item in group:
                item.error = item.error or exc
            raise
        finally:
            for item in group:
                item.done = True

    def _record_in(self, conn: Connection, outcome: _Outcome) -> bool:
        """One outcome's writes in the recording transaction: the attempt's end and the operator's state
        always, the letter's outcome only while its lease holds (False: the lease was lost)."""
        claim, target, attempt_id, result, now = (
            outcome.claim,
            outcome.target,
            outcome.attempt_id,
            outcome.result,
            outcome.now,
        )
        name = target.operator_name
        conn.execute(
            _FINISH_ATTEMPT,
            {
                "b_id": attempt_id,
                "b_at": now,
                "b_outcome": result.outcome.value,
                "b_status": result.http_status,
                "b_unknown": result.outcome_unknown,
                "b_response": result.excerpt[:RESPONSE_EXCERPT],
            },
        )
        if result.outcome is Outcome.TRANSIENT:
            failures = conn.execute(_OPERATOR_FAILURES, {"b_id": target.operator_id}).scalar_one() + 1
            conn.execute(
                _OPERATOR_FAILED,
                {
                    "b_id": target.operator_id,
                    "b_failures": failures,
                    "b_next": now + self.policy.backoff(failures),
                    "b_now": now,
                },
            )
        else:
            # Any clear answer shows the operator is up: its queue may flow again.
            conn.execute(_OPERATOR_ANSWERED, {"b_id": target.operator_id, "b_now": now})
        attempts = claim.attempts + 1
        if result.outcome is Outcome.DELIVERED:
            values = _final(DistributionState.DELIVERED, f"Levererad till {name}", now)
            values["trans_id"] = result.trans_id[:256] if result.trans_id is not None else None
        elif result.outcome is Outcome.DUPLICATE and self._earlier_unknown(
            conn, claim.id, target, attempt_id
        ):
            values = _final(
                DistributionState.DELIVERED,
                f"Levererad till {name} (operatören hade den redan från ett tidigare försök)",
                now,
            )
        elif result.outcome in (Outcome.DUPLICATE, Outcome.FAULT, Outcome.NOT_DELIVERED):
            values = _final(
                DistributionState.FAILED,
                f"Brevlådeoperatören {name} tog inte emot försändelsen: {result.description}",
                now,
            )
        else:
            values = self._retry_values(claim, attempts, now, f"{name}: {result.description}", conn)
        return self._finish(conn, claim, values)

    @staticmethod
    def _earlier_unknown(conn: Connection, distribution_id: str, target: Route, attempt_id: int) -> bool:
        """Whether an earlier call to this operator may have delivered the letter: its answer was lost or
        unclear, or the worker making it died before recording anything."""
        params = {"b_id": distribution_id, "b_operator": target.operator_id, "b_attempt": attempt_id}
        found = conn.execute(_EARLIER_UNKNOWN, params).first()
        return found is not None

    def _outcome_unknown(self, distribution_id: str, conn: Connection | None = None) -> bool:
        """Whether some earlier call may have delivered the letter (its answer was lost, or its worker died).

        Such a letter is never given up as FAILED: the sender would then send it another way, and the
        recipient could get it twice. It is retried (at the longest backoff) until an operator answers; a
        duplicate answer then means DELIVERED.
        """
        if conn is not None:
            return conn.execute(_OUTCOME_UNKNOWN, {"b_id": distribution_id}).first() is not None
        with self._reads.connect() as own:
            return own.execute(_OUTCOME_UNKNOWN, {"b_id": distribution_id}).first() is not None

    def _pending_unknown(self, now: datetime, why: str) -> dict[str, object]:
        next_at = now + self.policy.backoff_max
        return {
            "state": DistributionState.PENDING.value,
            "detail": (
                "Ett tidigare försök kan ha levererat försändelsen (svaret kom aldrig fram); försöker "
                f"tills operatören svarar. Nytt försök {next_at.astimezone(RELAY_ZONE):%Y-%m-%d %H:%M}. "
                f"Senast: {why}"
            )[:2000],
            "next_attempt_at": next_at,
            "lease_token": None,
            "lease_expires_at": None,
            "updated_at": now,
        }

    def _retry_values(
        self, claim: _Claim, attempts: int, now: datetime, why: str, conn: Connection
    ) -> dict[str, object]:
        next_at = now + self.policy.backoff(attempts)
        exhausted = attempts >= self.policy.max_attempts or next_at - claim.received_at > self.policy.max_age
        if exhausted and self._outcome_unknown(claim.id, conn):
            return self._pending_unknown(now, why)
        if attempts >= self.policy.max_attempts:
            return _final(
                DistributionState.FAILED, f"Kunde inte levereras efter {attempts} försök. Senast: {why}", now
            )
        if next_at - claim.received_at > self.policy.max_age:
            hours = self.policy.max_age.total_seconds() / 3600
            return _final(
                DistributionState.FAILED, f"Kunde inte levereras inom {hours:g} timmar. Senast: {why}", now
            )
        return {
            "state": DistributionState.PENDING.value,
            "detail": f"Nytt försök {next_at.astimezone(RELAY_ZONE):%Y-%m-%d %H:%M:%S}. Senast: {why}"[:2000],
            "next_attempt_at": next_at,
            "lease_token": None,
            "lease_expires_at": None,
            "updated_at": now,
        }

    @staticmethod
    def _add_no_call_attempt(
        conn: Connection, claim: _Claim, now: datetime, outcome: Outcome, response: str
    ) -> None:
        """An attempt that ended before any operator was called (FaR could not be asked, or said no)."""
        conn.execute(
            _INSERT_ATTEMPT,
            {
                "distribution_id": claim.id,
                "operator_id": None,
                "lease_token": claim.token,
                "started_at": now,
                "expires_at": now,
                "finished_at": now,
                "outcome": outcome.value,
                "outcome_unknown": False,
                "response": response[:RESPONSE_EXCERPT],
            },
        )

    def _far_unavailable(self, claim: _Claim, now: datetime, exc: FarError) -> None:
        with self._engine.begin() as conn:
            attempts = claim.attempts + 1
            values = self._retry_values(
                claim, attempts, now, f"FaR gick inte att fråga ({type(exc).__name__})", conn
            )
            values["attempts"] = attempts
            held = self._finish(conn, claim, values)
            if held:  # a lost lease writes nothing: the letter is another worker's now
                self._add_no_call_attempt(conn, claim, now, Outcome.FAR_UNAVAILABLE, str(exc))
        log.warning(
            "distribution %s: FaR unavailable (%s); lease held: %s", claim.id, type(exc).__name__, held
        )

    def _unreachable(self, claim: _Claim, now: datetime, reason: str) -> None:
        with self._engine.begin() as conn:
            if self._outcome_unknown(claim.id, conn):
                # FaR changed its answer after a call whose result we never learnt: the operator may have
                # the letter, so it is not failed (the sender would send it again another way).
                values = self._pending_unknown(now, reason)
            else:
                values = _final(DistributionState.FAILED, reason, now)
            values["attempts"] = claim.attempts + 1
            if self._finish(conn, claim, values):
                self._add_no_call_attempt(conn, claim, now, Outcome.UNREACHABLE, reason)
        log.info("distribution %s: recipient not reachable digitally", claim.id)

    def _give_up(self, claim: _Claim, now: datetime) -> None:
        hours = self.policy.max_age.total_seconds() / 3600
        reason = (
            f"Kunde inte levereras efter {claim.attempts} försök"
            if claim.attempts >= self.policy.max_attempts
            else f"Kunde inte levereras inom {hours:g} timmar"
        )
        with self._engine.begin() as conn:
            self._finish(conn, claim, _final(DistributionState.FAILED, reason, now))

    @staticmethod
    def _finish(conn: Connection, claim: _Claim, values: Mapping[str, object]) -> bool:
        """Write the distribution's outcome if we still hold its lease; False (nothing written) otherwise."""
        params: dict[str, object] = {f"b_{column}": value for column, value in values.items()}
        params["b_id"] = claim.id
        params["b_token"] = claim.token
        return conn.execute(_finish_statement(tuple(values)), params).rowcount == 1


def _final(state: DistributionState, detail: str, now: datetime) -> dict[str, object]:
    return {
        "state": state.value,
        "detail": detail[:2000],
        "lease_token": None,
        "lease_expires_at": None,
        "updated_at": now,
        "finished_at": now,
    }


def _in_flight(now: datetime) -> ColumnElement[bool]:
    return and_(AttemptRow.finished_at.is_(None), AttemptRow.expires_at > now)


def _status(row: DistributionRow | Row[*tuple[Any, ...]]) -> DistributionStatus:
    return DistributionStatus(
        distribution_id=row.id,
        state=DistributionState(row.state),
        detail=row.detail,
        operator_id=row.operator_id,
        operator_name=row.operator_name,
        attempts=row.attempts,
        updated_at=row.updated_at,
    )


def _message_key(message_ids: Sequence[str]) -> str:
    return hashlib.sha256("\x1f".join(message_ids).encode("utf-8")).hexdigest()


def _seal_identity(settings: RelaySettings) -> SigningIdentity:
    password = settings.seal_key_password.get_secret_value().encode() if settings.seal_key_password else None
    try:
        if settings.seal_pkcs12 is not None:
            return SigningIdentity.from_pkcs12(settings.seal_pkcs12, password)
        if settings.seal_certificate is not None and settings.seal_key is not None:
            return SigningIdentity.from_pem(settings.seal_certificate, settings.seal_key, password)
    except (OSError, MmError) as exc:
        raise RelayConfigurationError(f"förseglingsidentiteten kan inte läsas: {exc}") from exc
    raise RelayConfigurationError("seal_certificate + seal_key eller seal_pkcs12 saknas")


__all__ = [
    "AttemptRecord",
    "DeliveryPolicy",
    "DistributionDetail",
    "FarLookup",
    "OperatorCalls",
    "OperatorQueue",
    "Refusal",
    "RefusalCode",
    "Relay",
    "RelayConfigurationError",
]
