"""The FaR Recipient v3 client: zeep over a mutual-TLS requests session, chunked, concurrent, cached."""

from __future__ import annotations

import logging
import re
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import FIRST_EXCEPTION, Future, ThreadPoolExecutor, wait
from contextlib import contextmanager
from datetime import UTC, datetime
from importlib import resources
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

import requests
import zeep
import zeep.exceptions
from lxml import etree
from requests.adapters import HTTPAdapter
from zeep.transports import Transport

from far_client._errors import (
    FarError,
    FarFaultError,
    FarResponseError,
    FarTimeoutError,
    FarTransportError,
    InvalidIdentifierError,
)
from far_client._model import AccountStatus, AccountType, FarSettings, Reachability, ServiceSupplier

_log = logging.getLogger("far_client")

_BINDING = "{http://minameddelanden.gov.se/Recipient}RecipientBinding-v3"
_C3 = "http://minameddelanden.gov.se/schema/Common/v3"
_WSDL = "recipient-v3.wsdl"
# r1:RecipientId: an organisation (16 + ten digits) or a person/samordningsnummer (century, month, any day).
_RECIPIENT_ID = re.compile(r"16[0-9]{10}|(18|19|20)[0-9]{2}(0[1-9]|1[0-2])[0-9]{6}")
_ORGANISATION = re.compile(r"(?:16)?([0-9]{10})")
_BACKOFF_BASE = 0.1
_BACKOFF_MAX = 2.0
# Beyond this many cached answers, expired ones are dropped before storing more.
_CACHE_PRUNE_AT = 50_000

_T = TypeVar("_T")


def _utc_now() -> datetime:
    return datetime.now(UTC)


@contextmanager
def _wsdl_path() -> Iterator[Path]:
    # The WSDL imports its schemas by relative path, so zeep needs the whole directory on disk. An ordinary
    # install has it there; a zipped one is copied out for the moment zeep parses it.
    directory = resources.files("far_client") / "wsdl"
    if isinstance(directory, Path):
        yield directory / _WSDL
        return
    with tempfile.TemporaryDirectory(prefix="far_client-wsdl-") as tmp:
        for entry in directory.iterdir():
            if entry.is_file():
                with entry.open("rb") as src, open(Path(tmp) / entry.name, "wb") as dst:
                    shutil.copyfileobj(src, dst)
        yield Path(tmp) / _WSDL


def _sender_org(raw: str) -> str:
    match = _ORGANISATION.fullmatch(raw)
    if match is None:
        raise InvalidIdentifierError(
            "avsändarens organisationsnummer ska vara 10 siffror eller 16 + 10 siffror"
        )
    return "16" + match[1]


def _recipient_id(raw: str) -> str:
    if _RECIPIENT_ID.fullmatch(raw) is None:
        # The value itself stays out of the message: it may be a personnummer.
        raise InvalidIdentifierError("mottagar-id ska vara 12 siffror (r1:RecipientId)")
    return raw


def _aware(value: datetime | None) -> datetime | None:
    if value is None:
        return None
    # FaR's timestamps carry a zone; a bare one is read as UTC rather than as this machine's local time.
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


def _optional_text(value: Any) -> str | None:
    return None if value is None else str(value)


def _account(node: Any) -> AccountStatus:
    supplier_node = node.ServiceSupplier
    supplier = None
    if supplier_node is not None:
        supplier = ServiceSupplier(
            id=str(supplier_node.Id),
            name=str(supplier_node.Name),
            service_address=str(supplier_node.ServiceAdress),
            ui_address=_optional_text(supplier_node.UIAdress),
            logo=_optional_text(supplier_node.Logo),
        )
    return AccountStatus(
        recipient_id=str(node.RecipientId),
        type=AccountType(node.Type),
        pending=bool(node.Pending),
        service_supplier=supplier,
        last_registration=_aware(node.LastRegistration),
    )


def _reachability(node: Any) -> Reachability:
    return Reachability(
        account=_account(node.AccountStatus),
        sender_accepted=bool(node.SenderAccepted),
        last_sender_accept_change=_aware(node.LastSenderAcceptChange),
    )


def _keyed(asked: Sequence[str], answers: Sequence[_T], key: Callable[[_T], str]) -> dict[str, _T]:
    by_id = {key(answer): answer for answer in answers}
    if len(by_id) != len(answers) or set(by_id) != set(asked):
        raise FarResponseError(
            f"FaR svarade om {len(by_id)} mottagare ({len(answers)} svar) men frågan gällde {len(asked)}"
        )
    return by_id


