"""Export rows: their layout, how they are rendered, and where they come from.

A device export has one row per device. Rows are built from *sections* (:data:`SECTIONS`):
the device's own fields, its newest ``certificate`` (a nested object) and the ``clouds`` it
is registered with (firmware later adds its own). A section gives

* its fields, in column order (CSV columns are ``prefix + field``), and their kinds (free
  text is formula-escaped in CSV; ``json`` cells already hold JSON text; ``list`` cells hold
  ``;``-joined names, a JSON array in JSON);
* the SQL producing them from the live tables (text, already formatted);
* how audit events change them, for ``--as-of`` (the state is rebuilt by replaying, per
  device, every event up to and including that moment).

Cells are rendered once per device into a :class:`Rendered` row: the CSV and JSON text
around the certificate's status, which alone depends on the moment of the export (an active
certificate past ``not_after`` is ``expired``). Live, as-of and cached rows all go through
:func:`render`, so every path writes the same bytes.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any, NamedTuple

from sqlalchemy import (
    Select,
    String,
    Text,
    and_,
    cast,
    func,
    literal_column,
    select,
    text,
)
from sqlalchemy.engine import Connection
from sqlalchemy.sql.elements import ColumnElement

from fleet.errors import InvalidInput
from fleet.identifiers import parse_label, validate_label, validate_text_field
from fleet.registry import audit
from fleet.registry.models import AuditEvent, Certificate, Device

DEVICE_STATUSES = ("active", "decommissioned")
CERT_STATUSES = ("active", "revoked", "expired", "none")
FILTER_FIELDS = ("model", "serial", "status", "cert_status", "label.KEY")
# Cells starting with these are formulas (or become one after a spreadsheet strips the
# whitespace), see https://owasp.org/www-community/attacks/CSV_Injection.
FORMULA_PREFIXES = ("=", "+", "-", "@", "\t", "\r")
BATCH_ROWS = 5000
ISO_FORMAT = "%Y-%m-%dT%H:%M:%SZ"
# What ends each row in a file: CSV lines CRLF (RFC 4180), JSONL LF. Rows are produced
# without it; JSON objects in an array are separated by ",\n" instead.
LINE_ENDS = {"csv": b"\r\n", "jsonl": b"\n"}


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
    seq: int = 0  # the event being replayed
    fields: dict[str, Any] = field(default_factory=dict)
    # per section key: whatever that section keeps (certificates: serial -> fields)
    sections: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class LiveContext:
    """What a section's SQL may refer to: the device table and the dialect."""

    device: Any  # the device Table
    dialect: str

    def iso(self, column: Any) -> ColumnElement[Any]:
        """SQL producing :func:`fleet.views.iso` text (UTC, seconds, ``Z``) or NULL."""
        if self.dialect == "sqlite":
            return func.strftime(ISO_FORMAT, column)
        return func.to_char(func.timezone("UTC", column), 'YYYY-MM-DD"T"HH24:MI:SS"Z"')


@dataclass(frozen=True)
class ReplayContext:
    """What replay handlers may consult besides one device's events: the clouds removed
    (``cloud.remove``) up to the as-of moment, as (seq, cloud) pairs."""

    cloud_removals: tuple[tuple[int, str], ...] = ()


@dataclass(frozen=True)
class Section:
    """A group of export fields; ``key`` ``None`` means top-level fields of the device.

    Values are text or ``None`` (the live SQL formats them; replay produces the same text),
    so CSV, JSON and ``--as-of`` output stay byte-identical.
    """

    key: str | None
    fields: tuple[str, ...]
    csv_prefix: str
    # field -> "text" (user-given free text, formula-escaped in CSV), "json" (the cell holds
    # JSON text) or "list" (";"-joined names, a JSON array); other fields are plain strings
    kinds: dict[str, str]
    # (context, from_clause) -> (column expressions in ``fields`` order, new from clause)
    live: Callable[[LiveContext, Any], tuple[list[ColumnElement[Any]], Any]]
    # action -> handler(state, event details, event ts)
    replay: dict[str, Callable[[ReplayedDevice, dict[str, Any], str], None]]
    # (state, replay context) -> values in ``fields`` order
    values: Callable[[ReplayedDevice, ReplayContext], list[Any]]


