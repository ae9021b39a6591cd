"""Writers of a SQLite file take turns on a lock of their own, handed over without SQLite's sleeps.

SQLite lets one writer in and keeps the others in its busy handler, which sleeps 1, 2, 5 … 100 ms between
tries: the writer that comes next often sleeps long after the last one is done. With many threads and
processes writing short transactions (the worker's, the relay's), that waiting, not the writing, became the
limit. So a write transaction first takes, in this process, a `threading.Lock` (the next thread starts the
moment the last one ends), and its holder then takes an exclusive `flock` on a file beside the database
(``<database>-writer``), which orders the processes; a dead process's flock is released by the kernel. The
lock is held from BEGIN IMMEDIATE until the transaction ends, however it ends. A writer that does not get it
within the wait falls back to SQLite's own lock and busy timeout, which still order writers that do not take
part (the sqlite3 shell, an older version of this program).
"""

from __future__ import annotations

import fcntl
import os
import sqlite3
import threading
import time
from pathlib import Path

#: How long a writer waits for its turn before it falls back on SQLite's lock (and its busy timeout).
WAIT_SECONDS = 30.0
#: How often the holder of this process's turn tries the file lock while another process holds it.
_POLL_SECONDS = (0.0002, 0.0005, 0.001, 0.002)


class WriterLock:
    """The turn of one writer: among this process's threads, then among the processes using `path`."""

    def __init__(self, path: Path | None) -> None:
        self._lock = threading.Lock()
        self._holder: int | None = None
        self._path = path
        self._fd: int | None = None

    def acquire(self, timeout: float = WAIT_SECONDS) -> bool:
        """Wait up to `timeout` seconds for the turn; False if it did not come. A thread that holds it
        already (a second write transaction opened inside the first) does not wait: SQLite refuses that
        second one after its busy timeout, as it always has."""
        if self._holder == threading.get_ident():
            return False
        deadline = time.monotonic() + timeout
        if not self._lock.acquire(timeout=timeout):
            return False
        try:
            if not self._take_file(deadline):
                self._lock.release()
                return False
        except BaseException:
            self._lock.release()
            raise
        self._holder = threading.get_ident()
        return True

    def release(self) -> None:
        self._holder = None
        try:
            if self._fd is not None:
                fcntl.flock(self._fd, fcntl.LOCK_UN)
        finally:
            self._lock.release()

    @property
    def held(self) -> bool:
        return self._lock.locked()

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def _take_file(self, deadline: float) -> bool:
        if self._path is None:
            return True
        if self._fd is None:
            # Read-only is enough for flock, and readable by all: a lock file someone else created first
            # (an operator's `sudo kanalvaxel …`) still serves the service's own user.
            self._fd = os.open(self._path, os.O_RDONLY | os.O_CREAT | os.O_CLOEXEC, 0o644)
        for attempt in range(1_000_000_000):
            try:
                fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return True
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    return False
                time.sleep(_POLL_SECONDS[min(attempt, len(_POLL_SECONDS) - 1)])
        return False  # pragma: no cover


def lock_file_for(database: str | None) -> Path | None:
    """The lock file beside a database file; None for an in-memory database (one process only)."""
    if not database or database == ":memory:" or database.startswith("file::memory:"):
        return None
    return Path(f"{database}-writer")


class LockingConnection(sqlite3.Connection):
    """A connection that gives its writer lock back when its write transaction ends: commit, rollback (the
    pool's reset on return too) or close. `take_writer_lock` takes it before BEGIN IMMEDIATE."""

    writer_lock: WriterLock | None = None
    holds_writer_lock = False

    def take_writer_lock(self) -> None:
        """Wait for the writers' turn (at most WAIT_SECONDS; then SQLite's own lock decides)."""
        lock = self.writer_lock
        if lock is not None and not self.holds_writer_lock:
            self.holds_writer_lock = lock.acquire()

    def commit(self) -> None:
        try:
            super().commit()
        finally:
            self.release_writer_lock()

    def rollback(self) -> None:
        try:
            super().rollback()
        finally:
            self.release_writer_lock()

    def close(self) -> None:
        try:
            super().close()
        finally:
            self.release_writer_lock()

    def release_writer_lock(self) -> None:
        if self.holds_writer_lock and self.writer_lock is not None:
            self.holds_writer_lock = False
            self.writer_lock.release()
