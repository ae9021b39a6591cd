"""`kanalvaxel serve` with a SQLite setting changed for this run only, for bench/intake.py's comparisons:
the `synchronous` pragma (FULL against the NORMAL we ship) and the writer lock (off: writers meet at SQLite's
own lock and its busy-wait only). Nothing but this launcher changes them.
Usage: python bench/_serve_variant.py [--synchronous FULL|NORMAL] [--no-writer-lock] serve [options of serve]
"""

from __future__ import annotations

import argparse
import sys

from kanalvaxel.adapters.persistence import database
from kanalvaxel.entrypoints.cli import main

if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--synchronous", choices=("FULL", "NORMAL"))
    ap.add_argument("--no-writer-lock", action="store_true")
    args, rest = ap.parse_known_args()
    # Both are read when an engine is made or connects, so they must be set before the service starts.
    if args.synchronous:
        assert hasattr(database, "SQLITE_PRAGMAS"), "this revision sets its pragmas in code of its own"
        database.SQLITE_PRAGMAS = tuple(
            f"synchronous={args.synchronous}" if p.startswith("synchronous=") else p
            for p in database.SQLITE_PRAGMAS
        )
    if args.no_writer_lock:
        assert hasattr(database, "SQLITE_WRITER_LOCK"), "this revision has no writer lock"
        database.SQLITE_WRITER_LOCK = False
    sys.argv = [sys.argv[0], *rest]
    main()
