"""channel_sends: what SMTP and the SMS gateway already accepted (the send journal)

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-24 12:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import kanalvaxel.adapters.persistence.tables  # noqa: F401 (types used below)

revision: str = '0002'
down_revision: str | None = '0001'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table('channel_sends',
    sa.Column('shipment_id', sa.String(length=36), nullable=False),
    sa.Column('channel', sa.String(length=32), nullable=False),
    sa.Column('external_ref', sa.String(length=255), nullable=True),
    sa.Column('detail', sa.Text(), nullable=False),
    sa.Column('data', sa.JSON(), nullable=False),
    sa.Column('sent_at', kanalvaxel.adapters.persistence.tables.UTCDateTime(), nullable=False),
    sa.ForeignKeyConstraint(['shipment_id'], ['shipments.id'], name=op.f('fk_channel_sends_shipment_id_shipments')),
    sa.PrimaryKeyConstraint('shipment_id', 'channel', name=op.f('pk_channel_sends'))
    )


def downgrade() -> None:
    op.drop_table('channel_sends')
