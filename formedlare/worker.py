"""Delivery threads: each one works through due distributions, one at a time, until it is stopped.

Several threads are what let one operator's slow calls sit in their own slots while the other threads keep
delivering to other operators; the per-operator limit itself is kept by the relay's store, so it holds
across threads and processes alike.
"""

from __future__ import annotations

import logging
import threading
from types import TracebackType

from formedlare.relay import Relay

log = logging.getLogger(__name__)


class RelayWorker:
    """Runs :meth:`Relay.deliver_next` in `threads` daemon threads.

    A thread that finds nothing due waits `idle_seconds` (or until :meth:`stop`). An unexpected error in one
    pass is logged and the thread carries on after a pause: the letter's lease expires and it is tried again.
    :meth:`stop` lets every thread finish the call it is in (bounded by the operator timeouts) and joins them.
    """

    def __init__(
        self, relay: Relay, *, threads: int = 2, idle_seconds: float = 0.5, name: str = "formedlare"
    ) -> None:
        if threads < 1:
            raise ValueError("threads must be at least 1")
        self._relay = relay
        self._count = threads
        self._idle = idle_seconds
        self._name = name
        self._stopping = threading.Event()
        self._threads: list[threading.Thread] = []

    def start(self) -> None:
        """Start the threads (again after a stop)."""
        if self._threads:
            return
        self._stopping.clear()
        for number in range(self._count):
            thread = threading.Thread(target=self._run, name=f"{self._name}-{number}", daemon=True)
            thread.start()
            self._threads.append(thread)

    def stop(self, timeout: float = 30.0) -> None:
        """Ask the threads to stop after their current letter and wait up to `timeout` seconds for them."""
        self._stopping.set()
        for thread in self._threads:
            thread.join(timeout)
            if thread.is_alive():
                log.warning("delivery thread %s did not stop within %.0f s", thread.name, timeout)
        self._threads = []

    @property
    def running(self) -> bool:
        return any(t.is_alive() for t in self._threads)

    def __enter__(self) -> RelayWorker:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def _run(self) -> None:
        while not self._stopping.is_set():
            try:
                worked = self._relay.deliver_next()
            except Exception:
                log.exception("delivery pass failed; trying again shortly")
                worked = False
            if not worked:
                self._stopping.wait(self._idle)
