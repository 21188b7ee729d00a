"""Auditor exports: the registry (now, or as it was at a moment) and the audit trail.

A device export has one row per device with its newest certificate. Rows are built from
*sections* (:data:`SECTIONS`): the device's own fields, then one nested object per section
(``certificate`` today; cloud registrations and firmware later add theirs). A section gives

* its fields, in column order (CSV columns are ``prefix + field``);
* the SQL expressions producing them for the live export (text, already formatted, so rows
  stream from the database cursor to the writer without per-value Python objects);
* how audit events change them, for ``--as-of`` (the state is rebuilt by replaying, per
  device, every event up to and including that moment).

CSV is flat (RFC 4180 via :mod:`csv`, CRLF line ends, a header row of :data:`CSV_COLUMNS`);
free-text cells that start with ``=``, ``+``, ``-``, ``@``, TAB or CR get a leading ``'`` so
spreadsheets do not run them as formulas (OWASP's advice). JSON (an array, one device per
line) and JSONL are nested and unescaped. Nothing secret is exported: no keys, no PEM.

Written files appear whole or not at all: rows stream to a temporary file beside the target,
which is renamed into place once the manifest and signatures (:mod:`fleet.signing`) exist.
"""

from __future__ import annotations

import csv
import json
import os
import sys
import tempfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import lru_cache
from pathlib import Path
from typing import Any, TextIO

from sqlalchemy import Select, String, Text, case, cast, func, literal, literal_column, select
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.sql.elements import ColumnElement

from fleet import __version__, audit, ca
from fleet.db import read_session
from fleet.errors import InvalidInput
from fleet.identifiers import parse_label, validate_label, validate_text_field
from fleet.models import AuditEvent, AuditHead, Certificate, Device, UTCDateTime
from fleet.signing import (
    SignatureError,
    Signer,
    load_root,
    load_signer,
    sha256_file,
    sign_detached,
    verify_detached,
)
from fleet.workspace import Passphrase, Workspace

FORMATS = ("csv", "json", "jsonl")
DEVICE_STATUSES = ("active", "decommissioned")
CERT_STATUSES = ("active", "revoked", "expired", "none")
FILTER_FIELDS = ("model", "serial", "status", "cert_status", "label.KEY")
# Cells starting with these are formulas (or become one after a spreadsheet strips the
# whitespace), see https://owasp.org/www-community/attacks/CSV_Injection.
FORMULA_PREFIXES = ("=", "+", "-", "@", "\t", "\r")
MANIFEST_VERSION = 1
BATCH_ROWS = 5000


# --- filters ----------------------------------------------------------------------------


@dataclass(frozen=True)
class ExportFilters:
    """Rows must match every given filter. ``cert_status`` ``none`` means no certificate."""

    model: str | None = None
    serial: str | None = None
    status: str | None = None
    cert_status: str | None = None
    labels: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """The filters as recorded in a manifest (only those given)."""
        given: dict[str, Any] = {
            k: v
            for k, v in (
                ("model", self.model),
                ("serial", self.serial),
                ("status", self.status),
                ("cert_status", self.cert_status),
            )
            if v is not None
        }
        if self.labels:
            given["labels"] = dict(sorted(self.labels.items()))
        return given


def parse_filters(
    *,
    model: str | None = None,
    status: str | None = None,
    labels: Iterable[str] = (),
    where: Iterable[str] = (),
) -> ExportFilters:
    """Build filters from ``--model``/``--status``/``--label K=V`` and ``--where FIELD=VALUE``
    (fields: :data:`FILTER_FIELDS`). Unknown fields and bad values raise :class:`InvalidInput`.
    """
    values: dict[str, str] = {}
    wanted_labels: dict[str, str] = {}

    def put(name: str, value: str) -> None:
        if name in values and values[name] != value:
            raise InvalidInput(f"filter {name} given twice with different values")
        values[name] = value

    if model is not None:
        put("model", model)
    if status is not None:
        put("status", status)
    for item in labels:
        key, value = parse_label(item)
        wanted_labels[key] = value
    for item in where:
        name, sep, value = item.partition("=")
        if not sep:
            raise InvalidInput(f"filter {item!r} must be FIELD=VALUE")
        if name.startswith("label."):
            key, value = validate_label(name[len("label.") :], value)
            wanted_labels[key] = value
        elif name in ("model", "serial", "status", "cert_status"):
            put(name, value)
        else:
            raise InvalidInput(
                f"unknown filter field {name!r}: use one of {', '.join(FILTER_FIELDS)}"
            )
    for name in ("model", "serial"):
        validate_text_field(name, values.get(name))
    if values.get("status", "active") not in DEVICE_STATUSES:
        raise InvalidInput(f"device status must be one of {', '.join(DEVICE_STATUSES)}")
    if values.get("cert_status", "active") not in CERT_STATUSES:
        raise InvalidInput(f"certificate status must be one of {', '.join(CERT_STATUSES)}")
    return ExportFilters(
        model=values.get("model"),
        serial=values.get("serial"),
        status=values.get("status"),
        cert_status=values.get("cert_status"),
        labels=wanted_labels,
    )


