"""Intake against its floor: `POST /v1/shipments` of a running `kanalvaxel serve` beside a bare FastAPI
endpoint that does one durable INSERT and a commit per request on the same kind of database
(bench/_bare_intake.py).

Both run as their own processes under the same uvicorn settings: `kanalvaxel serve` on the sandbox defaults
(simulators, digital mail, e-mail and SMS on), by default with `--no-embedded-worker` so that dispatching
does not compete for the cores while intake is measured (`--embedded-worker` measures it with the worker).
Every request carries the small letter of bench/volume.py (one one-page PDF) and an Idempotency-Key of its
own, so each one is a new letter. The same load generator drives both: `wrk` (Debian's package, one
thread, N connections) when it is installed, else an httpx client per connection in this process (which
then takes CPU from the servers; `--load` chooses). For each number of clients, after a warm-up, each
target is measured for a fixed time, targets taking turns, `--rounds` times; printed: req/s and p50, p95,
p99 latency of every measurement, then the medians and the ratio ours/bare.

On SQLite, both run with `synchronous=FULL` (what we ship: an fsync of the WAL at every commit) and with
`synchronous=NORMAL` (ours through bench/_serve_variant.py, for this run only), each pair compared like for
like. On PostgreSQL (`--database URL`), ours migrates that database and the bare endpoint uses a table of
its own (bench_intake_bare, dropped and made anew).
`--without-writer-lock` adds ours with SQLite's writers meeting at SQLite's own lock (busy-wait) instead of
taking turns on ours; `--compare-with DIR` adds ours from another source tree (an earlier revision checked
out in DIR), so that before and after are measured side by side.
Usage (from the repo root): python bench/intake.py [--database URL] [--clients 4,16] [--seconds 10]
    [--warmup 3] [--rounds 3] [--load wrk|httpx] [--embedded-worker] [--sync NORMAL,FULL]
    [--without-writer-lock] [--compare-with DIR]
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import sqlalchemy as sa

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench._service import start_serve  # noqa: E402
from bench.volume import WITH_MAILBOX, body  # noqa: E402
from kanalvaxel.adapters.persistence import database  # noqa: E402
from tests.e2e.conftest import free_port, wait_ready  # noqa: E402

_WRK_SCRIPT = """
local n = 0
local prefix = "%(prefix)s"
wrk.method = "POST"
wrk.body = %(body)s
wrk.headers["Content-Type"] = "application/json"
%(auth)s
local threads = 0
function setup(thread)
  threads = threads + 1
  thread:set("tid", tostring(threads))
end
function request()
  n = n + 1
  wrk.headers["Idempotency-Key"] = prefix .. "-" .. tid .. "-" .. n
  return wrk.format()
end
function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    '{"requests": %%d, "seconds": %%f, "bad": %%d, "errors": %%d, "p50": %%f, "p95": %%f, "p99": %%f}\\n',
    summary.requests, summary.duration / 1e6, e.status, e.connect + e.read + e.write + e.timeout,
    latency:percentile(50) / 1e3, latency:percentile(95) / 1e3, latency:percentile(99) / 1e3))
