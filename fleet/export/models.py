"""The export cache's tables (migration 0003/0004), kept current by :mod:`fleet.export.cache`."""

from __future__ import annotations

from sqlalchemy import Column, LargeBinary
from sqlmodel import Field, SQLModel


class ExportRow(SQLModel, table=True):
    """A device's export row in one format family (``csv``, or ``json`` for JSON and JSONL),
    rendered (see :mod:`fleet.export.rows`): ``line`` is the CSV line or JSON object as UTF-8,
    without a line end, holding the certificate's stored status at byte ``status_at``; an
    export at a moment past ``cert_not_after`` writes ``expired`` there instead of ``active``.

    Keyed (format, device ID) and, on SQLite, WITHOUT ROWID: the rows lie in the B-tree in
    export order, so an export reads pages in sequence whatever order devices were added in.
    """

    __tablename__ = "export_row"
    __table_args__ = {"sqlite_with_rowid": False}

    format: str = Field(primary_key=True, max_length=8)
    device_id: str = Field(foreign_key="device.id", primary_key=True, max_length=64)
    line: bytes = Field(sa_column=Column(LargeBinary, nullable=False))
    status_at: int = Field(nullable=False)
    cert_status: str | None = Field(default=None, max_length=16)
    cert_not_after: str | None = Field(default=None, max_length=32)  # ISO text, Z


class ExportDirty(SQLModel, table=True):
    """Devices whose export row must be re-rendered; filled by triggers (migration 0003)."""

    __tablename__ = "export_dirty"

    device_id: str = Field(primary_key=True, max_length=64)
