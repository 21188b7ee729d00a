"""Columns joined at export time, never cached: each device's reported and target firmware
and its connection state.

Reports and connection events arrive by the thousand per second; re-rendering a device's
cached export row (``export_row``) for each would put the export cache on the telemetry's hot
path. So these columns are not a :class:`~fleet.export.section.Section`: every export path
appends them to the row it has, read by one outer join of ``device_firmware`` and
``connection_state`` in the export's snapshot: the cached line in SQL (:func:`append_sql`:
the export stays one scan handing the database's bytes to the file), a live or replayed row
in Python (:func:`extend_text`), to the same bytes.
``--as-of`` leaves ``firmware_reported``, ``connection_state`` and ``last_seen`` empty (reports
and events are not audited) and replays ``firmware_target`` from the ``firmware.target``
events rollouts write (:func:`firmware_targets`).

CSV: four columns after the sections' ones (a reported version is free text the device
sent: formula-escaped like ``model``). JSON: four top-level members at the end of the object.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from typing import Any

from sqlalchemy import LargeBinary, Select, String, and_, case, cast, func, literal, select
from sqlalchemy.engine import Connection

from fleet.export.layout import CSV_COLUMNS
from fleet.export.render import _csv_cell, csv_safe
from fleet.firmware.models import DeviceFirmware
from fleet.registry.models import AuditEvent, iso_text
from fleet.status.models import ConnectionStatus

COLUMNS: tuple[str, ...] = ("firmware_reported", "firmware_target", "connection_state", "last_seen")
# what a CSV export's header names: the cached sections' columns, then these
EXPORT_COLUMNS: tuple[str, ...] = CSV_COLUMNS + COLUMNS
TARGET_ACTION = "firmware.target"  # rollouts: target = rollout, {"version", "devices"}

_json_str: Callable[[str], str] = json.encoder.encode_basestring
_EMPTY_CSV = "," * len(COLUMNS)
_EMPTY_JSON = "".join(f",{_json_str(name)}:null" for name in COLUMNS) + "}"
_JSON_KEYS = [f",{_json_str(name)}:" for name in COLUMNS]

Values = Sequence[str | None]


def csv_tail(values: Values) -> str:
    """The CSV cells to append to a row (with their leading commas)."""
    if not any(values):
        return _EMPTY_CSV
    reported, *rest = values
    cells = [_csv_cell(csv_safe(reported) if reported else reported)]
    cells += [_csv_cell(csv_safe(v) if v else v) for v in rest]
    return "," + ",".join(cells)


def json_tail(values: Values) -> str:
    """The JSON members to put before a row object's closing brace (and the brace)."""
    if not any(values):
        return _EMPTY_JSON
    parts = [
        key + ("null" if value is None else _json_str(value))
        for key, value in zip(_JSON_KEYS, values, strict=True)
    ]
    return "".join(parts) + "}"


def extend_text(fmt: str, line: str, values: Values) -> str:
    """``line`` (a CSV line or JSON object, as text) with the columns appended."""
    if fmt == "csv":
        return line + csv_tail(values)
    return line[:-1] + json_tail(values)


def append_sql(line: Any, fmt: str, dialect: str, source: Any, device_id: Any) -> tuple[Any, Any]:
    """The cached export's step, in SQL: ``line`` (a bytes expression: the stored CSV line or
    JSON object) with the columns appended, and ``source`` outer-joined to the two tables.

    No value needs escaping: a reported version is stored only if it is safe text
    (:func:`fleet.firmware.reports.is_safe_text`: no quote, backslash, comma or control
    character, and a letter or digit first), targets are catalogue versions, the state is
    ``online``/``offline`` and ``last_seen`` a UTC time; so the bytes equal what
    :func:`extend_text` writes on the other paths.
    """
    f = DeviceFirmware.__table__  # type: ignore[attr-defined]
    s = ConnectionStatus.__table__  # type: ignore[attr-defined]
    values = [f.c.reported_version, f.c.target_version, s.c.state, iso_text(s.c.last_seen, dialect)]
    if fmt == "csv":
        parts: list[Any] = []
        for value in values:
            parts += [literal(",", String), func.coalesce(value, literal("", String))]
        head = line
    else:
        parts = []
        for key, value in zip(_JSON_KEYS, values, strict=True):
            quoted = literal('"', String).op("||")(value).op("||")(literal('"', String))
            parts += [literal(key, String), func.coalesce(quoted, literal("null", String))]
        parts.append(literal("}", String))
        head = func.substr(line, 1, func.length(line) - 1)  # bytes: drop the closing brace
    tail = parts[0]
    for part in parts[1:]:
        tail = tail.op("||")(part)
    # a device with neither a firmware row nor a connection (most of a new fleet): a constant
    empty = _EMPTY_CSV if fmt == "csv" else _EMPTY_JSON
    nothing = and_(f.c.device_id.is_(None), s.c.device_id.is_(None))
    tail = case((nothing, literal(empty, String)), else_=tail)
    # bytes on both sides (PostgreSQL would render bytea || text as text)
    tail_bytes = (
        func.convert_to(tail, "UTF8") if dialect == "postgresql" else cast(tail, LargeBinary)
    )
    joined = source.outerjoin(f, f.c.device_id == device_id).outerjoin(
        s, s.c.device_id == device_id
    )
    return cast(head.op("||")(tail_bytes), LargeBinary), joined


def with_columns(query: Select[Any], device_id: Any, dialect: str) -> Select[Any]:
    """``query`` (whose rows are devices, ``device_id`` their ID column) with the four
    columns added, by outer joins on the two tables' primary keys."""
    f = DeviceFirmware.__table__  # type: ignore[attr-defined]
    s = ConnectionStatus.__table__  # type: ignore[attr-defined]
    froms = query.get_final_froms()
    joined = (
        froms[0].outerjoin(f, f.c.device_id == device_id).outerjoin(s, s.c.device_id == device_id)
    )
    return query.with_only_columns(
        *query.selected_columns,
        f.c.reported_version,
        f.c.target_version,
        s.c.state,
        iso_text(s.c.last_seen, dialect),
    ).select_from(joined)


def firmware_targets(
    conn: Connection,
    cutoff: str,
    seq_limit: int,
    lo: str | None = None,
    hi: str | None = None,
) -> dict[str, str | None]:
    """Each device's firmware target as the audit trail says up to ``cutoff`` (an audit
    ``ts``) and ``seq_limit``: the last ``firmware.target`` event naming it wins (``None``:
    cleared). Only devices with ``lo <= id < hi`` are kept (a replay part's range)."""
    e = AuditEvent.__table__  # type: ignore[attr-defined]
    query = (
        select(e.c.details)
        .where(e.c.action == TARGET_ACTION, e.c.ts <= cutoff, e.c.seq <= seq_limit)
        .order_by(e.c.seq)
    )
    targets: dict[str, str | None] = {}
    for (details,) in conn.execute(query):
        parsed = json.loads(details) if isinstance(details, str) else details
        version = parsed.get("version")
        for device_id in parsed.get("devices") or ():
            if (lo is None or device_id >= lo) and (hi is None or device_id < hi):
                targets[device_id] = version
    return targets
