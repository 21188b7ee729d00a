"""The device export: every device (matching the filters) with its newest certificate, now
or as it was at a moment, as CSV, JSON or JSONL.

A live export reads the export cache in one ordered scan (the live tables when the cache
cannot be made current); ``--as-of`` replays the audit trail. Every path writes the same
bytes for the same registry.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any, TextIO

from fleet import clock
from fleet.errors import InvalidInput
from fleet.export.cache import cache_is_current, cached_batches, cached_query, refresh_cache
from fleet.export.cells import iso_moment
from fleet.export.files import export_output
from fleet.export.filters import ExportFilters
from fleet.export.live import live_lines
from fleet.export.replay import as_of_warnings, replayed_lines
from fleet.export.snapshot import Snapshot, read_head, snapshot_connection
from fleet.export.telemetry import EXPORT_COLUMNS
from fleet.export.write import write_lines
from fleet.registry import audit
from fleet.workspace import Passphrase, Workspace

FORMATS = ("csv", "json", "jsonl")


def write_devices(
    ws: Workspace,
    stream: TextIO,
    *,
    fmt: str = "csv",
    filters: ExportFilters | None = None,
    as_of: datetime | None = None,
    now: datetime | None = None,
    use_cache: bool = True,
    replay_workers: int | None = None,
) -> Snapshot:
    """Stream the device export to ``stream``; return the row count and the audit head the
    rows correspond to (read in the same snapshot).

    Live rows come from the export cache when it is current (else from the live tables,
    as with ``use_cache=False``); ``as_of`` replays the audit trail, in ``replay_workers``
    processes (default: one per CPU) once there are more than
    :data:`~fleet.export.replay.REPLAY_PART_DEVICES` devices. Every path writes the same
    bytes for the same registry.
    """
    _check_format(fmt)
    filters = filters or ExportFilters()
    engine = ws.open_registry()
    moment = iso_moment(as_of if as_of is not None else now or clock.now())
    if as_of is None and use_cache:
        refresh_cache(engine)
    with snapshot_connection(engine) as conn, conn.begin():
        head_seq, head_hash = read_head(conn)
        if as_of is not None:
            args = (fmt, filters, as_of, head_seq)
            # before write_lines starts its thread: worker processes are forked here
            batches = replayed_lines(ws, conn, args, replay_workers)
        elif use_cache and cache_is_current(conn):
            query = cached_query(fmt, filters, moment, telemetry=conn.dialect.name)
            batches = cached_batches(conn, query)
        else:
            batches = live_lines(conn, fmt, filters, moment)
        count = write_lines(stream, fmt, batches)
    return Snapshot(count, head_seq, head_hash)


def export_devices(
    ws: Workspace,
    *,
    fmt: str = "csv",
    out: Path | None = None,
    stream: TextIO | None = None,
    filters: ExportFilters | None = None,
    as_of: datetime | None = None,
    sign: bool | None = None,
    passphrase: Passphrase | None = None,
    now: datetime | None = None,
    replay_workers: int | None = None,
    force: bool = False,
) -> dict[str, Any]:
    """Export every device (matching ``filters``) with its newest certificate.

    To ``out`` (all or nothing; signed with a manifest unless ``sign`` is False) or, without
    ``out``, to ``stream`` (default stdout, never signed). ``as_of`` rebuilds the registry as
    it was at that moment from the audit trail (in ``replay_workers`` processes, default one
    per CPU, for large registries). An ``out`` that is a signed export already is refused
    (:class:`~fleet.errors.Conflict`) unless ``force``. ``as_of`` before the audit trail's
    first event or in the future adds a ``"warnings"`` list to the summary (rows, file,
    sha256...) it returns.
    Example::

        export_devices(ws, fmt="jsonl", out=Path("devices.jsonl"), as_of=datetime(2026, 6, 30))
    """
    _check_format(fmt)
    filters = filters or ExportFilters()
    moment = now or clock.now()

    def produce(handle: TextIO) -> Snapshot:
        return write_devices(
            ws,
            handle,
            fmt=fmt,
            filters=filters,
            as_of=as_of,
            now=moment,
            replay_workers=replay_workers,
        )

    warnings = as_of_warnings(ws.open_registry(), as_of, moment) if as_of is not None else []
    description = {
        "kind": "devices",
        "format": fmt,
        "columns": list(EXPORT_COLUMNS) if fmt == "csv" else None,
        "filters": filters.to_dict(),
        "as_of": audit.format_ts(as_of) if as_of is not None else None,
    }
    result = export_output(
        ws,
        produce,
        description,
        out=out,
        stream=stream,
        sign=sign,
        passphrase=passphrase,
        now=moment,
        overwrite=force,
    )
    if warnings:
        result["warnings"] = warnings
    return result


def _check_format(fmt: str) -> None:
    if fmt not in FORMATS:
        raise InvalidInput(f"format must be one of {', '.join(FORMATS)}")