# --- sections: the row layout -----------------------------------------------------------

Cells = list[Any]


@dataclass
class ReplayedDevice:
    """One device's state while replaying its audit events (``--as-of``)."""

    id: str
    fields: dict[str, Any] = field(default_factory=dict)
    # per section key: whatever that section keeps (certificates: serial -> fields)
    sections: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class LiveContext:
    """What a section's SQL may refer to: the device table, the export moment, the dialect."""

    device: Any  # the device Table
    now: datetime
    dialect: str

    def iso(self, column: Any) -> ColumnElement[Any]:
        """SQL producing :func:`fleet.views.iso` text (UTC, seconds, ``Z``) or NULL."""
        if self.dialect == "sqlite":
            return func.strftime("%Y-%m-%dT%H:%M:%SZ", column)
        return func.to_char(func.timezone("UTC", column), 'YYYY-MM-DD"T"HH24:MI:SS"Z"')


@dataclass(frozen=True)
class Section:
    """A group of export fields; ``key`` ``None`` means the device's top-level fields.

    Values are text or ``None`` (the live SQL formats them; replay produces the same text),
    so CSV, JSON and ``--as-of`` output stay byte-identical.
    """

    key: str | None
    fields: tuple[str, ...]
    csv_prefix: str
    # fields holding user-given free text (formula-escaped in CSV)
    text_fields: frozenset[str]
    # (context, from_clause) -> (column expressions in ``fields`` order, new from clause)
    live: Callable[[LiveContext, Any], tuple[list[ColumnElement[Any]], Any]]
    # action -> handler(state, event details, event ts)
    replay: dict[str, Callable[[ReplayedDevice, dict[str, Any], str], None]]
    # (state, as-of moment) -> values in ``fields`` order
    values: Callable[[ReplayedDevice, datetime], list[Any]]


def _ts_iso(ts: str) -> str:
    """Audit ``ts`` (``...T10:00:00.123456Z``) as :func:`fleet.views.iso` text."""
    return ts[:19] + "Z"


def _iso_text(text: str) -> str:
    return datetime.fromisoformat(text).astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@lru_cache(maxsize=4096)
def canonical_labels(text: str | None) -> str:
    """Labels JSON text (any key order or spacing) in canonical form: sorted, compact."""
    return audit.canonical_json(json.loads(text) if text else {})


@lru_cache(maxsize=4096)
def _labels_object(text: str) -> dict[str, str]:
    parsed: dict[str, str] = json.loads(text)
    return parsed


DEVICE_FIELDS = (
    "id",
    "model",
    "serial",
    "status",
    "labels",
    "created_at",
    "updated_at",
    "decommissioned_at",
    "decommission_reason",
)


def _device_live(ctx: LiveContext, source: Any) -> tuple[list[ColumnElement[Any]], Any]:
    d = ctx.device.c
    columns = [
        d.id,
        d.model,
        d.serial,
        d.status,
        cast(d.labels, Text),
        ctx.iso(d.created_at),
        ctx.iso(d.updated_at),
        ctx.iso(d.decommissioned_at),
        d.decommission_reason,
    ]
    return columns, source


def _device_add(state: ReplayedDevice, details: dict[str, Any], ts: str) -> None:
    _device_update(state, details, ts)
    state.fields["created_at"] = _ts_iso(ts)


def _device_update(state: ReplayedDevice, details: dict[str, Any], ts: str) -> None:
    state.fields.update(
        model=details.get("model"),
        serial=details.get("serial"),
        labels=audit.canonical_json(details.get("labels") or {}),
        status=details.get("status", "active"),
        updated_at=_ts_iso(ts),
    )


def _device_decommission(state: ReplayedDevice, details: dict[str, Any], ts: str) -> None:
    state.fields.update(
        status=details.get("status", "decommissioned"),
        decommissioned_at=_ts_iso(ts),
        decommission_reason=details.get("reason"),
        updated_at=_ts_iso(ts),
    )


def _device_touch(state: ReplayedDevice, details: dict[str, Any], ts: str) -> None:
    state.fields["updated_at"] = _ts_iso(ts)


def _device_values(state: ReplayedDevice, as_of: datetime) -> list[Any]:
    f = state.fields
    return [
        state.id,
        f.get("model"),
        f.get("serial"),
        f.get("status", "active"),
        f.get("labels", "{}"),
        f.get("created_at"),
        f.get("updated_at"),
        f.get("decommissioned_at"),
        f.get("decommission_reason"),
    ]


