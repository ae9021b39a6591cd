"""The only dialect-sensitive SQL: claiming work and opening print batches.

Claims are one `UPDATE … WHERE id IN (SELECT … FOR UPDATE SKIP LOCKED) RETURNING`: atomic on SQLite (one
writer; SQLAlchemy drops FOR UPDATE there) and without double claims on PostgreSQL (deps-notes §5).
"""

from __future__ import annotations

import functools
import uuid
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import cast

from sqlalchemy import Connection, Table, Update, and_, bindparam, or_, select, update
from sqlalchemy.dialects import postgresql, sqlite

from kanalvaxel.adapters.persistence.tables import PrintBatchRow, WorkItemRow
from kanalvaxel.ports import Claim

_WORK = cast(Table, WorkItemRow.__table__)


@functools.lru_cache(maxsize=8)
def _claim_statement(limit: int) -> Update:
    """The claim, built once per batch size (a statement built anew costs more than running it)."""
    work = _WORK.c
    now = bindparam("b_now", type_=work.not_before.type)
    due = (
        select(work.id)
        .where(
            or_(
                and_(work.status == "READY", work.not_before <= now),
                and_(work.status == "CLAIMED", work.lease_expires_at < now),
            )
        )
        .order_by(work.not_before, work.id)
        .limit(limit)
        .with_for_update(skip_locked=True)
        .scalar_subquery()
    )
    return (
        update(_WORK)
        .where(work.id.in_(due))
        .values(
            status="CLAIMED",
            lease_token=bindparam("b_token"),
            lease_owner=bindparam("b_owner"),
            lease_expires_at=bindparam("b_until", type_=work.lease_expires_at.type),
            claims=work.claims + 1,
        )
        .returning(work.id, work.shipment_id, work.claims)
    )


def claim(conn: Connection, worker: str, now: datetime, lease: timedelta, limit: int) -> Sequence[Claim]:
    token = str(uuid.uuid4())
    params = {"b_now": now, "b_token": token, "b_owner": worker[:100], "b_until": now + lease}
    # RETURNING gives no order (PostgreSQL): the oldest items of a batch first, as they were queued.
    rows = sorted(conn.execute(_claim_statement(limit), params).all(), key=lambda r: r[0])
    return [Claim(work_item_id=r[0], shipment_id=r[1], token=token, claims=r[2]) for r in rows]


def insert_open_batch(conn: Connection, batch_id: str, sender_key: str, now: datetime) -> None:
    """Open a batch unless the sender already has an open one (the partial unique index decides)."""
    values = {
        "id": batch_id,
        "sender_key": sender_key,
        "status": "OPEN",
        "opened_at": now,
        "letter_count": 0,
        "total_bytes": 0,
    }
    if conn.dialect.name == "postgresql":
        conn.execute(postgresql.insert(PrintBatchRow).values(**values).on_conflict_do_nothing())
    else:
        conn.execute(sqlite.insert(PrintBatchRow).values(**values).on_conflict_do_nothing())
