"""A volume mailing end to end: N letters through `POST /v1/shipments` into a running sandbox, until every one
is delivered (digital to the operator simulators, or on paper in a closed print batch).

`kanalvaxel serve` runs as its own process on the sandbox defaults (FaR and operator simulators, the
embedded relay, 4 worker threads), on SQLite or PostgreSQL; 60 % of the letters go to recipients with a
mailbox. Prints:
  - intake: wall time and letters/s for N posts from `--clients` concurrent clients,
  - dispatch: wall time from the first post until the last letter is final, and letters/s end to end,
  - FaR: isReachable calls and recipients asked (from the simulator's own count),
  - peak RSS of the service process (simulators and relay included) and of this load generator,
  - the floor measured in this run: what the same letters need with no database and no network
    (sign + seal of the digital ones, render + stage of the paper ones, one core), and the ratio to it.
Usage (from the repo root): python bench/volume.py [--letters 10000] [--database URL] [--clients 4]
"""

from __future__ import annotations

import argparse
import base64
import concurrent.futures
import datetime as dt
import json
import os
import resource
import ssl
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import sqlalchemy as sa

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench._service import machine_busy, start_serve, tree_cpu, tree_rss, wait_until_final  # noqa: E402
from tests.api.helpers import PDF  # noqa: E402
from tests.domain.factories import luhn_digit  # noqa: E402

WITH_MAILBOX = ("19700101-1233", "19811218-9876")  # Kivra and Min myndighetspost in the sandbox FaR


def recipients(n: int) -> list[str]:
    out = []
    for i in range(n):
        if i % 10 < 6:
            out.append(WITH_MAILBOX[i % 2])
        else:
            # A valid personnummer the sandbox FaR does not know: no mailbox, paper.
            day = dt.date(1950, 1, 1) + dt.timedelta(days=i % 20000)
            nine = f"{day:%y%m%d}{(i // 20000) % 100:02d}2"
            out.append(f"{day:%Y}{nine[2:]}{luhn_digit(nine)}")
    return out


def body(recipient: str, i: int) -> dict[str, object]:
    return {
        "recipient": {
            "id": recipient,
            "name": "Åsa Öberg",
            "postal_address": {
                "lines": [f"Storgatan {i % 90 + 1}"],
                "postal_code": "123 45",
                "city": "Småstad",
            },
        },
        "subject": f"Beslut om skolplacering {i}",
        "body": {"content_type": "text/plain", "content": "Hej!\n\nHär kommer beslutet om skolplacering."},
        "attachments": [{"filename": "beslut.pdf", "content_base64": base64.b64encode(PDF).decode()}],
        "confidentiality": "public",
        "message_type": "beslut",
        "case_reference": f"UN 2026/{i}",
        "support_info": {"text": "Frågor? Ring kontaktcenter.", "phone": "010-000 00 00"},
    }