DEVICE_SECTION = Section(
    key=None,
    fields=DEVICE_FIELDS,
    csv_prefix="",
    text_fields=frozenset({"model", "serial", "decommission_reason"}),
    live=_device_live,
    replay={
        "device.add": _device_add,
        "device.update": _device_update,
        "device.decommission": _device_decommission,
        "cert.renew": _device_touch,
    },
    values=_device_values,
)

CERT_FIELDS = (
    "serial",
    "fingerprint_sha256",
    "not_before",
    "not_after",
    "status",
    "revoked_at",
    "revocation_reason",
    "profile",
    "key_type",
    "key_origin",
)


def _cert_live(ctx: LiveContext, source: Any) -> tuple[list[ColumnElement[Any]], Any]:
    c = Certificate.__table__.alias("cert")  # type: ignore[attr-defined]
    newer = Certificate.__table__.alias("newest")  # type: ignore[attr-defined]
    # SQLite joins on the rowid: the serial's index is random access, the rowid is not
    # (about 40% faster at 1M devices, see docs/export.md).
    key, newer_key = (
        (literal_column("cert.rowid"), literal_column("newest.rowid"))
        if ctx.dialect == "sqlite"
        else (c.c.serial, newer.c.serial)
    )
    newest = (
        select(newer_key)
        .where(newer.c.device_id == ctx.device.c.id)
        .order_by(newer.c.issued_at.desc(), newer.c.serial.desc())
        .limit(1)
        .scalar_subquery()
    )
    now = literal(ctx.now, UTCDateTime())
    status = case(
        (c.c.serial.is_(None), None),
        (c.c.status == "revoked", "revoked"),
        (c.c.not_after < now, "expired"),
        else_="active",
    )
    columns = [
        c.c.serial,
        c.c.fingerprint_sha256,
        ctx.iso(c.c.not_before),
        ctx.iso(c.c.not_after),
        cast(status, String),
        ctx.iso(c.c.revoked_at),
        c.c.revocation_reason,
        c.c.profile,
        c.c.key_type,
        c.c.key_origin,
    ]
    return columns, source.outerjoin(c, key == newest)


def _certs(state: ReplayedDevice) -> dict[str, dict[str, Any]]:
    certs: dict[str, dict[str, Any]] = state.sections.setdefault("certificate", {})
    return certs


def _cert_issue(state: ReplayedDevice, details: dict[str, Any], ts: str) -> None:
    cert = details.get("certificate")
    if cert:
        _certs(state)[cert["serial"]] = {**cert, "issued_ts": ts}
    _cert_revoke_many(state, details.get("revoked") or [], "superseded", ts)


def _cert_revoke_many(state: ReplayedDevice, serials: list[str], reason: str, ts: str) -> None:
    certs = _certs(state)
    for serial in serials:
        if serial in certs:
            certs[serial].update(revoked_ts=ts, revocation_reason=reason)


def _cert_revoke(state: ReplayedDevice, details: dict[str, Any], ts: str) -> None:
    _cert_revoke_many(state, [details["serial"]], details.get("reason") or "unspecified", ts)


def _cert_decommission(state: ReplayedDevice, details: dict[str, Any], ts: str) -> None:
    _cert_revoke_many(state, details.get("revoked") or [], "cessationOfOperation", ts)


def _cert_values(state: ReplayedDevice, as_of: datetime) -> list[Any]:
    certs = _certs(state)
    if not certs:
        return [None] * len(CERT_FIELDS)
    newest = max(certs.values(), key=lambda c: (c["issued_ts"], c["serial"]))
    revoked_ts = newest.get("revoked_ts")
    if revoked_ts is not None:
        status = "revoked"
    elif datetime.fromisoformat(newest["not_after"]) < as_of:
        status = "expired"
    else:
        status = "active"
    return [
        newest["serial"],
        newest["fingerprint_sha256"],
        _iso_text(newest["not_before"]),
        _iso_text(newest["not_after"]),
        status,
        _ts_iso(revoked_ts) if revoked_ts else None,
        newest.get("revocation_reason"),
        newest.get("profile"),
        newest.get("key_type"),
        newest.get("key_origin"),
    ]


CERTIFICATE_SECTION = Section(
    key="certificate",
    fields=CERT_FIELDS,
    csv_prefix="cert_",
    text_fields=frozenset(),
    live=_cert_live,
    replay={
        "device.add": _cert_issue,
        "cert.renew": _cert_issue,
        "cert.revoke": _cert_revoke,
        "device.decommission": _cert_decommission,
    },
    values=_cert_values,
)

