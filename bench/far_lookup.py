"""FaR lookups for many distinct recipients against the simulator over mutual TLS on loopback.

Prints the SOAP calls the simulator counted (at most ceil(n / 1000) are allowed), the wall time, lookups per
second, and the same lookup again from the client's cache (which must make no call at all).
Usage (from the repo root): python bench/far_lookup.py [recipients] [max_concurrency]
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # for the shared test identities

from far_client import FarClient, FarSettings
from formedlare.https_server import TlsFiles, serve_in_thread
from kanalvaxel.devcerts import ensure_dev_certs
from kanalvaxel.sandbox.far_simulator import FarSimulator, default_registry
from tests.far.conftest import personnummer


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("recipients", type=int, nargs="?", default=10_000, help="how many (default 10,000)")
    ap.add_argument("concurrency", type=int, nargs="?", default=4, help="calls in flight (default 4)")
    args = ap.parse_args()
    n, concurrency = args.recipients, args.concurrency
    ids = [personnummer(i) for i in range(n)]
    assert len(set(ids)) == n
    with tempfile.TemporaryDirectory() as tmp:
        certs = Path(tmp)
        ensure_dev_certs(certs)
        simulator = FarSimulator(default_registry())
        tls = TlsFiles(certs / "server.pem", certs / "server.key", client_ca=certs / "ca.pem")
        with serve_in_thread(simulator.app, tls, name="far-sim") as server:
            settings = FarSettings(
                url=f"{server.url}/Recipient/v3",
                client_certificate=certs / "client.pem",
                client_key=certs / "client.key",
                ca_bundle=certs / "ca.pem",
                max_concurrency=concurrency,
            )
            with FarClient(settings) as client:
                start = time.perf_counter()
                answers = client.is_reachable("2120000001", ids)
                cold = time.perf_counter() - start
                calls = simulator.stats.calls
                simulator.reset_stats()
                start = time.perf_counter()
                again = client.is_reachable("2120000001", ids)
                warm = time.perf_counter() - start
                cached_calls = simulator.stats.calls
    assert len(answers) == n
    assert again == answers
    limit = math.ceil(n / 1000)
    print(f"{n} distinct recipients, max_concurrency {concurrency}")
    print(f"  first lookup : {calls} SOAP calls (limit {limit}), {cold:.2f} s, {n / cold:,.0f} lookups/s")
    print(f"  from cache   : {cached_calls} SOAP calls, {warm * 1000:.1f} ms, {n / warm:,.0f} lookups/s")
    if calls > limit or cached_calls:
        raise SystemExit("FAIL: more SOAP calls than allowed")


if __name__ == "__main__":
    main()
