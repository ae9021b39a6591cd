"""The worker: threads that claim outbox items and dispatch them, plus a ticker that closes print batches.

Stopping (SIGTERM) lets each thread finish the item it is sending and gives back any it has claimed but
not started; whatever a killed worker held returns to the pool when its lease runs out.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from datetime import timedelta

from kanalvaxel.bootstrap import Container
from kanalvaxel.domain.errors import UnavailableError

log = logging.getLogger(__name__)


def default_worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


class Worker:
    def __init__(self, container: Container, name: str | None = None) -> None:
        self._c = container
        self.name = name or default_worker_name()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        s = container.settings.worker
        self._lease = timedelta(seconds=s.lease_seconds)
        self._poll = s.poll_interval_seconds
        self._count = s.threads
        self._batch = s.batch_size

    def start(self) -> None:
        for i in range(self._count):
            t = threading.Thread(
                target=self._loop, args=(f"{self.name}/{i}",), name=f"worker-{i}", daemon=True
            )
            t.start()
            self._threads.append(t)
        if self._c.printing is not None:
            t = threading.Thread(target=self._ticker, name="print-batches", daemon=True)
            t.start()
            self._threads.append(t)
        if self._c.digital_mail is not None:
            self._c.digital_mail.start_relay_worker(
                self._c.settings.mina_meddelanden.relay_threads, idle_seconds=self._poll
            )
        log.info("worker %s started with %d threads", self.name, self._count)

    def stop(self, grace: float | None = None) -> None:
        """Ask every thread to stop and wait up to `grace` seconds for the ones sending."""
        self._stop.set()
        wait = self._c.settings.worker.shutdown_grace_seconds if grace is None else grace
        deadline = time.monotonic() + wait
        if self._c.digital_mail is not None:
            self._c.digital_mail.stop_relay_worker(wait)
        for t in self._threads:
            t.join(timeout=max(0.0, deadline - time.monotonic()))
        alive = [t.name for t in self._threads if t.is_alive()]
        if alive:
            log.warning(
                "worker %s stopped with threads still sending: %s (their leases will expire)",
                self.name,
                alive,
            )
        else:
            log.info("worker %s stopped cleanly", self.name)

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    def run_once(self, thread_name: str | None = None) -> int:
        """Claim a batch of due items (one statement) and work them; return how many were claimed."""
        c = self._c
        if c.prefetch is not None:
            c.prefetch.warm()  # many waiting letters' FaR answers in one call, before they are decided
        with c.uow() as uow:
            claims = uow.claim(thread_name or self.name, c.clock.now(), self._lease, self._batch)
            uow.commit()
        if not claims:
            return 0
        if self._stop.is_set():
            with c.uow() as uow:
                for claim in claims:
                    uow.release(claim)
                uow.commit()
            return len(claims)
        c.dispatcher(thread_name or self.name).process_batch(claims, self._stop.is_set)
        return len(claims)

    def _loop(self, thread_name: str) -> None:
        while not self._stop.is_set():
            try:
                worked = self.run_once(thread_name)
            except UnavailableError as exc:
                # An outage, not a bug: one line, no traceback, and a longer pause before trying again.
                log.warning(
                    "worker %s: %s (%s); trying again in %d s", thread_name, exc, exc.cause, exc.retry_after
                )
                self._stop.wait(exc.retry_after)
                worked = 0
            except Exception:
                log.exception("worker loop error; backing off")
                worked = 0
            if not worked:
                self._stop.wait(self._poll)

    def _ticker(self) -> None:
        assert self._c.printing is not None
        while not self._stop.wait(max(self._poll, 1.0)):
            try:
                self._c.printing.close_due()
            except UnavailableError as exc:
                log.warning("closing print batches: %s (%s); will try again", exc, exc.cause)
            except Exception:
                log.exception("closing print batches failed; will try again")
