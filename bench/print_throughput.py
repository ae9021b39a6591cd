"""Throughput of the core path on one machine: intake, and dispatch to a closed print batch.

Prints letters per second for
  - intake (check + store + queue, one transaction per letter),
  - dispatch (claim, decide, render, stage, record, batch close), one worker thread,
  - the floor: rendering and staging the same PDFs with no database at all,
and the ratio of dispatch to the floor. Then, with no database, ms per letter for rendering and for
staging, with the renderer's font cache and without it (the font objects built for every letter),
in alternating rounds, the median of the rounds (wall clock and this process's CPU time), and the
ratios; staging is the same work in both (the same bytes), measured with each.
Usage (from the repo root): python bench/print_throughput.py [letters] [postgresql-url]
                            python bench/print_throughput.py --render-only [letters]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # for the shared test letter

from kanalvaxel.adapters.print_file import DirectoryPrintSpool, PdfLetterRenderer
from kanalvaxel.bootstrap import build
from kanalvaxel.config import load_settings
from kanalvaxel.devcerts import ensure_dev_certs
from kanalvaxel.domain.model import Letter, PostalAddress
from kanalvaxel.entrypoints.worker import Worker
from kanalvaxel.ports import LetterRenderer, SenderInfo
from tests.integration.conftest import make_letter

SENDER = SenderInfo("sandbox", "2120000001", "Sandlådans kommun", ("Box 1",))
NAMES = ("Åsa Öberg", "Tolvan Tolvansson", "Jörgen Ärlig", "Łukasz Čolić", "Märta Ödqvist-Nordin")


def varied_letters(n: int) -> list[Letter]:
    """bench/volume.py's letter (a one-page PDF attached, support information) to different people."""
    base = make_letter()
    return [
        replace(
            base,
            subject=f"Beslut om bygglov {i}",
            recipient_info=replace(
                base.recipient_info,
                name=NAMES[i % len(NAMES)],
                postal_address=PostalAddress((f"Storgatan {i % 90 + 1}",), "123 45", "Småstad"),
            ),
        )
        for i in range(n)
    ]


def render_and_stage(n: int, root: Path, repeats: int) -> None:
    """ms per letter to render and to stage, the font cache on and off, in alternating rounds."""
    cached = PdfLetterRenderer()
    cached.render(varied_letters(1)[0], SENDER, "warm-up")  # the font set every round after this finds
    compare(n, root, repeats, {"cached": cached, "uncached": PdfLetterRenderer(font_cache_size=0)})
    info = cached.font_cache_info()
    print(f"  font cache: {info.hits} hits, {info.misses} misses, {info.currsize} set(s)")


def compare(n: int, root: Path, repeats: int, modes: dict[str, LetterRenderer]) -> None:
    """Render and stage `n` letters with each renderer in turn, `repeats` rounds; print the medians and
    each renderer's ratio to the first."""
    letters = varied_letters(n)
    times: dict[tuple[str, str, str], list[float]] = {}
    sizes: dict[str, int] = {}
    for round_ in range(repeats):
        for mode, renderer in modes.items():
            spool = DirectoryPrintSpool(root / f"{mode}-{round_}")
            pdfs: list[bytes] = []
            wall, cpu = time.perf_counter(), time.process_time()
            for i, letter in enumerate(letters):
                pdfs.append(renderer.render(letter, SENDER, f"shp-{i}"))
            times.setdefault((mode, "render", "wall"), []).append(time.perf_counter() - wall)
            times.setdefault((mode, "render", "cpu"), []).append(time.process_time() - cpu)
            wall, cpu = time.perf_counter(), time.process_time()
            for i, pdf in enumerate(pdfs):
                spool.stage(f"shp-{i}", pdf)
            times.setdefault((mode, "stage", "wall"), []).append(time.perf_counter() - wall)
            times.setdefault((mode, "stage", "cpu"), []).append(time.process_time() - cpu)
            sizes[mode] = sum(map(len, pdfs)) // n

    def ms(mode: str, step: str, clock: str) -> float:
        if step == "total":
            return ms(mode, "render", clock) + ms(mode, "stage", clock)
        return statistics.median(times[(mode, step, clock)]) * 1000 / n

    print(f"\nrender and stage, no database: {n} letters x {repeats} rounds, median ms per letter")
    print(f"  {'':10} {'render':>15} {'stage':>15} {'total':>15}   wall / cpu; bytes a letter")
    for mode in modes:
        cells = "".join(
            f" {ms(mode, step, 'wall'):7.2f}/{ms(mode, step, 'cpu'):<7.2f}"
            for step in ("render", "stage", "total")
        )
        print(f"  {mode:10}{cells}   {sizes[mode]}")
    first, *others = modes
    for mode in others:
        for step in ("render", "total"):
            wall = ms(mode, step, "wall") / ms(first, step, "wall")
            cpu = ms(mode, step, "cpu") / ms(first, step, "cpu")
            print(f"  {mode} / {first}, {step}: {wall:.2f} (wall), {cpu:.2f} (cpu)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("letters", type=int, nargs="?", default=300, help="how many (default 300)")
    ap.add_argument("database", nargs="?", default=None, help="a PostgreSQL URL (default: SQLite)")
    ap.add_argument("--render-only", action="store_true", help="only the render and stage comparison")
    ap.add_argument("--repeats", type=int, default=5, help="rounds of the render and stage comparison")
    args = ap.parse_args()
    n, db = args.letters, args.database
    if args.render_only:
        with tempfile.TemporaryDirectory() as tmp:
            render_and_stage(n, Path(tmp), args.repeats)
        return
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
        t0 = time.perf_counter()
        for i, letter in enumerate(letters):
            spool.stage(f"floor-{i}", renderer.render(letter, SENDER, f"floor-{i}"))
        floor = time.perf_counter() - t0
        c.close()

    backend = "postgresql" if db else "sqlite"
    print(f"letters: {n}   database: {backend}")
    print(f"intake:   {n / intake:8.1f} letters/s  ({intake * 1000 / n:.2f} ms each)")
    print(f"dispatch: {n / dispatch:8.1f} letters/s  ({dispatch * 1000 / n:.2f} ms each, one thread)")
    print(f"floor:    {n / floor:8.1f} letters/s  (render + stage only)")
    print(f"dispatch / floor time ratio: {dispatch / floor:.2f}")
    with tempfile.TemporaryDirectory() as tmp:
        render_and_stage(n, Path(tmp), args.repeats)


if __name__ == "__main__":
    main()
