"""Delivery threads: claim threads work through due distributions until stopped and hand each operator call to
that operator's own call threads.

A claim thread claims a batch of letters (``claim_batch`` of the relay's policy) in one statement, asks FaR
about them together, and for each takes one of its operator's slots and gives the call (seal,
``deliverSecure``, record) to :class:`OperatorThreads`; then it claims the next batch. It never waits on an
operator, so an operator answering after a minute holds only its own slots while the other operators' letters
flow. A claim thread that is stopped mid-batch gives back the letters it has not begun. Each
operator gets up to ``operator_concurrency`` call threads, started when first needed. The slot limit itself
is kept by the relay's store, across threads and processes alike, so an operator's calls never outnumber its
threads here.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from types import TracebackType

from formedlare.relay import Relay

log = logging.getLogger(__name__)


@dataclass
class _Lane:
    work: queue.SimpleQueue[Callable[[], None] | None] = field(default_factory=queue.SimpleQueue)
    threads: list[threading.Thread] = field(default_factory=list)
    idle: int = 0  # threads waiting for work and not yet promised any


class OperatorThreads:
    """Runs operator calls (:class:`formedlare.relay.OperatorCalls`): per operator id at most `per_operator`
    daemon threads, started when a call finds none idle. A call beyond that waits in the operator's queue
    (with the relay's slots that only happens for a moment, while a finishing thread returns to its queue).

    Daemon threads: a call still running when the process ends is abandoned, its lease expires and the letter
    is delivered again (the operator's duplicate answer then counts as delivered).
    """

    def __init__(self, per_operator: int, *, name: str = "formedlare") -> None:
        if per_operator < 1:
            raise ValueError("per_operator must be at least 1")
        self._per_operator = per_operator
        self._name = name
        self._lock = threading.Lock()
        self._done = threading.Condition(self._lock)
        self._lanes: dict[str, _Lane] = {}
        self._outstanding = 0  # calls submitted and not finished
        self._closed = False

    def submit(self, operator_id: str, call: Callable[[], None]) -> None:
        with self._lock:
            if self._closed:
                # A claim thread that outlived stop()'s timeout: the call runs, in a thread of its own.
                threading.Thread(target=call, name=f"{self._name}-{operator_id}-late", daemon=True).start()
                return
            self._outstanding += 1
            lane = self._lanes.setdefault(operator_id, _Lane())
            lane.work.put(call)
            if lane.idle > 0:
                lane.idle -= 1  # promised to this call, so the next one does not count on it too
            elif len(lane.threads) < self._per_operator:
                thread = threading.Thread(
                    target=self._run,
                    args=(lane,),
                    name=f"{self._name}-{operator_id}-{len(lane.threads)}",
                    daemon=True,
                )
                lane.threads.append(thread)
                thread.start()

    @property
    def in_flight(self) -> int:
        """Calls submitted and not finished."""
        with self._lock:
            return self._outstanding

    def close(self, timeout: float) -> bool:
        """Wait up to `timeout` seconds for the calls in flight, then let the threads end (busy ones after
        their call). True when every call had finished."""
        with self._done:
            finished = self._done.wait_for(lambda: self._outstanding == 0, timeout)
            self._closed = True
            for lane in self._lanes.values():
                for _ in lane.threads:
                    lane.work.put(None)
            self._lanes = {}
        return finished

    def _run(self, lane: _Lane) -> None:
        while True:
            call = lane.work.get()
            if call is None:
                return
            try:
                call()
            except Exception:  # the relay's calls catch their own; this keeps the thread for the next
                log.exception("operator call failed")
            with self._lock:
                self._outstanding -= 1
                if self._outstanding == 0:
                    self._done.notify_all()
                lane.idle += 1


class RelayWorker:
    """Runs :meth:`Relay.deliver_next` (a batch at a time) in `threads` daemon claim threads, with the
    operator calls in an :class:`OperatorThreads` of ``relay.policy.operator_concurrency`` threads each.

    A claim thread that finds nothing due waits `idle_seconds` (or until :meth:`stop`). An unexpected error in
    one pass is logged and the thread carries on after a pause: the leases of the letters it had not worked
    expire and they are tried again. :meth:`stop` waits (within its timeout) for the claim threads, which give
    back the letters of their batch not begun, and then for the calls in flight.
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
        self._calls: OperatorThreads | None = None

    def start(self) -> None:
        """Start the threads (again after a stop)."""
        if self._threads:
            return
        self._stopping.clear()
        self._calls = OperatorThreads(self._relay.policy.operator_concurrency, name=f"{self._name}-call")
        for number in range(self._count):
            thread = threading.Thread(target=self._run, name=f"{self._name}-{number}", daemon=True)
            thread.start()
            self._threads.append(thread)

    def stop(self, timeout: float = 30.0) -> None:
        """Stop claiming and wait up to `timeout` seconds in all for the claim threads and the calls in
        flight. A call still running then is left to finish on its own (it records while its lease holds;
        if the process ends first, the lease expires and the letter is delivered again)."""
        self._stopping.set()
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))
            if thread.is_alive():
                log.warning("delivery thread %s did not stop within %.0f s", thread.name, timeout)
        self._threads = []
        calls, self._calls = self._calls, None
        if calls is not None:
            running = calls.in_flight
            if not calls.close(max(0.0, deadline - time.monotonic())):
                log.warning(
                    "%d of %d operator calls still running after %.0f s; left to finish or to expire",
                    calls.in_flight,
                    running,
                    timeout,
                )

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
        calls = self._calls
        while not self._stopping.is_set():
            try:
                # Many due letters' FaR answers in one call, before this thread claims its next batch.
                self._relay.prefetch_reachability(every=self._idle)
                # A stop mid-batch gives the letters not begun back, rather than leaving them to their leases.
                worked = self._relay.deliver_next(calls=calls, stopping=self._stopping.is_set)
            except Exception:
                log.exception("delivery pass failed; trying again shortly")
                worked = 0
            if not worked:
                self._stopping.wait(self._idle)
