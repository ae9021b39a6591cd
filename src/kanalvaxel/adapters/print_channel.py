"""The print channel: render the letter to a print-ready PDF and stage it in the vendor's spool.

Batch bookkeeping (which batch, which number) is recorded by the dispatcher in the same transaction as
the outcome, so a crash between staging and recording only means the same file is staged again.
"""

from __future__ import annotations

import io

from pypdf import PdfReader

from kanalvaxel.adapters.print_file import PrintSpoolError
from kanalvaxel.domain.errors import ValidationError
from kanalvaxel.domain.model import Channel
from kanalvaxel.ports import DeliveryJob, DeliveryOutcome, LetterRenderer, OutcomeKind, PrintSpool


class PrintChannel:
    channel = Channel.PRINT

    def __init__(self, renderer: LetterRenderer, spool: PrintSpool, *, max_pages: int | None = None) -> None:
        self._renderer = renderer
        self._spool = spool
        self._max_pages = max_pages

    def send(self, job: DeliveryJob) -> DeliveryOutcome:
        try:
            pdf = self._renderer.render(job.letter, job.sender, job.shipment_id)
        except ValidationError as exc:
            return DeliveryOutcome(OutcomeKind.FAILED, f"Brevet kan inte skrivas ut: {exc.message}")
        if self._max_pages is not None:
            # The decision counted the address page and the attachments; a long body can add pages.
            pages = len(PdfReader(io.BytesIO(pdf)).pages)  # our own rendering: readable
            if pages > self._max_pages:
                return DeliveryOutcome(
                    OutcomeKind.FAILED,
                    f"Brevet har {pages} sidor; högst {self._max_pages} får plats i kuvertet.",
                )
        try:
            staged = self._spool.stage(job.shipment_id, pdf)
        except PrintSpoolError as exc:
            return DeliveryOutcome(OutcomeKind.FAILED, f"Brevet kunde inte läggas i tryckkön: {exc}")
        except OSError as exc:  # a full or unmounted spool is an operations problem that may pass
            return DeliveryOutcome(
                OutcomeKind.RETRY, f"Tryckkatalogen kunde inte skrivas: {exc.strerror or exc}"
            )
        return DeliveryOutcome(
            OutcomeKind.HANDED_OVER,
            f"Utskriftsfil skapad ({staged.pages} {'sida' if staged.pages == 1 else 'sidor'}).",
            external_ref=staged.name,
            data={
                "staged_name": staged.name,
                "pages": str(staged.pages),
                "size_bytes": str(staged.size_bytes),
            },
        )