SECTIONS: tuple[Section, ...] = (DEVICE_SECTION, CERTIFICATE_SECTION)
CSV_COLUMNS: tuple[str, ...] = tuple(
    ("device_id" if s.key is None and f == "id" else f if s.key is None else s.csv_prefix + f)
    for s in SECTIONS
    for f in s.fields
)


_json_str: Callable[[str], str] = json.encoder.encode_basestring
_json_dumps = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode


class _Layout:
    """Cell positions derived from :data:`SECTIONS`, computed once."""

    def __init__(self, sections: tuple[Section, ...]) -> None:
        self.sections = sections
        self.spans: list[tuple[Section, int, int]] = []
        start = 0
        for section in sections:
            self.spans.append((section, start, start + len(section.fields)))
            start += len(section.fields)
        self.width = start
        self.index = {
            (s.key, f): start + i for s, start, _ in self.spans for i, f in enumerate(s.fields)
        }
        self.text_cells = [
            self.index[(s.key, f)] for s in sections for f in s.fields if f in s.text_fields
        ]
        self.labels = self.index[(None, "labels")]
        self.replay_actions = sorted({a for s in sections for a in s.replay})
        # JSON text per section, "%s" per field: filled with already-encoded values, this is
        # byte for byte json.dumps(row_to_object(cells)) and ~3x faster.
        self.json_parts: list[tuple[int, int, str, str | None]] = []
        for section, start, end in self.spans:
            members = ",".join(f"{_json_str(f)}:%s" for f in section.fields)
            if section.key is None:
                self.json_parts.append((start, end, "{" + members, None))
            else:
                name = _json_str(section.key)
                self.json_parts.append((start, end, f",{name}:{{{members}}}", f",{name}:null"))

    def cell(self, section: str | None, name: str) -> int:
        return self.index[(section, name)]


LAYOUT = _Layout(SECTIONS)
_JSON_TEXT_CELLS = (LAYOUT.labels,)  # cells that already hold JSON text (canonical labels)


def row_to_json(cells: Cells) -> str:
    """``row_to_object(cells)`` as compact JSON text (UTF-8 kept), built without the dict."""
    values = [
        "null" if v is None else _json_str(v) if v.__class__ is str else _json_dumps(v)
        for v in cells
    ]
    for i in _JSON_TEXT_CELLS:
        values[i] = cells[i]
    out = []
    for start, end, template, null_text in LAYOUT.json_parts:
        if null_text is not None and all(v is None for v in cells[start:end]):
            out.append(null_text)
        else:
            out.append(template % tuple(values[start:end]))
    out.append("}")
    return "".join(out)


def csv_safe(value: str) -> str:
    """A cell made safe against spreadsheet formula injection (see module docstring)."""
    return "'" + value if value.startswith(FORMULA_PREFIXES) else value


def _csv_cells(rows: Iterable[Cells], counter: list[int]) -> Iterator[Cells]:
    text_cells = LAYOUT.text_cells
    count = 0
    for cells in rows:
        count += 1
        for i in text_cells:
            value = cells[i]
            if value and value.startswith(FORMULA_PREFIXES):
                cells[i] = "'" + value
        yield cells
    counter[0] = count


def row_to_object(cells: Cells) -> dict[str, Any]:
    """A row as nested JSON: device fields on top, one object (or null) per section."""
    obj: dict[str, Any] = {}
    for section, start, end in LAYOUT.spans:
        values = cells[start:end]
        if section.key is None:
            obj.update(zip(section.fields, values, strict=True))
        else:
            obj[section.key] = (
                None
                if all(v is None for v in values)
                else dict(zip(section.fields, values, strict=True))
            )
    obj["labels"] = dict(_labels_object(obj["labels"]))  # a copy: the parsed one is cached
    return obj


# --- reading rows: live and as-of ------------------------------------------------------


def live_query(dialect: str, filters: ExportFilters, now: datetime) -> Select[Any]:
    """The SELECT behind a live export (``bench/export.py`` hands it to ``sqlite3 -csv``)."""
    device = Device.__table__  # type: ignore[attr-defined]
    ctx = LiveContext(device, now, dialect)
    columns: list[ColumnElement[Any]] = []
    source: Any = device
    for section in SECTIONS:
        more, source = section.live(ctx, source)
        columns.extend(more)
    query = select(*columns).select_from(source)
    d = device.c
    if filters.model is not None:
        query = query.where(d.model == filters.model)
    if filters.serial is not None:
        query = query.where(d.serial == filters.serial)
    if filters.status is not None:
        query = query.where(d.status == filters.status)
    for key, value in filters.labels.items():
        query = query.where(d.labels[key].as_string() == value)
    return query.order_by(d.id)


