"""Dispatch alone, one worker process against two: N letters are put in the outbox first (through the intake
service, as the API would), then `kanalvaxel worker --processes P` works them until every one is final.

The same letters as bench/volume.py (60 % to recipients with a mailbox: signed, relayed by the embedded relay
and delivered to the operator simulators; the rest rendered for print), on SQLite or PostgreSQL, the sandbox's
simulators running in the worker's parent process. Each P in `--processes` (default 1,2) gets a fresh
database with the same letters. Prints, per P: wall time, letters/s, CPU seconds of the whole process tree
per letter and peak RSS of the tree; then the speed-up of each P over the first.
Usage (from the repo root): python bench/dispatch.py [--letters 3000] [--database URL] [--processes 1,2]
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path

import sqlalchemy as sa

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench._service import tree_rss, wait_until_final  # noqa: E402
from bench.volume import WITH_MAILBOX, recipients  # noqa: E402
from tests.e2e.conftest import process_env, start  # noqa: E402


def tree_cpu(pid: int) -> float:
    """User + system CPU seconds of `pid` and its live descendants (clock ticks from /proc)."""
    tick = os.sysconf("SC_CLK_TCK")
    total, todo = 0.0, [pid]
    while todo:
        p = todo.pop()
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / tick  # utime, stime
            for task in Path(f"/proc/{p}/task").iterdir():
                todo.extend(int(c) for c in (task / "children").read_text().split())
        except (FileNotFoundError, ProcessLookupError):
            continue
    return total


def reset_database(url: str) -> None:
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        conn.execute(sa.text("DROP SCHEMA public CASCADE"))
        conn.execute(sa.text("CREATE SCHEMA public"))
    engine.dispose()


def prefill(n: int, db: str, root: Path, certs: Path) -> None:
    from kanalvaxel.bootstrap import build
    from kanalvaxel.config import load_settings
    from tests.integration.conftest import make_letter

    settings = load_settings(
        database={"url": db},
        print={"spool_dir": str(root / "spool")},
        var_dir=str(root / "var"),
        dev_certs_dir=str(certs),
        mina_meddelanden={"enabled": False},
        email={"enabled": False},
        sms={"enabled": False},
    )
    c = build(settings, outside_world=False)
    c.migrate()
    client = c.clients.add("bench", ["sandbox"]).client
    for i, rid in enumerate(recipients(n)):
        c.intake.submit(client, f"k{i}", f"h{i}", make_letter(recipient=rid, subject=f"Beslut {i}"))
    c.close()


def run(
    n: int, processes: int, threads: int, database: str | None, tmp: Path, certs: Path
) -> dict[str, float]:
    root = tmp / f"p{processes}"
    root.mkdir()
    db = database or f"sqlite:///{root / 'kv.db'}"
    if database:
        reset_database(database)
    prefill(n, db, root, certs)
    env = process_env(
        db,
        root,
        certs,
        KANALVAXEL_MINA_MEDDELANDEN__ENABLED="true",
        KANALVAXEL_WORKER__POLL_INTERVAL_SECONDS="0.5",
        KANALVAXEL_WORKER__THREADS=str(threads),
        KANALVAXEL_LOG_LEVEL="WARNING",
        KANALVAXEL_SANDBOX__FAR_PORT="0",
    )
    if database:
        env["KANALVAXEL_MINA_MEDDELANDEN__RELAY_DATABASE_URL"] = database
    log = root / "worker.log"
    engine = sa.create_engine(db)
    started = time.perf_counter()
    proc = start(["worker", "--processes", str(processes)], env, root, log)
    peak, cpu = 0, 0.0
    stop = threading.Event()

    def sample() -> None:
        nonlocal peak, cpu
        while not stop.wait(0.2):
            peak = max(peak, tree_rss(proc.pid))
            cpu = max(cpu, tree_cpu(proc.pid))

    threading.Thread(target=sample, daemon=True).start()
    try:
        try:
            states = wait_until_final(engine, n, 0.25, proc)
        except SystemExit as exc:
            raise SystemExit(f"{exc}: {log.read_text()[-2000:]}") from None
        wall = time.perf_counter() - started
        cpu = max(cpu, tree_cpu(proc.pid))
    finally:
        stop.set()
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=120)
        engine.dispose()
    if states.get("DELIVERED", 0) != n:
        raise SystemExit(f"not every letter was delivered: {states}")
    return {"wall": wall, "cpu": cpu, "rss": peak}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--letters", type=int, default=3000)
    ap.add_argument("--database", default=None, help="PostgreSQL URL (emptied first; default: SQLite)")
    ap.add_argument("--processes", default="1,2", help="comma-separated process counts to compare")
    ap.add_argument("--threads", type=int, default=4, help="threads per worker process")
    args = ap.parse_args()
    counts = [int(p) for p in args.processes.split(",")]
    n = args.letters
    digital = sum(1 for r in recipients(n) if r in WITH_MAILBOX)
    with tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        certs = tmp / "certs"
        from kanalvaxel.devcerts import ensure_dev_certs

        ensure_dev_certs(certs)
        results = {p: run(n, p, args.threads, args.database, tmp, certs) for p in counts}
    kind = "postgresql" if args.database else "sqlite"
    print(f"letters: {n} ({digital} digital, {n - digital} print)  database: {kind}  {os.cpu_count()} cores")
    print(f"{'processes':>9} {'wall s':>8} {'letters/s':>10} {'cpu ms/letter':>14} {'peak RSS MiB':>13}")
    for p, r in results.items():
        print(
            f"{p:>9} {r['wall']:8.1f} {n / r['wall']:10.1f} {1000 * r['cpu'] / n:14.1f} "
            f"{r['rss'] / 2**20:13.0f}"
        )
    base = results[counts[0]]["wall"]
    for p in counts[1:]:
        print(f"{p} processes / {counts[0]}: {base / results[p]['wall']:.2f}x the letters/s")


if __name__ == "__main__":
    main()
