"""`kanalvaxel worker --processes N`: child processes share the outbox, each letter is sent once, a child that
dies is started again, and stopping the parent stops every child."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
from pathlib import Path

import pytest
from sqlalchemy import select

from kanalvaxel.adapters.persistence.tables import AttemptRow
from tests.e2e.conftest import start, wait_for
from tests.e2e.test_crash import _diagnose, _finish_and_check, _published, _setup, _states, _worker_env
from tests.integration.conftest import make_letter

pytestmark = pytest.mark.slow

_STARTED = re.compile(r"worker process (\d+) started \(pid (\d+)\)")
_RUNNING = re.compile(r"^worker \S+ running$", re.M)  # what each child prints once it works


def _stop(proc: subprocess.Popen[bytes], log: Path) -> None:
    """SIGTERM and a clean exit; a parent that does not exit is killed with its children (never left on)."""
    proc.send_signal(signal.SIGTERM)
    try:
        code = proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        for pids in _children(log).values():
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        proc.kill()
        proc.wait()
        raise AssertionError(f"the parent did not stop\n{log.read_text()[-3000:]}") from None
    assert code == 0, log.read_text()[-3000:]


def _children(log: Path) -> dict[int, list[int]]:
    """Slot -> the pids it ran, in order, from the parent's log."""
    out: dict[int, list[int]] = {}
    for slot, pid in _STARTED.findall(log.read_text()):
        out.setdefault(int(slot), []).append(int(pid))
    return out


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return False
    return "\nState:\tZ" not in state


def test_two_worker_processes_share_the_work_and_send_every_letter_once(
    db_url: str, tmp_path: Path, dev_certs: Path
) -> None:
    c, _ = _setup(db_url, tmp_path, dev_certs, letters=0)
    log = tmp_path / "workers.log"
    # One thread and one item at a time per process, each send held for 0.2 s: neither process can drain
    # the queue alone before the other has claimed its share.
    env = _worker_env(
        db_url,
        tmp_path,
        dev_certs,
        KANALVAXEL_WORKER__THREADS="1",
        KANALVAXEL_WORKER__BATCH_SIZE="1",
        KANALVAXEL_WORKER__FAILPOINTS='{"before_send": 0.2}',
    )
    proc = start(["worker", "--processes", "2"], env, tmp_path, log)
    try:
        wait_for(lambda: len(_RUNNING.findall(log.read_text())) == 2, 60, "both children to run", log, proc)
        # Only now the letters: neither child can have drained the queue before the other was there.
        client = c.clients.add("processes", ["sandbox"]).client
        ids = [c.intake.submit(client, f"p{i}", f"p{i}", make_letter()).shipment.id for i in range(24)]
        try:
            wait_for(
                lambda: set(_states(c).values()) == {"DELIVERED"}, 120, "every letter delivered", log, proc
            )
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{_diagnose(c)}") from None
    finally:
        _stop(proc, log)
    children = _children(log)
    assert sorted(children) == [0, 1]
    assert all(len(p) == 1 for p in children.values())
    assert not any(_alive(p) for pids in children.values() for p in pids)  # stopped with the parent
    published = _published(tmp_path)
    assert sorted(published) == sorted(ids)  # nothing lost
    assert set(published.values()) == {1}  # nothing twice
    with c.engine.connect() as conn:
        workers = [w for (w,) in conn.execute(select(AttemptRow.worker))]
    assert len(workers) == len(ids)  # one attempt each
    pids = {int(w.split("/")[0].rsplit(":", 1)[1]) for w in workers}
    assert pids == {p for ps in children.values() for p in ps}  # both processes did a share
    c.close()


def test_a_worker_process_that_dies_is_started_again_and_nothing_is_lost_or_sent_twice(
    db_url: str, tmp_path: Path, dev_certs: Path
) -> None:
    c, ids = _setup(db_url, tmp_path, dev_certs, letters=6)
    log = tmp_path / "workers.log"
    env = _worker_env(
        db_url,
        tmp_path,
        dev_certs,
        KANALVAXEL_WORKER__THREADS="1",
        KANALVAXEL_WORKER__SHUTDOWN_GRACE_SECONDS="2",
        KANALVAXEL_WORKER__FAILPOINTS='{"after_send": 120}',  # every child stops right after its first send
    )
    proc = start(["worker", "--processes", "2"], env, tmp_path, log)
    try:
        wait_for(lambda: log.read_text().count("failpoint after_send") >= 2, 60, "both to send", log, proc)
        victim = _children(log)[0][0]
        os.kill(victim, signal.SIGKILL)
        wait_for(lambda: len(_children(log).get(0, [])) == 2, 30, "slot 0 started again", log, proc)
        assert f"(pid {victim}) ended with status -9" in log.read_text()
    finally:
        _stop(proc, log)
    assert not any(_alive(p) for pids in _children(log).values() for p in pids)
    # What the killed and the stopped children held comes back when their leases run out, once each.
    _finish_and_check(c, ids, db_url, tmp_path, dev_certs)
    c.close()


def test_children_stop_when_their_parent_is_killed(db_url: str, tmp_path: Path, dev_certs: Path) -> None:
    c, _ = _setup(db_url, tmp_path, dev_certs, letters=0)
    log = tmp_path / "workers.log"
    proc = start(["worker", "--processes", "2"], _worker_env(db_url, tmp_path, dev_certs), tmp_path, log)
    pids: list[int] = []
    try:
        wait_for(lambda: len(_RUNNING.findall(log.read_text())) == 2, 60, "both children to run", log, proc)
        pids = [p for ps in _children(log).values() for p in ps]
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
        # No orphan worker stays on (it would keep claiming letters beside a restarted parent's children).
        wait_for(lambda: not any(_alive(p) for p in pids), 30, "the children to stop", log)
        assert log.read_text().count("stopped cleanly") == 2  # a clean stop (SIGTERM), not a kill
    finally:
        for p in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(p, signal.SIGKILL)
    c.close()