def _live_rows(conn: Connection, filters: ExportFilters, now: datetime) -> Iterator[Cells]:
    """Current rows, streamed from one query (one snapshot), ordered by device ID."""
    query = live_query(conn.dialect.name, filters, now)
    result = conn.execution_options(stream_results=True, yield_per=BATCH_ROWS).execute(query)
    labels_at = LAYOUT.labels
    for row in result:
        cells = list(row)
        cells[labels_at] = canonical_labels(cells[labels_at])
        yield cells


def _replayed_rows(conn: Connection, as_of: datetime) -> Iterator[Cells]:
    """Rows as they were at ``as_of``: each device's events up to then, replayed in order.

    Events are read ordered by (target, seq), so only one device's state is in memory.
    """
    e = AuditEvent.__table__  # type: ignore[attr-defined]
    cutoff = audit.format_ts(as_of)
    query = (
        select(e.c.target, e.c.action, e.c.ts, e.c.details)
        .where(e.c.action.in_(LAYOUT.replay_actions), e.c.ts <= cutoff)
        .order_by(e.c.target, e.c.seq)
    )
    state: ReplayedDevice | None = None
    loads = json.loads
    result = conn.execution_options(stream_results=True, yield_per=BATCH_ROWS).execute(query)
    for target, action, ts, details in result:
        if state is None or state.id != target:
            if state is not None and "created_at" in state.fields:
                yield _replayed_cells(state, as_of)
            state = ReplayedDevice(target)
        parsed = loads(details)
        for section in SECTIONS:
            handler = section.replay.get(action)
            if handler is not None:
                handler(state, parsed, ts)
    if state is not None and "created_at" in state.fields:
        yield _replayed_cells(state, as_of)


def _replayed_cells(state: ReplayedDevice, as_of: datetime) -> Cells:
    cells: Cells = []
    for section in SECTIONS:
        cells.extend(section.values(state, as_of))
    return cells


def _matcher(filters: ExportFilters) -> Callable[[Cells], bool] | None:
    """A Python predicate for the filters (used on replayed rows), or None if none given."""
    checks: list[tuple[int, str]] = []
    for name in ("model", "serial", "status"):
        value = getattr(filters, name)
        if value is not None:
            checks.append((LAYOUT.cell(None, name), value))
    cert_status = filters.cert_status
    status_at = LAYOUT.cell("certificate", "status")
    labels_at = LAYOUT.labels
    wanted = dict(filters.labels)
    if not checks and cert_status is None and not wanted:
        return None

    def matches(cells: Cells) -> bool:
        if any(cells[i] != v for i, v in checks):
            return False
        if cert_status is not None and (cells[status_at] or "none") != cert_status:
            return False
        if wanted:
            labels = _labels_object(cells[labels_at])
            return all(labels.get(k) == v for k, v in wanted.items())
        return True

    return matches


# --- writing ----------------------------------------------------------------------------


def _write_rows(stream: TextIO, fmt: str, rows: Iterable[Cells]) -> int:
    """Write rows in ``fmt``; return how many."""
    if fmt == "csv":
        counter = [0]
        writer = csv.writer(stream, lineterminator="\r\n")
        writer.writerow(CSV_COLUMNS)
        writer.writerows(_csv_cells(rows, counter))
        return counter[0]
    count = 0
    write = stream.write
    if fmt == "jsonl":
        for cells in rows:
            write(row_to_json(cells) + "\n")
            count += 1
        return count
    write("[")
    separator = "\n"
    for cells in rows:
        write(separator)
        write(row_to_json(cells))
        separator = ",\n"
        count += 1
    write("\n]\n" if count else "]\n")
    return count


@dataclass(frozen=True)
class _Snapshot:
    rows: int
    head_seq: int
    head_hash: str


def _read_head(conn: Connection) -> tuple[int, str]:
    h = AuditHead.__table__  # type: ignore[attr-defined]
    row = conn.execute(select(h.c.seq, h.c.hash).where(h.c.id == 1)).first()
    return (0, audit.GENESIS_HASH) if row is None else (int(row[0]), str(row[1]))


def _snapshot_connection(engine: Engine) -> Any:
    """A read-only connection whose statements all see one snapshot of the registry."""
    if engine.dialect.name == "postgresql":
        return engine.connect().execution_options(isolation_level="REPEATABLE READ")
    return engine.connect().execution_options(fleet_readonly=True)