def _fault(exc: zeep.exceptions.Fault) -> FarFaultError:
    detail = exc.detail
    node = None
    if isinstance(detail, etree._Element):
        node = detail.find(f".//{{{_C3}}}applicationFault")
    if node is None:
        return FarFaultError(str(exc.message or "SOAP-fel utan detaljer"), error_code=None, call_id=None)
    code_text = node.findtext(f"{{{_C3}}}ErrorCode")
    try:
        code = int(code_text) if code_text is not None else None
    except ValueError:
        code = None
    return FarFaultError(
        node.findtext(f"{{{_C3}}}Description") or str(exc.message or ""),
        error_code=code,
        call_id=node.findtext(f"{{{_C3}}}CallId"),
    )


class FarClient:
    """A client of FaR's Recipient v3 service. Safe to share between threads; see the package docstring."""

    def __init__(
        self,
        settings: FarSettings,
        *,
        clock: Callable[[], datetime] | None = None,
        session: requests.Session | None = None,
    ) -> None:
        """Build the SOAP client once (the WSDL comes from this package, never from the network).

        ``session``: a requests session to send with, used as given (the caller sets its certificates) and
        not closed by ``close()``; by default one is made from ``settings`` with ``trust_env`` off, so
        REQUESTS_CA_BUNDLE and proxy variables cannot replace the configured CA bundle. ``clock`` returns
        an aware datetime and drives the cache's expiry."""
        self._settings = settings
        self._clock = clock or _utc_now
        self._owns_session = session is None
        if session is None:
            session = requests.Session()
            session.trust_env = False
            session.cert = (str(settings.client_certificate), str(settings.client_key))
            session.verify = str(settings.ca_bundle)
            # One pooled connection per worker; the pool (urllib3) is thread-safe, and retries are ours.
            adapter = HTTPAdapter(pool_connections=1, pool_maxsize=settings.max_concurrency, max_retries=0)
            session.mount("https://", adapter)
            session.mount("http://", adapter)
        self._session = session
        transport = Transport(  # type: ignore[no-untyped-call]
            session=session,
            timeout=settings.connect_timeout,
            operation_timeout=(settings.connect_timeout, settings.read_timeout),
        )
        zeep_settings = zeep.Settings(
            strict=True, forbid_dtd=True, forbid_entities=True, forbid_external=True
        )
        with _wsdl_path() as wsdl:
            self._zeep = zeep.Client(str(wsdl), transport=transport, settings=zeep_settings)  # type: ignore[no-untyped-call]
        self._service = self._zeep.create_service(_BINDING, settings.url)  # type: ignore[no-untyped-call]
        self._pool = ThreadPoolExecutor(max_workers=settings.max_concurrency, thread_name_prefix="far")
        self._cache: dict[tuple[str, str], tuple[datetime, Reachability]] = {}
        self._cache_lock = threading.Lock()
        self._closed = False

    # -- public -----------------------------------------------------------------------------------------

    def is_reachable(
        self, sender_organisation_number: str, recipient_ids: Sequence[str], *, bypass_cache: bool = False
    ) -> dict[str, Reachability]:
        """Ask FaR whether each recipient has a mailbox that accepts this sender.

        ``sender_organisation_number``: the sending authority's (not the relay's), 10 digits or 16 + 10.
        ``recipient_ids``: 12-digit ``r1:RecipientId`` values, any number, duplicates allowed. Returns one
        answer per distinct id. Ids are sent in chunks of at most ``chunk_size``, at most
        ``max_concurrency`` calls in flight per client. Answers are cached per (sender, recipient) for
        ``cache_ttl``, except pending accounts; ``bypass_cache`` asks FaR for all ids and refreshes the cache.
        Transient failures (FarTransportError with ``retryable``) are retried ``retries`` times per chunk.

        Raises InvalidIdentifierError before any call for a malformed sender or id; FarFaultError,
        FarTransportError/FarTimeoutError or FarResponseError when a chunk fails (answers of chunks that
        succeeded are cached all the same). Read-only and idempotent."""
        sender = _sender_org(sender_organisation_number)
        ids = list(dict.fromkeys(_recipient_id(rid) for rid in recipient_ids))
        answers: dict[str, Reachability] = {}
        to_ask = ids
        if not bypass_cache and self._settings.cache_ttl.total_seconds() > 0:
            answers = self._cached(sender, ids)
            to_ask = [rid for rid in ids if rid not in answers]
        _log.debug("FaR isReachable: %d mottagare, %d ur cache", len(ids), len(answers))

        def ask(chunk: list[str]) -> dict[str, Reachability]:
            reply = self._call("isReachable", len(chunk), senderOrgNr=sender, recipientId=chunk)
            found = _keyed(chunk, [_reachability(node) for node in reply], lambda r: r.account.recipient_id)
            self._store(sender, found)
            return found

        for part in self._in_chunks(to_ask, ask):
            answers.update(part)
        return {rid: answers[rid] for rid in ids}

    def is_registered(self, recipient_ids: Sequence[str]) -> dict[str, AccountStatus]:
        """Ask FaR for each recipient's account (whatever the sender; says nothing about opt-outs).

        Same chunking, concurrency, retries and errors as ``is_reachable``; never cached."""
        ids = list(dict.fromkeys(_recipient_id(rid) for rid in recipient_ids))
        _log.debug("FaR isRegistered: %d mottagare", len(ids))

        def ask(chunk: list[str]) -> dict[str, AccountStatus]:
            reply = self._call("isRegistered", len(chunk), recipientId=chunk)
            return _keyed(chunk, [_account(node) for node in reply], lambda a: a.recipient_id)

        answers: dict[str, AccountStatus] = {}
        for part in self._in_chunks(ids, ask):
            answers.update(part)
        return {rid: answers[rid] for rid in ids}

    def close(self) -> None:
        """Wait for calls in flight, then release the thread pool and (if ours) the HTTP session."""
        if self._closed:
            return
        self._closed = True
        self._pool.shutdown(wait=True, cancel_futures=True)
        if self._owns_session:
            self._session.close()

    def __enter__(self) -> FarClient:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    # -- internals ---------------------------------------------------------------------------------------

    def _in_chunks(self, ids: list[str], ask: Callable[[list[str]], _T]) -> list[_T]:
        size = self._settings.chunk_size
        chunks = [ids[i : i + size] for i in range(0, len(ids), size)]
        if len(chunks) <= 1:
            return [ask(chunk) for chunk in chunks]
        futures: list[Future[_T]] = [self._pool.submit(ask, chunk) for chunk in chunks]
        wait(futures, return_when=FIRST_EXCEPTION)
        for future in futures:
            future.cancel()
        failed = next((f for f in futures if f.done() and not f.cancelled() and f.exception()), None)
        if failed is not None:
            wait(futures)  # calls already running finish (and are cached) before we report
            failed.result()
        return [future.result() for future in futures]

    def _call(self, operation: str, count: int, **arguments: Any) -> list[Any]:
        attempt = 0
        while True:
            try:
                return self._call_once(operation, **arguments)
            except FarError as exc:
                if not exc.retryable or attempt >= self._settings.retries:
                    raise
                attempt += 1
                _log.warning(
                    "FaR %s för %d mottagare misslyckades (%s: %s); försök %d av %d",
                    operation,
                    count,
                    type(exc).__name__,
                    exc,
                    attempt + 1,
                    self._settings.retries + 1,
                )
                time.sleep(min(_BACKOFF_MAX, _BACKOFF_BASE * 2 ** (attempt - 1)))

    def _call_once(self, operation: str, **arguments: Any) -> list[Any]:
        try:
            reply = getattr(self._service, operation)(**arguments)
        except zeep.exceptions.Fault as exc:
            raise _fault(exc) from exc
        except zeep.exceptions.TransportError as exc:
            status = int(exc.status_code)
            if status == 200:
                raise FarResponseError("FaR svarade med något som inte är SOAP") from exc
            raise FarTransportError(
                f"FaR svarade HTTP {status} utan SOAP-fel",
                status_code=status,
                retryable=status >= 500 or status in (408, 429),
            ) from exc
        except requests.exceptions.Timeout as exc:
            raise FarTimeoutError(f"FaR svarade inte i tid: {exc}") from exc
        except requests.exceptions.RequestException as exc:
            raise FarTransportError(f"kunde inte nå FaR: {exc}") from exc
        except (zeep.exceptions.Error, etree.LxmlError, ValueError, AttributeError) as exc:
            raise FarResponseError(f"FaR:s svar gick inte att läsa: {exc}") from exc
        return list(reply or [])

    def _cached(self, sender: str, ids: list[str]) -> dict[str, Reachability]:
        now = self._clock()
        found: dict[str, Reachability] = {}
        with self._cache_lock:
            for rid in ids:
                entry = self._cache.get((sender, rid))
                if entry is None:
                    continue
                if entry[0] > now:
                    found[rid] = entry[1]
                else:
                    del self._cache[(sender, rid)]
        return found

    def _store(self, sender: str, answers: dict[str, Reachability]) -> None:
        ttl = self._settings.cache_ttl
        if ttl.total_seconds() <= 0:
            return
        expires = self._clock() + ttl
        with self._cache_lock:
            if len(self._cache) > _CACHE_PRUNE_AT:
                now = self._clock()
                for key in [k for k, (until, _) in self._cache.items() if until <= now]:
                    del self._cache[key]
            for rid, answer in answers.items():
                if answer.account.pending:
                    # A pending mailbox becomes usable at an unknown moment; ask again next time.
                    self._cache.pop((sender, rid), None)
                else:
                    self._cache[(sender, rid)] = (expires, answer)
