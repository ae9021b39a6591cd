"""What the benches that drive a running service share: start `kanalvaxel serve` on the sandbox defaults
(as the end-to-end tests do, tests/e2e/conftest.py), wait until every letter is final, and read the
resident memory and CPU time of a process tree and the busy time of the machine."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import httpx
import sqlalchemy as sa

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.e2e.conftest import free_port, process_env, start, wait_ready  # noqa: E402


def wait_until_final(
    engine: sa.Engine, letters: int, every: float, proc: subprocess.Popen[bytes] | None = None
) -> dict[str, int]:
    """Poll until `letters` shipments are DELIVERED or FAILED; return the count per state. Raises SystemExit
    if `proc` (the service under test) ends first."""
    while True:
        if proc is not None and proc.poll() is not None:
            raise SystemExit(f"the service exited with status {proc.returncode}")
        with engine.connect() as conn:
            final = conn.execute(
                sa.text("SELECT count(*) FROM shipments WHERE state IN ('DELIVERED', 'FAILED')")
            ).scalar_one()
        if final >= letters:
            break
        time.sleep(every)
    with engine.connect() as conn:
        return dict(conn.execute(sa.text("SELECT state, count(*) FROM shipments GROUP BY state")).all())


def rss(pid: int) -> int:
    """Resident memory of process `pid` in bytes (Linux /proc)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def tree_rss(pid: int) -> int:
    """Resident memory of `pid` and all its descendants (worker processes, ...) in bytes."""
    total = 0
    todo = [pid]
    while todo:
        p = todo.pop()
        try:
            total += rss(p)
            todo.extend(_children(p))
        except (FileNotFoundError, ProcessLookupError):
            continue
    return total


def _children(pid: int) -> list[int]:
    out: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        out.extend(int(c) for c in (task / "children").read_text().split())
    return out


def tree_cpu(pid: int) -> dict[str, float]:
    """CPU seconds (user + system) so far of `pid` and each descendant, by "pid command"."""
    tick = os.sysconf("SC_CLK_TCK")
    out: dict[str, float] = {}
    todo = [pid]
    while todo:
        p = todo.pop()
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
            args = Path(f"/proc/{p}/cmdline").read_bytes().split(b"\0")
            words = [a.decode(errors="replace") for a in args if a and not a.startswith(b"-")]
            role = next((w for w in words if w in ("serve", "worker")), Path(words[0]).name if words else "?")
            out[f"{p} {role}"] = (int(fields[11]) + int(fields[12])) / tick
            todo.extend(_children(p))
        except (FileNotFoundError, ProcessLookupError, IndexError):
            continue
    return out


def machine_busy() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine since boot, all cores (/proc/stat)."""
    tick = os.sysconf("SC_CLK_TCK")
    values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = values[3] + values[4]
    return (sum(values) - idle) / tick, sum(values) / tick


def start_serve(
    database_url: str,
    root: Path,
    certs: Path,
    *,
    options: Sequence[str] = (),
    launcher: Sequence[str] = (),
    **settings: str,
) -> tuple[subprocess.Popen[bytes], str]:
    """`kanalvaxel serve` in `root` (var/, spool and serve.log there), ready: (process, base URL).
    `options` go on serve's command line; `launcher` (a script and its arguments) runs instead of the
    `kanalvaxel` command; `settings` are extra KANALVAXEL_* variables; the worker polls every 0.5 s."""
    port = free_port()
    env = process_env(
        database_url,
        root,
        certs,
        KANALVAXEL_API__PORT=str(port),
        KANALVAXEL_WORKER__POLL_INTERVAL_SECONDS="0.5",
        KANALVAXEL_LOG_LEVEL="WARNING",
        **settings,
    )
    log = root / "serve.log"
    if launcher:
        with log.open("ab") as out:
            proc = subprocess.Popen(
                [sys.executable, *launcher, "serve", *options], env=env, cwd=root, stdout=out, stderr=out
            )
    else:
        proc = start(["serve", *options], env, root, log)
    base = f"http://127.0.0.1:{port}"
    with httpx.Client(base_url=base, timeout=30, trust_env=False) as http:
        wait_ready(http, log)
    return proc, base


if __name__ == "__main__":
    argparse.ArgumentParser(
        description=f"{__doc__}\nA module the other benches import; it runs nothing by itself.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    ).parse_args()