def write_devices(
    ws: Workspace,
    stream: TextIO,
    *,
    fmt: str = "csv",
    filters: ExportFilters | None = None,
    as_of: datetime | None = None,
    now: datetime | None = None,
) -> _Snapshot:
    """Stream the device export to ``stream``; return the row count and the audit head the
    rows correspond to (read in the same snapshot)."""
    if fmt not in FORMATS:
        raise InvalidInput(f"format must be one of {', '.join(FORMATS)}")
    filters = filters or ExportFilters()
    engine = ws.open_registry()
    with _snapshot_connection(engine) as conn, conn.begin():
        head_seq, head_hash = _read_head(conn)
        rows: Iterable[Cells]
        if as_of is None:
            rows = _live_rows(conn, filters, now or datetime.now(UTC))
            if filters.cert_status is not None:
                rows = filter(_matcher(ExportFilters(cert_status=filters.cert_status)), rows)
        else:
            rows = _replayed_rows(conn, as_of)
            matcher = _matcher(filters)
            if matcher is not None:
                rows = filter(matcher, rows)
        count = _write_rows(stream, fmt, rows)
    return _Snapshot(count, head_seq, head_hash)


def write_audit(
    ws: Workspace,
    stream: TextIO,
    *,
    since: datetime | None = None,
    until: datetime | None = None,
) -> _Snapshot:
    """Stream audit events in ``[since, until)`` as JSONL, one canonical-JSON event (its
    hashed fields plus ``hash``) per line."""
    engine = ws.open_registry()
    count = 0
    with read_session(engine) as session:
        conn = session.connection()
        head_seq, head_hash = _read_head(conn)
        for event in audit.iter_events(session, since=since, until=until):
            if event.seq > head_seq:  # appended after our head read (PostgreSQL)
                break
            stream.write(audit.canonical_json(audit.event_to_dict(event)) + "\n")
            count += 1
    return _Snapshot(count, head_seq, head_hash)


# --- files, manifests, signatures -------------------------------------------------------


def manifest_path(path: Path) -> Path:
    """``FILE.manifest.json``"""
    return path.with_name(path.name + ".manifest.json")


def signature_path(path: Path) -> Path:
    """``FILE.p7s``: the detached signature over ``FILE``."""
    return path.with_name(path.name + ".p7s")


def _temp_beside(path: Path) -> Path:
    if path.is_dir():
        raise InvalidInput(f"cannot write {path}: it is a directory")
    folder = path.parent if str(path.parent) else Path(".")
    try:
        fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=folder)
    except OSError as exc:
        raise InvalidInput(f"cannot write {path}: {exc.strerror}") from exc
    os.close(fd)
    return Path(name)


def _export_to_file(
    out: Path,
    produce: Callable[[TextIO], _Snapshot],
    describe: Callable[[_Snapshot], dict[str, Any]],
    signer: Signer | None,
    now: datetime,
) -> dict[str, Any]:
    """Write ``out`` (and, when signing, its manifest and signatures) all or nothing."""
    temps: list[Path] = [_temp_beside(out)]
    try:
        with temps[0].open("w", encoding="utf-8", newline="", buffering=1 << 20) as handle:
            snapshot = produce(handle)
        os.chmod(temps[0], 0o644)
        digest, size = sha256_file(temps[0])
        result: dict[str, Any] = {
            "file": str(out),
            "rows": snapshot.rows,
            "sha256": digest,
            "bytes": size,
        }
        renames = [(temps[0], out)]
        if signer is not None:
            manifest = {
                "fleet_export_manifest": MANIFEST_VERSION,
                "file": out.name,
                **describe(snapshot),
                "rows": snapshot.rows,
                "sha256": digest,
                "bytes": size,
                "audit_head": {"seq": snapshot.head_seq, "hash": snapshot.head_hash},
                "fleet_version": __version__,
                "created_at": audit.format_ts(now),
                "signer": signer.summary(),
            }
            manifest_bytes = (json.dumps(manifest, indent=2, ensure_ascii=False) + "\n").encode()
            extra = [
                (manifest_path(out), manifest_bytes),
                (signature_path(out), sign_detached(signer, temps[0])),
                (signature_path(manifest_path(out)), sign_detached(signer, manifest_bytes)),
            ]
            for final, data in extra:
                temp = _temp_beside(final)
                temps.append(temp)
                temp.write_bytes(data)
                os.chmod(temp, 0o644)
                renames.insert(0, (temp, final))  # the export itself is renamed last
            result.update(
                manifest=str(manifest_path(out)),
                signature=str(signature_path(out)),
                manifest_signature=str(signature_path(manifest_path(out))),
            )
        for temp, final in renames:
            os.replace(temp, final)
        return result
    except OSError as exc:
        raise InvalidInput(f"cannot write {out}: {exc.strerror or exc}") from exc
    finally:
        for temp in temps:
            temp.unlink(missing_ok=True)


