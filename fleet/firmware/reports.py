"""Recording what devices say they run: ``device_firmware.reported_*`` and ``update_*``.

Every source (``fleet firmware report``, ``fleet status ingest``, Sparkplug births in
``fleet watch``, cloud status pulls) hands :func:`record_reports` a batch of :class:`Report`\\ s
inside the caller's write transaction. The rules:

- the newest report wins, per device, by the device's (or source's) own time ``at``: an older
  report or one at the same moment changes nothing (counted ``stale``);
- a report without a version (``version=None``, e.g. "update failed") keeps the version last
  reported and updates only the update state;
- a version that is not safe text (:func:`is_safe_text`: 1 to 64 characters, a letter or
  digit first, no quote, backslash, comma or control character) is refused (counted
  ``invalid``): exports append it to their rows in SQL, unescaped (fleet/export/telemetry.py);
- a report for a device the registry does not know, or has decommissioned, is counted
  (``unknown``, with the first IDs) and not stored: never raised;
- reports are telemetry, like connection events: they are not audited (they arrive by the
  thousand per second). Targets and pins are registry changes and are (fleet/firmware/pins.py).

Set-based: one ``IN (...)`` lookup and one executemany upsert per :data:`CHUNK` reports.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal, NamedTuple

from sqlalchemy import select
from sqlalchemy.engine import Connection
from sqlmodel import Session

from fleet import clock
from fleet.firmware.models import DeviceFirmware
from fleet.registry.bulk import bind_converter
from fleet.registry.models import Device
from fleet.statuses import DeviceStatus, FirmwareSource

CHUNK = 2000  # reports per lookup and per executemany
VERSION_MAX = 64  # device_firmware.reported_version

UpdateState = Literal["in-progress", "failed"]
UPDATE_STATES: tuple[str, ...] = ("in-progress", "failed")

_fw = DeviceFirmware.__table__  # type: ignore[attr-defined]
_device = Device.__table__  # type: ignore[attr-defined]

_COLUMNS = (
    "device_id",
    "reported_version",
    "reported_at",
    "reported_source",
    "update_state",
    "update_detail",
    "updated_at",
)


_UNSAFE = frozenset('"\\,' + "".join(map(chr, range(32))) + "\x7f")


def is_safe_text(version: str) -> bool:
    """Whether a reported version may be stored: 1 to 64 characters, a letter or digit first
    (no spreadsheet formula), and none that CSV or JSON would have to escape."""
    return 0 < len(version) <= VERSION_MAX and version[0].isalnum() and _UNSAFE.isdisjoint(version)


class Report(NamedTuple):
    """``device_id`` said at ``at`` that it runs ``version`` (``None``: not said) and, while
    updating, ``state`` (``"in-progress"`` or ``"failed"``, with ``detail``)."""

    device_id: str
    version: str | None
    source: FirmwareSource
    at: datetime
    state: UpdateState | None = None
    detail: str | None = None


@dataclass
class RecordedReports:
    """What one :func:`record_reports` call did."""

    recorded: int = 0  # reports stored (the newest per device)
    stale: int = 0  # not newer than what the device last reported (or superseded in the batch)
    unknown: int = 0  # for devices not in the registry, or decommissioned
    unknown_ids: list[str] = field(default_factory=list)  # the first 20
    invalid: int = 0  # versions that are not safe text (is_safe_text)

    def add(self, other: RecordedReports) -> None:
        """Fold another result into this one."""
        self.recorded += other.recorded
        self.stale += other.stale
        self.unknown += other.unknown
        self.invalid += other.invalid
        self.unknown_ids += other.unknown_ids[: max(0, 20 - len(self.unknown_ids))]

    def to_dict(self) -> dict[str, Any]:
        """The result as ``--json`` shows it."""
        return {
            "recorded": self.recorded,
            "stale": self.stale,
            "unknown": self.unknown,
            "unknown_ids": self.unknown_ids,
            "invalid": self.invalid,
        }


def record_reports(
    session: Session, reports: Iterable[Report], *, now: datetime | None = None
) -> RecordedReports:
    """Store ``reports`` in the caller's write transaction (newest per device wins; unknown
    devices counted, not raised). Not audited: reports are telemetry."""
    result = RecordedReports()
    updated_at = now or clock.now()
    pending: list[Report] = []
    for report in reports:
        pending.append(report)
        if len(pending) >= CHUNK:
            result.add(_record_chunk(session, pending, updated_at))
            pending = []
    if pending:
        result.add(_record_chunk(session, pending, updated_at))
    return result


def _record_chunk(session: Session, reports: list[Report], now: datetime) -> RecordedReports:
    result = RecordedReports()
    newest: dict[str, Report] = {}
    for report in reports:
        if report.at.tzinfo is None:
            raise ValueError(f"report for {report.device_id!r}: naive time {report.at}")
        if report.version is not None and not is_safe_text(report.version):
            result.invalid += 1
            continue
        kept = newest.get(report.device_id)
        if kept is None or report.at > kept.at:
            newest[report.device_id] = report
    result.stale = len(reports) - result.invalid - len(newest)
    conn = session.connection()
    known = _known(conn, list(newest))
    rows: list[dict[str, Any]] = []
    for device_id, report in newest.items():
        if device_id not in known:
            result.unknown += 1
            if len(result.unknown_ids) < 20:
                result.unknown_ids.append(device_id)
            continue
        last = known[device_id]
        if last is not None and report.at <= last:
            result.stale += 1
            continue
        rows.append(
            {
                "device_id": device_id,
                "reported_version": report.version,
                "reported_at": report.at,
                "reported_source": str(report.source),
                "update_state": report.state,
                "update_detail": (report.detail or None) and report.detail[:512],
                "updated_at": now,
            }
        )
    result.recorded = len(rows)
    _upsert(conn, rows)
    return result


def _known(conn: Connection, ids: list[str]) -> dict[str, datetime | None]:
    """The active devices among ``ids``, each with the time of its last report (or None)."""
    if conn.dialect.name == "postgresql":  # one array parameter, not 2,000 bound ones
        found = conn.exec_driver_sql(
            "SELECT d.id, f.reported_at FROM device d LEFT JOIN device_firmware f "
            "ON f.device_id = d.id WHERE d.id = ANY(%s) AND d.status = %s",
            (ids, str(DeviceStatus.ACTIVE)),
        )
        return {row[0]: row[1] for row in found}
    query = (
        select(_device.c.id, _fw.c.reported_at)
        .select_from(_device.outerjoin(_fw, _fw.c.device_id == _device.c.id))
        .where(_device.c.id.in_(ids), _device.c.status == DeviceStatus.ACTIVE)
    )
    return {row[0]: row[1] for row in conn.execute(query)}


def _upsert(conn: Connection, rows: list[dict[str, Any]]) -> None:
    """Insert or update the reported columns only (target and pin are left alone); the
    version is kept when a report has none; an older report never overwrites a newer one."""
    if not rows:
        return
    if conn.dialect.name == "sqlite":
        converters = [bind_converter(_fw.c[name].type, conn.dialect) for name in _COLUMNS]
        values = [
            tuple(
                row[name] if convert is None else convert(row[name])
                for name, convert in zip(_COLUMNS, converters, strict=True)
            )
            for row in rows
        ]
        conn.exec_driver_sql(
            f"INSERT INTO device_firmware ({', '.join(_COLUMNS)}) "
            f"VALUES ({', '.join('?' * len(_COLUMNS))}) "
            "ON CONFLICT (device_id) DO UPDATE SET "
            "reported_version = coalesce(excluded.reported_version, reported_version), "
            "reported_at = excluded.reported_at, reported_source = excluded.reported_source, "
            "update_state = excluded.update_state, update_detail = excluded.update_detail, "
            "updated_at = excluded.updated_at "
            "WHERE reported_at IS NULL OR excluded.reported_at > reported_at",
            values,
        )
        return
    # PostgreSQL: one statement per chunk, the rows as arrays (unnest): several times the
    # speed of an executemany of single-row upserts
    columns = ", ".join(_COLUMNS)
    arrays = ", ".join(
        f"%s::{'timestamptz' if name.endswith('_at') else 'text'}[]" for name in _COLUMNS
    )
    conn.exec_driver_sql(
        f"INSERT INTO device_firmware AS f ({columns}) SELECT * FROM unnest({arrays}) "
        "ON CONFLICT (device_id) DO UPDATE SET "
        "reported_version = coalesce(excluded.reported_version, f.reported_version), "
        "reported_at = excluded.reported_at, reported_source = excluded.reported_source, "
        "update_state = excluded.update_state, update_detail = excluded.update_detail, "
        "updated_at = excluded.updated_at "
        "WHERE f.reported_at IS NULL OR excluded.reported_at > f.reported_at",
        tuple([row[name] for row in rows] for name in _COLUMNS),
    )
