"""Throughput of the core path on one machine: intake, and dispatch to a closed print batch.

Prints letters per second for
  - intake (check + store + queue, one transaction per letter),
  - dispatch (claim, decide, render, stage, record, batch close), one worker thread,
  - the floor: rendering and staging the same PDFs with no database at all,
and the ratio of dispatch to the floor.
Usage (from the repo root): python bench/print_throughput.py [letters] [postgresql-url]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # for the shared test letter

from kanalvaxel.adapters.print_file import DirectoryPrintSpool, PdfLetterRenderer
from kanalvaxel.bootstrap import build
from kanalvaxel.config import load_settings
from kanalvaxel.devcerts import ensure_dev_certs
from kanalvaxel.entrypoints.worker import Worker
from kanalvaxel.ports import SenderInfo
from tests.integration.conftest import make_letter


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("letters", type=int, nargs="?", default=300, help="how many (default 300)")
    ap.add_argument("database", nargs="?", default=None, help="a PostgreSQL URL (default: SQLite)")
    args = ap.parse_args()
    n, db = args.letters, args.database
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        certs = root / "certs"
        ensure_dev_certs(certs)
        settings = load_settings(
            database={"url": db or f"sqlite:///{root / 'bench.db'}"},
            print={"spool_dir": str(root / "spool"), "batch_max_letters": 100},
            var_dir=str(root / "var"),
            dev_certs_dir=str(certs),
        )
        c = build(settings)
        c.migrate()
        client = c.clients.add(f"bench-{time.time_ns()}", ["sandbox"]).client
        letters = [make_letter() for _ in range(n)]

        t0 = time.perf_counter()
        for i, letter in enumerate(letters):
            c.intake.submit(client, f"b{i}", f"h{i}", letter)
        intake = time.perf_counter() - t0

        w = Worker(c)
        t0 = time.perf_counter()
        while w.run_once():
            pass
        assert c.printing is not None
        c.printing.close_due()
        dispatch = time.perf_counter() - t0

        renderer = PdfLetterRenderer()
        spool = DirectoryPrintSpool(root / "floor")
        sender = SenderInfo("sandbox", "2120000001", "Sandlådans kommun", ("Box 1",))
        t0 = time.perf_counter()
        for i, letter in enumerate(letters):
            spool.stage(f"floor-{i}", renderer.render(letter, sender, f"floor-{i}"))
        floor = time.perf_counter() - t0
        c.close()

    backend = "postgresql" if db else "sqlite"
    print(f"letters: {n}   database: {backend}")
    print(f"intake:   {n / intake:8.1f} letters/s  ({intake * 1000 / n:.2f} ms each)")
    print(f"dispatch: {n / dispatch:8.1f} letters/s  ({dispatch * 1000 / n:.2f} ms each, one thread)")
    print(f"floor:    {n / floor:8.1f} letters/s  (render + stage only)")
    print(f"dispatch / floor time ratio: {dispatch / floor:.2f}")


if __name__ == "__main__":
    main()
