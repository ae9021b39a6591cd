"""The only dialect-sensitive SQL: claiming work and opening print batches.

Claims are one `UPDATE … WHERE id IN (SELECT … FOR UPDATE SKIP LOCKED) RETURNING`: atomic on SQLite (one
writer; SQLAlchemy drops FOR UPDATE there) and without double claims on PostgreSQL (deps-notes §5).
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime, timedelta

from sqlalchemy import and_, or_, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from kanalvaxel.adapters.persistence.tables import PrintBatchRow, WorkItemRow
from kanalvaxel.ports import Claim


def claim(session: Session, worker: str, now: datetime, lease: timedelta, limit: int) -> Sequence[Claim]:
    token = str(uuid.uuid4())
    due = (
        select(WorkItemRow.id)
        .where(
            or_(
                and_(WorkItemRow.status == "READY", WorkItemRow.not_before <= now),
                and_(WorkItemRow.status == "CLAIMED", WorkItemRow.lease_expires_at < now),
            )
        )
        .order_by(WorkItemRow.not_before, WorkItemRow.id)
        .limit(limit)
        .with_for_update(skip_locked=True)
        .scalar_subquery()
    )
    stmt = (
        update(WorkItemRow)
        .where(WorkItemRow.id.in_(due))
        .values(
            status="CLAIMED",
            lease_token=token,
            lease_owner=worker[:100],
            lease_expires_at=now + lease,
            claims=WorkItemRow.claims + 1,
        )
        .returning(WorkItemRow.id, WorkItemRow.shipment_id, WorkItemRow.claims)
    )
    # RETURNING gives no order (PostgreSQL): the oldest items of a batch first, as they were queued.
    rows = sorted(session.execute(stmt).all(), key=lambda r: r[0])
    return [Claim(work_item_id=r[0], shipment_id=r[1], token=token, claims=r[2]) for r in rows]


def insert_open_batch(session: Session, batch_id: str, sender_key: str, now: datetime) -> None:
    """Open a batch unless the sender already has an open one (the partial unique index decides)."""
    values = {
        "id": batch_id,
        "sender_key": sender_key,
        "status": "OPEN",
        "opened_at": now,
        "letter_count": 0,
        "total_bytes": 0,
    }
    dialect = session.get_bind().dialect.name
    if dialect == "postgresql":
        pg = postgresql.insert(PrintBatchRow).values(**values)
        session.execute(pg.on_conflict_do_nothing())
    else:
        lite = sqlite.insert(PrintBatchRow).values(**values)
        session.execute(lite.on_conflict_do_nothing())