end
"""


#: The synchronous mode kanalväxel ships with (the other one runs through bench/_serve_variant.py).
SHIPPED_SYNCHRONOUS = next(
    p.split("=", 1)[1] for p in database.SQLITE_PRAGMAS if p.startswith("synchronous=")
)


def _lua_string(text: str) -> str:
    return "[==[" + text + "]==]"


@dataclass
class Target:
    name: str  # "bare", "ours", or ours in a variant: "ours, no writer lock", "ours, <another tree>"
    sync: str  # NORMAL, FULL, or "" on PostgreSQL
    url: str
    headers: dict[str, str]
    proc: subprocess.Popen[bytes]
    count_rows: str  # SQL that counts what it stored
    database: str
    ok: int = 0  # 2xx answers, warm-ups included: what the database must hold at least
    results: dict[int, list[Measured]] = field(default_factory=dict)

    @property
    def label(self) -> str:
        return f"{self.name}{' ' + self.sync if self.sync else ''}"


@dataclass(frozen=True)
class Measured:
    rps: float
    p50: float
    p95: float
    p99: float
    requests: int
    bad: int
    errors: int
    cpu_ms: float = 0.0  # the server process's CPU time (user + system) per answered request


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of process `pid`, all its threads (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run_wrk(target: Target, payload: str, clients: int, seconds: int, tmp: Path) -> Measured:
    auth = "".join(f'wrk.headers["{k}"] = {_lua_string(v)}\n' for k, v in target.headers.items())
    script = tmp / f"wrk-{uuid.uuid4().hex}.lua"
    script.write_text(_WRK_SCRIPT % {"prefix": uuid.uuid4().hex, "body": _lua_string(payload), "auth": auth})
    out = subprocess.run(
        ["wrk", "-t1", f"-c{clients}", f"-d{seconds}s", "--timeout", "30s", "-s", str(script), target.url],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    data = json.loads(out.strip().splitlines()[-1])
    good = data["requests"] - data["bad"]
    target.ok += good
    return Measured(
        good / data["seconds"],
        data["p50"],
        data["p95"],
        data["p99"],
        data["requests"],
        data["bad"],
        data["errors"],
    )


def run_httpx(target: Target, payload: str, clients: int, seconds: int) -> Measured:
    content = payload.encode()
    prefix = uuid.uuid4().hex

    async def client(n: int, deadline: float, latencies: list[float], codes: list[int]) -> None:
        async with httpx.AsyncClient(timeout=30, trust_env=False) as http:
            i = 0
            while time.perf_counter() < deadline:
                i += 1
                headers = {
                    **target.headers,
                    "Content-Type": "application/json",
                    "Idempotency-Key": f"{prefix}-{n}-{i}",
                }
                started = time.perf_counter()
                r = await http.post(target.url, content=content, headers=headers)
                latencies.append((time.perf_counter() - started) * 1000)
                codes.append(r.status_code)

    async def drive() -> tuple[list[float], list[int], float]:
        latencies: list[float] = []
        codes: list[int] = []
        started = time.perf_counter()
        deadline = started + seconds
        await asyncio.gather(*(client(n, deadline, latencies, codes) for n in range(clients)))
        return latencies, codes, time.perf_counter() - started

    latencies, codes, took = asyncio.run(drive())
    good = sum(1 for c in codes if 200 <= c < 300)
    target.ok += good
    q = statistics.quantiles(latencies, n=100, method="inclusive")
    return Measured(good / took, q[49], q[94], q[98], len(codes), len(codes) - good, 0)


def start_bare(database: str, sync: str, tmp: Path) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    log = tmp / f"bare-{sync or 'pg'}.log"
    cmd = [
        sys.executable,
        str(ROOT / "bench" / "_bare_intake.py"),
        "--database",
        database,
        "--port",
        str(port),
    ]
    if sync:
        cmd += ["--synchronous", sync]
    with log.open("ab") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    with httpx.Client(base_url=base, timeout=30, trust_env=False) as http:
        wait_ready(http, log)
    return proc, base


def start_ours(
    database: str,
    sync: str,
    tmp: Path,
    certs: Path,
    embedded_worker: bool,
    *,
    writer_lock: bool = True,
    tree: Path | None = None,
) -> tuple[subprocess.Popen[bytes], str, str]:
    root = Path(tempfile.mkdtemp(dir=tmp, prefix=f"ours-{sync or 'pg'}-"))
    settings = {
        # The sandbox defaults (tests.e2e.conftest.process_env turns these off for its tests).
        "KANALVAXEL_MINA_MEDDELANDEN__ENABLED": "true",
        "KANALVAXEL_EMAIL__ENABLED": "true",
        "KANALVAXEL_SMS__ENABLED": "true",
    }
    if not database.startswith("sqlite"):
        settings["KANALVAXEL_MINA_MEDDELANDEN__RELAY_DATABASE_URL"] = database
    if tree is not None:
        settings["PYTHONPATH"] = f"{tree / 'src'}:{tree}"
    options = () if embedded_worker else ("--no-embedded-worker",)
    variant = ([f"--synchronous={sync}"] if sync and sync != SHIPPED_SYNCHRONOUS else []) + (
        [] if writer_lock else ["--no-writer-lock"]
    )
    launcher = (str(ROOT / "bench" / "_serve_variant.py"), *variant) if variant else ()
    proc, base = start_serve(database, root, certs, options=options, launcher=launcher, **settings)
    key = (root / "var" / "dev-api-key").read_text().strip()
    return proc, base, key


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--database", default=None, help="PostgreSQL URL (default: SQLite files in a temporary dir)"
    )
    ap.add_argument("--clients", default="4,16", help="numbers of concurrent clients, comma-separated")
    ap.add_argument("--seconds", type=int, default=10, help="length of each measurement")
    ap.add_argument("--warmup", type=int, default=3, help="seconds of load before each measurement")
    ap.add_argument("--rounds", type=int, default=3, help="measurements of each target per client count")
    ap.add_argument("--load", choices=("wrk", "httpx"), default="wrk" if shutil.which("wrk") else "httpx")
    ap.add_argument("--embedded-worker", action="store_true", help="serve with its worker (dispatching too)")
    ap.add_argument("--sync", default="NORMAL,FULL", help="SQLite synchronous modes to compare")
    ap.add_argument(
        "--without-writer-lock",
        action="store_true",
        help="SQLite: also measure ours with its writers meeting at SQLite's lock only",
    )
    ap.add_argument(
        "--compare-with",
        type=Path,
        default=None,
        help="also measure ours from another source tree (a checkout of an earlier revision), same run",
    )
    args = ap.parse_args()
    clients = [int(c) for c in args.clients.split(",")]
    payload = json.dumps(body(WITH_MAILBOX[0], 1), ensure_ascii=False)
    # On the disk, not a tmpfs: FULL against NORMAL is about fsync.
    with tempfile.TemporaryDirectory(dir="/var/tmp") as tmpdir:
        tmp = Path(tmpdir)
        certs = tmp / "certs"
        from kanalvaxel.devcerts import ensure_dev_certs

        ensure_dev_certs(certs)
        targets: list[Target] = []
        try:
            modes = args.sync.split(",") if args.database is None else [""]
            for sync in modes:
                variants: list[tuple[str, dict[str, Any]]] = [("ours", {})]
                if args.without_writer_lock and args.database is None:
                    variants.append(("ours, no writer lock", {"writer_lock": False}))
                if args.compare_with is not None:
                    variants.append((f"ours, {args.compare_with}", {"tree": args.compare_with.resolve()}))
                for i, (name, variant) in enumerate(variants):
                    db = args.database or f"sqlite:///{tmp / f'ours-{sync}-{i}.db'}"
                    proc, base, key = start_ours(db, sync, tmp, certs, args.embedded_worker, **variant)
                    targets.append(
                        Target(
                            name,
                            sync,
                            f"{base}/v1/shipments",
                            {"Authorization": f"Bearer {key}"},
                            proc,
                            "SELECT count(*) FROM shipments",
                            db,
                        )
                    )
                db = args.database or f"sqlite:///{tmp / f'bare-{sync}.db'}"
                proc, base = start_bare(db, sync, tmp)
                targets.append(
                    Target(
                        "bare", sync, f"{base}/bare", {}, proc, "SELECT count(*) FROM bench_intake_bare", db
                    )
                )
            kind = "postgresql" if args.database else "sqlite"
            worker = "with its embedded worker" if args.embedded_worker else "--no-embedded-worker"
            print(
                f"database: {kind}  load: {args.load}  serve: {worker}  "
                f"{args.rounds} x {args.seconds:g} s per target after {args.warmup:g} s warm-up; "
                f"body {len(payload.encode())} bytes",
                flush=True,
            )
            for n in clients:
                for r in range(args.rounds):
                    for t in targets:
                        if args.load == "wrk":
                            run_wrk(t, payload, n, args.warmup, tmp)
                            cpu = cpu_seconds(t.proc.pid)
                            m = run_wrk(t, payload, n, args.seconds, tmp)
                        else:
                            run_httpx(t, payload, n, args.warmup)
                            cpu = cpu_seconds(t.proc.pid)
                            m = run_httpx(t, payload, n, args.seconds)
                        cpu = cpu_seconds(t.proc.pid) - cpu
                        m = dataclasses.replace(m, cpu_ms=cpu * 1000 / max(1, m.requests - m.bad))
                        t.results.setdefault(n, []).append(m)
                        print(
                            f"  clients {n:2d} round {r + 1}  {t.label:30s} {m.rps:8.1f} req/s  "
                            f"p50 {m.p50:7.1f}  p95 {m.p95:7.1f}  p99 {m.p99:7.1f} ms  "
                            f"CPU {m.cpu_ms:5.2f} ms/req"
                            + (f"  REFUSED {m.bad}" if m.bad else "")
                            + (f"  SOCKET ERRORS {m.errors}" if m.errors else ""),
                            flush=True,
                        )
        finally:
            for t in targets:
                t.proc.terminate()
            for t in targets:
                t.proc.wait(timeout=60)
        width = max(len(t.name) for t in targets)
        print(
            f"\nmedians of {args.rounds}: {'':{width - 4}}  req/s   p50 ms   p95 ms   p99 ms  CPU ms/req  "
            "ours/bare"
        )
        for sync in modes:
            group = [t for t in targets if t.sync == sync]
            bare = next(t for t in group if t.name == "bare")
            for n in clients:
                bare_rps = statistics.median(m.rps for m in bare.results[n])
                for t in group:
                    ms = t.results[n]
                    rps = statistics.median(m.rps for m in ms)
                    ratio = f"{rps / bare_rps:9.2f}" if t is not bare else ""
                    print(
                        f"  {sync or 'postgresql':10s} {n:2d} {t.name:{width}s} {rps:8.1f} "
                        + " ".join(
                            f"{statistics.median(getattr(m, q) for m in ms):8.1f}"
                            for q in ("p50", "p95", "p99")
                        )
                        + f"  {statistics.median(m.cpu_ms for m in ms):10.2f}{ratio}"
                    )
        # Accepted means stored: every 2xx answer must have left its row behind.
        for t in targets:
            engine = sa.create_engine(t.database)
            with engine.connect() as conn:
                rows = conn.execute(sa.text(t.count_rows)).scalar_one()
            engine.dispose()
            if rows < t.ok:
                raise SystemExit(
                    f"{t.label}: {t.ok} requests were answered 2xx but only {rows} rows are stored"
                )


if __name__ == "__main__":
    main()