def _resolve_sign(sign: bool | None, out: Path | None) -> bool:
    if sign and out is None:
        raise InvalidInput("--sign needs --out FILE (signatures are written beside the file)")
    return out is not None if sign is None else sign


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
) -> dict[str, Any]:
    """Export every device (matching ``filters``) with its newest certificate.

    To ``out`` (all or nothing; signed with a manifest unless ``sign`` is False) or, without
    ``out``, to ``stream`` (default stdout, never signed). ``as_of`` rebuilds the registry as
    it was at that moment from the audit trail. Returns a summary (rows, file, sha256...).
    Example::

        export_devices(ws, fmt="jsonl", out=Path("devices.jsonl"), as_of=datetime(2026, 6, 30))
    """
    if fmt not in FORMATS:
        raise InvalidInput(f"format must be one of {', '.join(FORMATS)}")
    filters = filters or ExportFilters()
    signing = _resolve_sign(sign, out)
    moment = now or datetime.now(UTC)
    ws.open_registry()
    if out is None:
        snapshot = write_devices(
            ws, stream or sys.stdout, fmt=fmt, filters=filters, as_of=as_of, now=moment
        )
        return {"file": None, "rows": snapshot.rows}
    _temp_beside(out).unlink()  # fail on an unwritable path before asking for the passphrase
    signer = load_signer(ws, passphrase) if signing else None

    def describe(_snapshot: _Snapshot) -> dict[str, Any]:
        return {
            "kind": "devices",
            "format": fmt,
            "columns": list(CSV_COLUMNS) if fmt == "csv" else None,
            "filters": filters.to_dict(),
            "as_of": audit.format_ts(as_of) if as_of is not None else None,
        }

    return _export_to_file(
        out,
        lambda handle: write_devices(ws, handle, fmt=fmt, filters=filters, as_of=as_of, now=moment),
        describe,
        signer,
        moment,
    )


def export_audit(
    ws: Workspace,
    *,
    out: Path | None = None,
    stream: TextIO | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    sign: bool | None = None,
    passphrase: Passphrase | None = None,
    now: datetime | None = None,
) -> dict[str, Any]:
    """Export the audit events in ``[since, until)`` as JSONL with their hashes, signed like
    :func:`export_devices`. Each line is the event's canonical JSON (see :mod:`fleet.audit`)
    plus ``hash``, so an auditor can recompute the chain.
    Example::

        export_audit(ws, out=Path("audit.jsonl"), since=datetime(2026, 1, 1, tzinfo=UTC))
    """
    if since is not None and until is not None and until <= since:
        raise InvalidInput("--until must be later than --since")
    signing = _resolve_sign(sign, out)
    moment = now or datetime.now(UTC)
    ws.open_registry()
    if out is None:
        snapshot = write_audit(ws, stream or sys.stdout, since=since, until=until)
        return {"file": None, "rows": snapshot.rows}
    _temp_beside(out).unlink()
    signer = load_signer(ws, passphrase) if signing else None

    def describe(_snapshot: _Snapshot) -> dict[str, Any]:
        return {
            "kind": "audit",
            "format": "jsonl",
            "filters": {
                k: audit.format_ts(v) for k, v in (("since", since), ("until", until)) if v
            },
        }

    return _export_to_file(
        out,
        lambda handle: write_audit(ws, handle, since=since, until=until),
        describe,
        signer,
        moment,
    )


# --- verification -----------------------------------------------------------------------


@dataclass(frozen=True)
class Check:
    """One verification step: ``name`` is signature, chain, manifest signature, hash,
    row count or audit chain."""

    name: str
    ok: bool
    detail: str


@dataclass
class VerifyReport:
    """Outcome of :func:`verify_export`."""

    file: str
    checks: list[Check] = field(default_factory=list)
    manifest: dict[str, Any] | None = None

    @property
    def ok(self) -> bool:
        return bool(self.checks) and all(c.ok for c in self.checks)

    def failed(self) -> list[Check]:
        """The checks that failed."""
        return [c for c in self.checks if not c.ok]

    def to_dict(self) -> dict[str, Any]:
        """JSON view."""
        return {
            "file": self.file,
            "ok": self.ok,
            "checks": [{"name": c.name, "ok": c.ok, "detail": c.detail} for c in self.checks],
            "manifest": self.manifest,
        }


