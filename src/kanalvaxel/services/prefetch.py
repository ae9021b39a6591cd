"""Ask FaR for many waiting letters at once, before the workers decide them one by one.

A worker decides one letter at a time and asks FaR for its recipient. With thousands of letters waiting that
is thousands of calls, while FaR takes up to 1,000 recipients in one. So, now and then, the letters waiting
for their first decision are read in one query, grouped by sender (FaR's answer depends on the sender:
`SenderAccepted`), and FaR is asked for up to `batch` recipients per call. The answers land in the FaR
client's cache (`mina_meddelanden.far_cache_ttl_seconds`), where each letter's own lookup then finds them.

Nothing is decided or written here: a prefetch that fails or comes late only costs the calls it would have
saved. Recipients asked recently are not asked again for `recent`, so a pending mailbox (whose answer is
never cached) is not asked on every pass.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import defaultdict
from collections.abc import Mapping
from datetime import timedelta

from kanalvaxel.domain.errors import InvalidRecipientIdError
from kanalvaxel.domain.identity import RecipientId
from kanalvaxel.ports import Clock, RecipientRegister, SenderInfo
from kanalvaxel.services import UowFactory

log = logging.getLogger(__name__)


class RegisterPrefetch:
    def __init__(
        self,
        uow: UowFactory,
        clock: Clock,
        register: RecipientRegister,
        senders: Mapping[str, SenderInfo],
        *,
        batch: int = 1000,
        every: float = 0.5,
        recent: timedelta = timedelta(seconds=60),
    ) -> None:
        self._uow = uow
        self._clock = clock
        self._register = register
        self._senders = senders
        self._batch = batch
        self._every = every
        self._recent = recent.total_seconds()
        self._lock = threading.Lock()
        self._last = float("-inf")
        self._asked: dict[tuple[str, str], float] = {}

    def warm(self, wait: float = 2.0) -> int:
        """Prefetch, at most once per `every` seconds across all threads. A thread that finds another one
        prefetching waits up to `wait` seconds for it (its letter's answer is probably on the way), then
        goes on without: a slow FaR must not hold up letters for the other channels. Returns recipients
        asked."""
        if not self._lock.acquire(timeout=wait):
            return 0
        try:
            started = time.monotonic()
            if started - self._last < self._every:
                return 0
            self._last = started
            return self._prefetch(started)
        finally:
            self._lock.release()

    def _prefetch(self, started: float) -> int:
        with self._uow(read_only=True) as uow:
            waiting = uow.awaiting_decision(self._clock.now(), self._batch)
        self._asked = {k: t for k, t in self._asked.items() if started - t < self._recent}
        by_sender: dict[str, list[RecipientId]] = defaultdict(list)
        for sender_key, recipient in waiting:
            sender = self._senders.get(sender_key)
            if sender is None or (sender.organisation_number, recipient) in self._asked:
                continue
            try:
                by_sender[sender.organisation_number].append(RecipientId.parse(recipient))
            except InvalidRecipientIdError:
                continue
        asked = 0
        for organisation, recipients in by_sender.items():
            unique = list({r.value: r for r in recipients}.values())
            for start in range(0, len(unique), self._batch):
                chunk = unique[start : start + self._batch]
                self._register.lookup(organisation, chunk)  # never raises: failures are UNAVAILABLE
                for r in chunk:
                    self._asked[(organisation, r.value)] = started
                asked += len(chunk)
        if asked:
            log.debug("FaR prefetch: %d recipients in %.0f ms", asked, (time.monotonic() - started) * 1000)
        return asked
