"""The writers' turn on a SQLite file: one holder at a time among threads and among processes, handed back
however a transaction ends, and a writer that waits too long falls back on SQLite's own lock."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import sqlalchemy as sa

from formedlare import sqlite_writer
from formedlare.sqlite_writer import WriterLock, lock_file_for
from formedlare.store import make_engine

HOLD = """
import sys, time
from pathlib import Path
from formedlare.sqlite_writer import WriterLock
lock = WriterLock(Path(sys.argv[1]))
assert lock.acquire(5)
Path(sys.argv[1] + ".held").touch()
time.sleep(float(sys.argv[2]))
Path(sys.argv[1] + ".released").touch()
lock.release()
"""


def test_another_process_holding_the_turn_makes_this_one_wait_until_it_lets_go(tmp_path: Path) -> None:
    path = tmp_path / "db-writer"
    with _hold(path, 0.8) as holder:
        lock = WriterLock(path)
        started = time.monotonic()
        assert lock.acquire(10)
        waited = time.monotonic() - started
        lock.release()
        lock.close()
        assert Path(f"{path}.released").exists()  # we got it only after the other let go
        holder.wait(timeout=10)
    assert waited >= 0.5  # it really waited for the other process (which held it 0.8 s after "held")


def test_a_writer_that_waits_too_long_gives_up_its_turn_and_falls_back(tmp_path: Path) -> None:
    path = tmp_path / "db-writer"
    with _hold(path, 1.0):
        lock = WriterLock(path)
        assert lock.acquire(0.2) is False
        assert not lock.held  # this process's turn was given back, for the next thread
        lock.close()


def test_a_process_killed_while_holding_the_turn_does_not_keep_it(tmp_path: Path) -> None:
    path = tmp_path / "db-writer"
    with _hold(path, 60) as holder:
        holder.kill()
    lock = WriterLock(path)
    assert lock.acquire(2)
    lock.release()
    lock.close()


@pytest.mark.parametrize("end", ["commit", "rollback", "error"])
def test_the_turn_is_given_back_however_a_transaction_ends(tmp_path: Path, end: str) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'relay.db'}")
    with engine.begin() as conn:
        conn.execute(sa.text("CREATE TABLE t (x INTEGER PRIMARY KEY)"))
    lock = _lock_of(engine)
    with pytest.raises(sa.exc.IntegrityError) if end == "error" else _nothing(), engine.connect() as conn:
        conn.execute(sa.text("INSERT INTO t VALUES (1)"))
        assert lock.held
        if end == "error":
            conn.execute(sa.text("INSERT INTO t VALUES (1)"))
        if end == "commit":
            conn.commit()
        else:
            conn.rollback()
    assert not lock.held
    engine.dispose()


def test_writers_in_many_threads_never_overlap_and_none_is_lost(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'relay.db'}")
    with engine.begin() as conn:
        conn.execute(sa.text("CREATE TABLE t (x INTEGER PRIMARY KEY AUTOINCREMENT, thread TEXT)"))
    inside = 0
    overlaps: list[int] = []
    guard = threading.Lock()

    def write(name: str) -> None:
        nonlocal inside
        for _ in range(40):
            with engine.begin() as conn:
                with guard:
                    inside += 1
                    if inside > 1:
                        overlaps.append(inside)
                conn.execute(sa.text("INSERT INTO t (thread) VALUES (:n)"), {"n": name})
                with guard:
                    inside -= 1

    threads = [threading.Thread(target=write, args=(f"t{i}",)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM t")).scalar_one() == 320
    assert overlaps == []
    engine.dispose()


def test_an_in_memory_database_has_no_lock_file() -> None:
    assert lock_file_for(":memory:") is None
    assert lock_file_for("/srv/kv.db") == Path("/srv/kv.db-writer")
    assert sqlite_writer.WAIT_SECONDS == 30.0


def _hold(path: Path, seconds: float) -> subprocess.Popen[bytes]:
    """A process that holds the turn on `path` for `seconds` once it printed "held"."""
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(path), str(seconds)])
    deadline = time.monotonic() + 30
    while not Path(f"{path}.held").exists():
        assert holder.poll() is None, "the holder ended"
        assert time.monotonic() < deadline, "the holder did not start"
        time.sleep(0.01)
    return holder


def _lock_of(engine: sa.Engine) -> WriterLock:
    with engine.connect() as conn:
        raw = conn.connection.dbapi_connection
        lock = getattr(raw, "writer_lock", None)
    assert isinstance(lock, WriterLock)
    return lock


class _nothing:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None