def verify_export(
    path: Path, *, root: Path | None = None, ws: Workspace | None = None
) -> VerifyReport:
    """Check an export against its manifest and detached signatures.

    The chain is checked up to ``root`` (an auditor's copy of the root certificate), else to
    the workspace's root. Every check runs; the report names each that failed.
    """
    if not path.is_file():
        raise InvalidInput(f"cannot read {path}: no such file")
    if root is not None:
        trusted = load_root(root)
    else:
        if ws is None:
            raise InvalidInput("give --ca ROOT.pem (or a workspace) to check the chain against")
        trusted = ca.load_ca_certificates(ws.home)[1]
    report = VerifyReport(str(path))

    def check_signature(sig: Path, content: bytes | Path, label: str) -> bool:
        try:
            pem = sig.read_bytes()
        except OSError:
            report.checks.append(Check(label, False, f"{sig.name} is missing"))
            return False
        try:
            info = verify_detached(pem, content, trusted)
        except SignatureError as exc:
            name = label if exc.check == "signature" else "chain"
            report.checks.append(Check(name, False, f"{sig.name}: {exc}"))
            return False
        report.checks.append(
            Check(label, True, f"{sig.name} signed by {info.signer.subject.rfc4514_string()}")
        )
        return True

    manifest_file = manifest_path(path)
    try:
        manifest_bytes = manifest_file.read_bytes()
        manifest = json.loads(manifest_bytes)
        if not isinstance(manifest, dict):
            raise ValueError("not an object")
    except (OSError, ValueError) as exc:
        report.checks.append(Check("manifest", False, f"{manifest_file.name} unreadable: {exc}"))
        manifest_bytes, manifest = b"", None
    report.manifest = manifest
    sig_ok = check_signature(signature_path(path), path, "signature")
    man_ok = manifest is not None and check_signature(
        signature_path(manifest_file), manifest_bytes, "manifest signature"
    )
    if sig_ok and man_ok:
        report.checks.append(Check("chain", True, f"chains to {trusted.subject.rfc4514_string()}"))
    if manifest is None:
        return report
    digest, size = sha256_file(path)
    if digest == manifest.get("sha256") and size == manifest.get("bytes"):
        report.checks.append(Check("hash", True, f"sha256 {digest}"))
    else:
        report.checks.append(
            Check(
                "hash",
                False,
                f"sha256 of {path.name} is {digest} ({size} bytes); the manifest says "
                f"{manifest.get('sha256')} ({manifest.get('bytes')} bytes)",
            )
        )
    counted, problem = _count_rows(path, str(manifest.get("format")))
    expected = manifest.get("rows")
    if problem is None and counted == expected:
        report.checks.append(Check("row count", True, f"{counted} rows"))
    else:
        report.checks.append(
            Check(
                "row count",
                False,
                problem or f"{path.name} holds {counted} rows; the manifest says {expected}",
            )
        )
    if manifest.get("kind") == "audit":
        report.checks.append(_check_audit_chain(path))
    return report


def _count_rows(path: Path, fmt: str) -> tuple[int, str | None]:
    """Rows in an export file, or a description of why it cannot be read as ``fmt``."""
    count = 0
    try:
        with path.open(encoding="utf-8", newline="") as handle:
            if fmt == "csv":
                reader = csv.reader(handle)
                header = next(reader, None)
                if header is None:
                    return 0, f"{path.name} has no CSV header"
                count = sum(1 for _ in reader)
                return count, None
            if fmt == "jsonl":
                for number, line in enumerate(handle, 1):
                    if not isinstance(json.loads(line), dict):
                        return count, f"line {number} of {path.name} is not a JSON object"
                    count += 1
                return count, None
            if fmt == "json":
                lines = handle.read().split("\n")
                if lines[0] not in ("[", "[]"):
                    return 0, f"{path.name} is not a fleet JSON export"
                for line in lines[1:]:
                    if line in ("]", ""):
                        continue
                    json.loads(line.removesuffix(","))
                    count += 1
                return count, None
    except (ValueError, UnicodeDecodeError, csv.Error) as exc:
        return count, f"{path.name} is not valid {fmt}: {exc}"
    return 0, f"unknown format {fmt!r} in the manifest"


def _check_audit_chain(path: Path) -> Check:
    """Recompute each exported event's hash and its link to the previous one."""
    previous: str | None = None
    events = 0
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            try:
                event = json.loads(line)
                recomputed = audit.event_hash(event)
            except (ValueError, KeyError, TypeError):
                return Check("audit chain", False, f"line {number} is not an audit event")
            if recomputed != event.get("hash"):
                return Check(
                    "audit chain", False, f"event {event.get('seq')} does not match its hash"
                )
            if previous is not None and event["prev_hash"] != previous:
                return Check(
                    "audit chain",
                    False,
                    f"event {event.get('seq')} does not link to the event before it",
                )
            if event["seq"] == 1 and event["prev_hash"] != audit.GENESIS_HASH:
                return Check("audit chain", False, "event 1 does not start the chain")
            previous = event["hash"]
            events += 1
    return Check("audit chain", True, f"{events} events re-hashed and linked")


__all__ = [
    "CSV_COLUMNS",
    "FILTER_FIELDS",
    "FORMATS",
    "SECTIONS",
    "Check",
    "ExportFilters",
    "Section",
    "VerifyReport",
    "export_audit",
    "export_devices",
    "parse_filters",
    "verify_export",
    "write_audit",
    "write_devices",
]
