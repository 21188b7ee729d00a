"""Rows from the live tables: one query joining every section's SQL, ordered by device ID.

The export cache is rendered from these rows; an export reads them itself only when the cache
cannot be made current (a read-only registry) or is not wanted (``use_cache=False``).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

from sqlalchemy import Select, select
from sqlalchemy.engine import Connection
from sqlalchemy.sql.elements import ColumnElement

from fleet.export.batches import BATCH_ROWS, in_batches
from fleet.export.cells import canonical_labels
from fleet.export.filters import NO_CERTIFICATE, ExportFilters, device_filters
from fleet.export.layout import LAYOUT
from fleet.export.render import Rendered, effective_status, line, render
from fleet.export.section import LiveContext
from fleet.export.sections import SECTIONS
from fleet.export.telemetry import extend_text, with_columns
from fleet.registry.models import Device


def live_query(
    dialect: str, filters: ExportFilters, ids: Sequence[str] | None = None
) -> Select[Any]:
    """The SELECT of the live rows (``bench/export.py`` hands it to ``sqlite3 -csv``).

    ``cert_status`` is not filtered here: it depends on the moment (see
    :func:`~fleet.export.render.line`).
    """
    device = Device.__table__  # type: ignore[attr-defined]
    ctx = LiveContext(device, dialect)
    columns: list[ColumnElement[Any]] = []
    source: Any = device
    for section in SECTIONS:
        more, source = section.live(ctx, source)
        columns.extend(more)
    query = select(*columns).select_from(source)
    d = device.c
    if ids is not None:
        query = query.where(d.id.in_(ids))
    return device_filters(query, d, filters).order_by(d.id)


def live_rows(
    conn: Connection, filters: ExportFilters, ids: Sequence[str] | None = None
) -> Iterator[Rendered]:
    """Current rows from the live tables, streamed from one query, ordered by device ID."""
    query = live_query(conn.dialect.name, filters, ids)
    result = conn.execute(
        query, execution_options={"stream_results": True, "yield_per": BATCH_ROWS}
    )
    labels_at = LAYOUT.labels
    for row in result:
        cells = list(row)
        cells[labels_at] = canonical_labels(cells[labels_at])
        yield render(cells)


def live_lines(
    conn: Connection, fmt: str, filters: ExportFilters, moment: str
) -> Iterator[list[bytes]]:
    """The live rows matching ``filters`` at ``moment`` (:func:`iso_moment` text), as
    batches of ``fmt`` lines, with the columns joined at export time (:mod:`.telemetry`)."""
    device = Device.__table__  # type: ignore[attr-defined]
    dialect = conn.dialect.name
    query = with_columns(live_query(dialect, filters), device.c.id, dialect)
    result = conn.execute(
        query, execution_options={"stream_results": True, "yield_per": BATCH_ROWS}
    )
    labels_at, width = LAYOUT.labels, LAYOUT.width
    wanted = filters.cert_status

    def lines() -> Iterator[bytes]:
        for row in result:
            cells = list(row[:width])
            cells[labels_at] = canonical_labels(cells[labels_at])
            rendered = render(cells, fmt)
            status = effective_status(rendered.cert_status, rendered.cert_not_after, moment)
            if wanted is not None and (status or NO_CERTIFICATE) != wanted:
                continue
            yield extend_text(fmt, line(rendered, fmt, moment), row[width:]).encode()

    return in_batches(lines())