def _ts_iso(ts: str) -> str:
    """Audit ``ts`` (``...T10:00:00.123456Z``) as :func:`fleet.views.iso` text."""
    return ts[:19] + "Z"


def _iso_text(text: str) -> str:
    """An ISO 8601 time from an audit event (``isoformat()`` text) as export text."""
    if len(text) == 25 and text.endswith("+00:00"):  # what fleet writes: UTC, whole seconds
        return text[:19] + "Z"
    return datetime.fromisoformat(text).astimezone(UTC).strftime(ISO_FORMAT)


def iso_moment(moment: datetime) -> str:
    """``moment`` as export text; certificate ``not_after`` cells compare against it."""
    return moment.astimezone(UTC).strftime(ISO_FORMAT)


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


@lru_cache(maxsize=4096)
def _labels_text(items: tuple[tuple[str, str], ...]) -> str:
    return audit.canonical_json(dict(items))


def _device_update(state: ReplayedDevice, details: dict[str, Any], ts: str) -> None:
    # fleets share a few label sets: their canonical text is cached by the sorted items
    labels = details.get("labels") or {}
    state.fields.update(
        model=details.get("model"),
        serial=details.get("serial"),
        labels=_labels_text(tuple(sorted(labels.items()))),
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


def _device_values(state: ReplayedDevice, ctx: ReplayContext) -> list[Any]:
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
    kinds={"model": "text", "serial": "text", "decommission_reason": "text", "labels": "json"},
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
    # The stored status (active or revoked): whether an active one has expired depends on
    # the moment of the export and is decided when the row is written (see render()).
    columns = [
        c.c.serial,
        c.c.fingerprint_sha256,
        ctx.iso(c.c.not_before),
        ctx.iso(c.c.not_after),
        cast(c.c.status, String),
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


def _cert_values(state: ReplayedDevice, ctx: ReplayContext) -> list[Any]:
    certs = _certs(state)
    if not certs:
        return [None] * len(CERT_FIELDS)
    newest = max(certs.values(), key=lambda c: (c["issued_ts"], c["serial"]))
    revoked_ts = newest.get("revoked_ts")
    return [
        newest["serial"],
        newest["fingerprint_sha256"],
        _iso_text(newest["not_before"]),
        _iso_text(newest["not_after"]),
        "revoked" if revoked_ts is not None else "active",
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
    kinds={},
    live=_cert_live,
    replay={
        "device.add": _cert_issue,
        "cert.renew": _cert_issue,
        "cert.revoke": _cert_revoke,
        "device.decommission": _cert_decommission,
    },
    values=_cert_values,
)


def _clouds_live(ctx: LiveContext, source: Any) -> tuple[list[ColumnElement[Any]], Any]:
    from fleet.cloud.models import CloudRegistration

    r = CloudRegistration.__table__.alias("reg")  # type: ignore[attr-defined]
    mine = and_(r.c.device_id == ctx.device.c.id, r.c.status == "registered")
    if ctx.dialect == "postgresql":
        from sqlalchemy.dialects.postgresql import aggregate_order_by

        names = func.string_agg(r.c.cloud, aggregate_order_by(literal_column("';'"), r.c.cloud))
        clouds = select(names).where(mine).scalar_subquery()
    else:
        # SQLite concatenates in the order rows arrive from the ordered subquery
        # (SQLAlchemy does not correlate a subquery in FROM by itself)
        ordered = select(r.c.cloud).where(mine).order_by(r.c.cloud).correlate(ctx.device).subquery()
        clouds = select(func.group_concat(ordered.c.cloud, ";")).scalar_subquery()
    return [clouds], source


def _registered(state: ReplayedDevice) -> dict[str, int]:
    """Cloud name -> seq of the event that registered the device there."""
    clouds: dict[str, int] = state.sections.setdefault("clouds", {})
    return clouds


def _cloud_registered(state: ReplayedDevice, details: dict[str, Any], ts: str) -> None:
    _registered(state)[details["cloud"]] = state.seq


def _cloud_unregistered(state: ReplayedDevice, details: dict[str, Any], ts: str) -> None:
    # deregistered, failed (status "failed" is not "registered") or re-queued
    _registered(state).pop(details["cloud"], None)


def _clouds_values(state: ReplayedDevice, ctx: ReplayContext) -> list[Any]:
    names = [
        cloud
        for cloud, since in _registered(state).items()
        if not any(seq > since and name == cloud for seq, name in ctx.cloud_removals)
    ]
    return [";".join(sorted(names)) or None]


CLOUDS_SECTION = Section(
    key=None,
    fields=("clouds",),
    csv_prefix="",
    kinds={"clouds": "list"},
    live=_clouds_live,
    replay={
        "cloud.register": _cloud_registered,
        "cloud.deregister": _cloud_unregistered,
        "cloud.failed": _cloud_unregistered,
        "cloud.queue": _cloud_unregistered,
    },
    values=_clouds_values,
)

SECTIONS: tuple[Section, ...] = (DEVICE_SECTION, CERTIFICATE_SECTION, CLOUDS_SECTION)
CSV_COLUMNS: tuple[str, ...] = tuple(
    ("device_id" if s.key is None and f == "id" else f if s.key is None else s.csv_prefix + f)
    for s in SECTIONS
    for f in s.fields
)


# --- rendering --------------------------------------------------------------------------

_json_str: Callable[[str], str] = json.encoder.encode_basestring  # what json.dumps uses


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
        self.kinds = [s.kinds.get(f, "plain") for s in sections for f in s.fields]
        self.json_keys = [_json_str(f) + ":" for s in sections for f in s.fields]
        self.text_cells = [i for i, kind in enumerate(self.kinds) if kind == "text"]
        self.labels = self.index[(None, "labels")]
        self.cert_status = self.index[("certificate", "status")]
        self.cert_not_after = self.index[("certificate", "not_after")]
        self.replay_actions = sorted({a for s in sections for a in s.replay})

    def cell(self, section: str | None, name: str) -> int:
        return self.index[(section, name)]


LAYOUT = _Layout(SECTIONS)
# A placeholder for the certificate's status inside rendered JSON: JSON text never holds a
# raw NUL (json escapes it), so the split is exact.
_STATUS_MARK = "\x00"


def csv_safe(value: str) -> str:
    """A cell made safe against spreadsheet formula injection (see module docstring)."""
    return "'" + value if value.startswith(FORMULA_PREFIXES) else value


def _csv_cell(value: str | None) -> str:
    """RFC 4180 quoting exactly as :func:`csv.writer` does it (QUOTE_MINIMAL, CRLF)."""
    if value is None:
        return ""
    if '"' in value or "," in value or "\n" in value or "\r" in value:
        return '"' + value.replace('"', '""') + '"'
    return value


def _json_cell(value: str | None, kind: str) -> str:
    if value is None:
        return "[]" if kind == "list" else "null"
    if kind == "json":
        return value
    if kind == "list":
        return "[" + ",".join(_json_str(v) for v in value.split(";")) + "]"
    return _json_str(value)


class Rendered(NamedTuple):
    """A device's row as text: ``*_a + status + *_b`` is its CSV line (no line end) or its
    JSON object; ``cert_status`` is the stored status (None: no certificate)."""

    csv_a: str
    csv_b: str
    json_a: str
    json_b: str
    cert_status: str | None
    cert_not_after: str | None


def render(cells: Cells, fmt: str | None = None) -> Rendered:
    """Render one row's cells (in :data:`CSV_COLUMNS` order) as CSV and JSON text, or, given
    ``fmt``, only what that format needs (the other format's parts are left empty)."""
    kinds = LAYOUT.kinds
    at = LAYOUT.cert_status
    csv_a = csv_b = json_a = json_b = ""
    if fmt is None or fmt == "csv":
        csv_cells = [
            _csv_cell(csv_safe(v) if v and kinds[i] == "text" else v) for i, v in enumerate(cells)
        ]
        csv_a = ",".join(csv_cells[:at]) + ","
        csv_b = "," + ",".join(csv_cells[at + 1 :])
    if fmt != "csv":
        json_a, json_b = _render_json(cells)
    return Rendered(csv_a, csv_b, json_a, json_b, cells[at], cells[LAYOUT.cert_not_after])


def _render_json(cells: Cells) -> tuple[str, str]:
    """The row's JSON object, split around the certificate status's place."""
    kinds, keys = LAYOUT.kinds, LAYOUT.json_keys
    at = LAYOUT.cert_status
    out: list[str] = []
    for section, start, end in LAYOUT.spans:
        members = [
            keys[i] + ('"' + _STATUS_MARK + '"' if i == at else _json_cell(cells[i], kinds[i]))
            for i in range(start, end)
        ]
        if section.key is None:
            out.append(("{" if start == 0 else ",") + ",".join(members))
        elif all(v is None for v in cells[start:end]):
            out.append(f",{_json_str(section.key)}:null")
        else:
            out.append(f",{_json_str(section.key)}:{{" + ",".join(members) + "}")
    out.append("}")
    # without a certificate there is no mark: the whole object is json_a
    json_a, _, json_b = "".join(out).partition(_STATUS_MARK)
    return json_a, json_b


def effective_status(stored: str | None, not_after: str | None, moment: str) -> str | None:
    """The certificate status at ``moment`` (:func:`iso_moment` text): an active
    certificate is expired once ``not_after`` (inclusive, to the second) has passed."""
    if stored == "active" and not_after is not None and not_after < moment:
        return "expired"
    return stored


def line(row: Rendered, fmt: str, moment: str) -> str:
    """The row's CSV line (without line end) or JSON object at ``moment``."""
    status = effective_status(row.cert_status, row.cert_not_after, moment) or ""
    if fmt == "csv":
        return row.csv_a + status + row.csv_b
    return row.json_a + status + row.json_b


def row_to_object(cells: Cells) -> dict[str, Any]:
    """A row as nested JSON: device fields on top, one object (or null) per section."""
    obj: dict[str, Any] = {}
    for section, start, end in LAYOUT.spans:
        values = cells[start:end]
        if section.key is None:
            for i, name in enumerate(section.fields, start):
                value = cells[i]
                if LAYOUT.kinds[i] == "list":
                    value = value.split(";") if value else []
                obj[name] = value
        else:
            obj[section.key] = (
                None
                if all(v is None for v in values)
                else dict(zip(section.fields, values, strict=True))
            )
    obj["labels"] = dict(_labels_object(obj["labels"]))  # a copy: the parsed one is cached
    return obj


# --- reading rows: live and as-of ------------------------------------------------------


def live_query(
    dialect: str, filters: ExportFilters, ids: Sequence[str] | None = None
) -> Select[Any]:
    """The SELECT of the live rows (``bench/export.py`` hands it to ``sqlite3 -csv``).

    ``cert_status`` is not filtered here: it depends on the moment (see :func:`line`).
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
    return _device_filters(query, d, filters).order_by(d.id)


def _device_filters(query: Select[Any], d: Any, filters: ExportFilters) -> Select[Any]:
    if filters.model is not None:
        query = query.where(d.model == filters.model)
    if filters.serial is not None:
        query = query.where(d.serial == filters.serial)
    if filters.status is not None:
        query = query.where(d.status == filters.status)
    for key, value in filters.labels.items():
        query = query.where(d.labels[key].as_string() == value)
    return query


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


def row_batches(conn: Connection, query: Any) -> Iterator[Sequence[Any]]:
    """The query's rows as plain tuples, in batches of :data:`BATCH_ROWS`, streamed.

    On SQLite straight from the DBAPI cursor, which reads lazily (SQLAlchemy's Row objects
    cost ~1 us a row in the export's hot loops, and there is no result processing to skip);
    elsewhere through a server-side cursor.
    """
    if conn.dialect.name != "sqlite":
        options = {"stream_results": True, "yield_per": BATCH_ROWS}
        yield from conn.execute(query, execution_options=options).partitions()
        return
    result = conn.execute(query)
    cursor = result.cursor
    try:
        while rows := cursor.fetchmany(BATCH_ROWS):
            yield rows
    finally:
        result.close()


def replayed_cells(
    conn: Connection,
    as_of: datetime,
    *,
    targets: tuple[str | None, str | None] | None = None,
    max_seq: int | None = None,
) -> Iterator[Cells]:
    """Rows' cells as they were at ``as_of``: each device's events up to then, replayed in
    order. Events are read ordered by (target, seq), so only one device's state is in memory.

    ``targets`` ``(lo, hi)`` limits the replay to devices with ``lo <= id < hi`` (``None``:
    unbounded), and ``max_seq`` to the events up to that audit head, so that processes
    replaying parts in their own snapshots see the same trail (it is append-only).
    """
    e = AuditEvent.__table__  # type: ignore[attr-defined]
    cutoff = audit.format_ts(as_of)
    # the audit head the caller read (events are numbered from 1; seq is 32-bit on PostgreSQL)
    seq_limit = max_seq if max_seq is not None else 2**31 - 1
    removals = conn.execute(
        select(e.c.seq, e.c.target)
        .where(e.c.action == "cloud.remove", e.c.ts <= cutoff, e.c.seq <= seq_limit)
        .order_by(e.c.seq)
    ).all()
    ctx = ReplayContext(tuple((int(seq), str(target)) for seq, target in removals))
    lo, hi = targets or (None, None)
    params: dict[str, Any] = {"cutoff": cutoff, "seq_limit": seq_limit, "lo": lo, "hi": hi}
    where = "ts <= :cutoff AND seq <= :seq_limit"
    where += " AND target >= :lo" if lo is not None else ""
    where += " AND target < :hi" if hi is not None else ""
    # SQLite, the whole trail: read the table in order and sort (walking an index fetches
    # each event from a random page, as a device's events lie scattered through the trail;
    # 2M events: 7.7 s to scan and sort, 12 s to walk). A part of it: walk the target index
    # over just that range (SQLite would otherwise pick the ts index and sort).
    source = ""
    if conn.dialect.name == "sqlite":
        source = "NOT INDEXED" if targets is None else "INDEXED BY ix_audit_event_target"
    query = text(
        f"SELECT seq, target, action, ts, details FROM audit_event {source} "
        f"WHERE {where} ORDER BY target, seq"
    ).bindparams(**{k: v for k, v in params.items() if f":{k}" in where})
    handlers = {
        action: [s.replay[action] for s in SECTIONS if action in s.replay]
        for action in LAYOUT.replay_actions
    }
    state: ReplayedDevice | None = None
    loads = json.loads
    for batch in row_batches(conn, query):
        for seq, target, action, ts, details in batch:
            todo = handlers.get(action)
            if todo is None:
                continue
            if state is None or state.id != target:
                if state is not None and "created_at" in state.fields:
                    yield _replayed(state, ctx)
                state = ReplayedDevice(target)
            state.seq = seq
            parsed = loads(details)
            for handler in todo:
                handler(state, parsed, ts)
    if state is not None and "created_at" in state.fields:
        yield _replayed(state, ctx)


def _replayed(state: ReplayedDevice, ctx: ReplayContext) -> Cells:
    cells: Cells = []
    for section in SECTIONS:
        cells.extend(section.values(state, ctx))
    return cells


def cells_matcher(filters: ExportFilters, moment: str) -> Callable[[Cells], bool] | None:
    """A predicate for the filters on replayed cells (``moment``: :func:`iso_moment` of
    the as-of time, for ``cert_status``), or None if no filter is given."""
    checks: list[tuple[int, str]] = []
    for name in ("model", "serial", "status"):
        value = getattr(filters, name)
        if value is not None:
            checks.append((LAYOUT.cell(None, name), value))
    cert_status = filters.cert_status
    status_at, not_after_at = LAYOUT.cert_status, LAYOUT.cert_not_after
    labels_at = LAYOUT.labels
    wanted = dict(filters.labels)
    if not checks and cert_status is None and not wanted:
        return None

    def matches(cells: Cells) -> bool:
        if any(cells[i] != v for i, v in checks):
            return False
        if cert_status is not None:
            status = effective_status(cells[status_at], cells[not_after_at], moment)
            if (status or "none") != cert_status:
                return False
        if wanted:
            labels = _labels_object(cells[labels_at])
            return all(labels.get(k) == v for k, v in wanted.items())
        return True

    return matches


__all__ = [
    "CSV_COLUMNS",
    "FILTER_FIELDS",
    "LINE_ENDS",
    "SECTIONS",
    "ExportFilters",
    "Rendered",
    "Section",
    "cells_matcher",
    "effective_status",
    "iso_moment",
    "line",
    "live_query",
    "live_rows",
    "parse_filters",
    "render",
    "replayed_cells",
    "row_batches",
]