def floor(n: int, certs: Path, tmp: Path) -> float:
    """Seconds the same letters need on one core with no database and no network."""
    from formedlare import mm
    from kanalvaxel.adapters.print_file import DirectoryPrintSpool, PdfLetterRenderer
    from kanalvaxel.ports import SenderInfo
    from tests.integration.conftest import make_letter

    sender = mm.SigningIdentity.from_pem(certs / "sender.pem", certs / "sender.key")
    relay = mm.SigningIdentity.from_pem(certs / "relay.pem", certs / "relay.key")
    renderer = PdfLetterRenderer()
    spool = DirectoryPrintSpool(tmp / "floor-spool")
    info = SenderInfo("sandbox", "2120000001", "Sandlådans kommun", ("Box 1",))
    letter = make_letter()
    started = time.perf_counter()
    for i, rid in enumerate(recipients(n)):
        if rid in WITH_MAILBOX:
            content = mm.DeliveryContent(
                "162120000001",
                "Sandlådans kommun",
                rid.replace("-", ""),
                (
                    mm.MessageContent(
                        message_id=f"floor-{i}",
                        subject="Beslut",
                        body=b"Hej!",
                        body_content_type="text/plain",
                        support_text="Ring.",
                        attachments=(mm.AttachmentContent("beslut.pdf", "application/pdf", PDF),),
                    ),
                ),
            )
            signed = mm.sign_delivery(sender, content)
            mm.seal_delivery(relay, signed, received=dt.date.today(), signatures_ok=True)
        else:
            spool.stage(f"floor-{i}", renderer.render(letter, info, f"floor-{i}"))
    return time.perf_counter() - started


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--letters", type=int, default=10_000)
    ap.add_argument("--database", default=None, help="PostgreSQL URL (default: SQLite in a temporary dir)")
    ap.add_argument("--clients", type=int, default=4)
    ap.add_argument("--processes", type=int, default=1, help="worker processes beside the API (serve)")
    ap.add_argument("--threads", type=int, default=4, help="threads per worker process")
    args = ap.parse_args()
    n = args.letters
    with tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        certs = tmp / "certs"
        from kanalvaxel.devcerts import ensure_dev_certs

        ensure_dev_certs(certs)
        db = args.database or f"sqlite:///{tmp / 'kv.db'}"
        settings = {
            "KANALVAXEL_MINA_MEDDELANDEN__ENABLED": "true",
            "KANALVAXEL_WORKER__PROCESSES": str(args.processes),
            "KANALVAXEL_WORKER__THREADS": str(args.threads),
        }
        if args.database:
            settings["KANALVAXEL_MINA_MEDDELANDEN__RELAY_DATABASE_URL"] = db
        proc, base = start_serve(db, tmp, certs, **settings)
        peak = {"serve": 0}
        stop = threading.Event()

        def sample() -> None:
            while not stop.wait(0.2):
                try:
                    peak["serve"] = max(peak["serve"], tree_rss(proc.pid))
                except OSError:
                    return

        threading.Thread(target=sample, daemon=True).start()
        try:
            key = (tmp / "var" / "dev-api-key").read_text().strip()
            far_url = json.loads((tmp / "var" / "sandbox.json").read_text())["far_url"]
            ctx = ssl.create_default_context(cafile=str(certs / "ca.pem"))
            ctx.load_cert_chain(str(certs / "client.pem"), str(certs / "client.key"))
            stats_url = far_url.rsplit("/Recipient/v3", 1)[0] + "/_simulator/stats"
            letters = recipients(n)
            local = threading.local()

            def post(i: int) -> int:
                if not hasattr(local, "http"):
                    local.http = httpx.Client(base_url=base, timeout=60, trust_env=False)
                r = local.http.post(
                    "/v1/shipments",
                    json=body(letters[i], i),
                    headers={"Authorization": f"Bearer {key}", "Idempotency-Key": f"vol-{i}"},
                )
                return r.status_code

            busy_before = machine_busy()
            me_before = resource.getrusage(resource.RUSAGE_SELF)
            started = time.perf_counter()
            with concurrent.futures.ThreadPoolExecutor(args.clients) as pool:
                codes = list(pool.map(post, range(n)))
            intake = time.perf_counter() - started
            bad = [c for c in codes if c != 202]
            if bad:
                raise SystemExit(f"{len(bad)} posts were refused: {sorted(set(bad))}")
            engine = sa.create_engine(db)
            states = wait_until_final(engine, n, 0.5, proc)
            total = time.perf_counter() - started
            cpu = tree_cpu(proc.pid)
            busy_after = machine_busy()
            me_after = resource.getrusage(resource.RUSAGE_SELF)
            with engine.connect() as conn:
                channels = dict(
                    conn.execute(sa.text("SELECT channel, count(*) FROM shipments GROUP BY channel")).all()
                )
                # Every pass of the worker over a letter is a work item: the first, and each status poll.
                passes = dict(
                    conn.execute(
                        sa.text(
                            "SELECT s.channel, count(*) FROM work_items w JOIN shipments s"
                            " ON s.id = w.shipment_id GROUP BY s.channel"
                        )
                    ).all()
                )
            engine.dispose()
            with httpx.Client(verify=ctx, trust_env=False, timeout=10) as far:
                stats = far.get(stats_url).json()
        finally:
            stop.set()
            proc.terminate()
            proc.wait(timeout=60)
        reachable = [
            k
            for op, k in zip(stats["operations"], stats["ids_per_call"], strict=False)
            if op == "isReachable"
        ]
        floor_s = floor(n, certs, tmp)
        me = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        kind = "postgresql" if args.database else "sqlite"
        print(
            f"letters: {n}  database: {kind}  clients: {args.clients}  "
            f"worker processes: {args.processes} x {args.threads} threads"
        )
        print(f"intake:   {intake:8.1f} s  {n / intake:8.1f} letters/s")
        print(
            f"end to end: {total:6.1f} s  {n / total:8.1f} letters/s  "
            f"(100,000 letters ≈ {100_000 / (n / total) / 60:.0f} min)"
        )
        print(f"states: {states}  channels: {channels}")
        print(
            "worker passes per letter: "
            + ", ".join(f"{ch} {passes.get(ch, 0) / count:.2f}" for ch, count in channels.items() if count)
        )
        print(f"FaR isReachable: {len(reachable)} calls for {sum(reachable)} recipients")
        print(
            f"peak RSS: service with its worker processes {peak['serve'] / 2**20:.0f} MiB, "
            f"load generator {me / 2**20:.0f} MiB"
        )
        ms = {k: 1000 * v / n for k, v in sorted(cpu.items(), key=lambda kv: -kv[1])}
        load = me_after.ru_utime + me_after.ru_stime - me_before.ru_utime - me_before.ru_stime
        print(
            "CPU ms per letter: "
            + ", ".join(f"{k} {v:.1f}" for k, v in ms.items())
            + f", load generator {1000 * load / n:.1f}"
        )
        busy = busy_after[0] - busy_before[0]
        cores = busy / (busy_after[1] - busy_before[1]) * (os.cpu_count() or 1)
        print(
            f"machine: {1000 * busy / n:.1f} CPU ms per letter in all (database server included), "
            f"{cores:.2f} of {os.cpu_count()} cores busy on average"
        )
        print(
            f"floor (no database, no network, one core): {floor_s:.1f} s; "
            f"end to end / floor = {total / floor_s:.1f}"
        )


if __name__ == "__main__":
    main()
