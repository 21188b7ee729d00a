"""Devices and certificates listed at fleet scale: filters answered by indexes, pages in key
order from a keyset cursor, counts without listing.

Every list reads in primary-key order (device ID, certificate serial) from ``after`` (the last
key of the previous page), so a page costs the same at row 10 and row 1,000,000, and pages never
skip or repeat a row while devices are added. Filters are index ranges (migration 0005):
``device_label`` (key, value, device_id) for labels, (model, id) and (status, id) on devices,
(status, not_after) on certificates. Rows are read as tuples (no ORM objects) and streamed in
batches, so memory stays flat however long the list.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import lru_cache
from typing import Any

import orjson
from sqlalchemy import (
    ColumnElement,
    Select,
    Text,
    and_,
    bindparam,
    case,
    cast,
    exists,
    func,
    literal,
    select,
    type_coerce,
)
from sqlalchemy.engine import Engine
from sqlalchemy.sql.elements import KeyedColumnElement

from fleet import clock
from fleet.errors import InvalidInput, NotFound
from fleet.identifiers import validate_label
from fleet.registry.db import read_session
from fleet.registry.models import Certificate, Device, DeviceLabel, iso_text
from fleet.status.models import ConnectionStatus
from fleet.statuses import CertStatus, ConnectionState, DeviceStatus
from fleet.views import (
    CERTIFICATE_FIELDS,
    DEVICE_FIELDS,
    TIME_FIELDS,
    CertificateView,
    DeviceView,
)
from fleet.workspace import Workspace

DEVICE_STATUSES = tuple(DeviceStatus)
CERT_STATUSES = tuple(CertStatus)
BATCH = 1000

_device = Device.__table__  # type: ignore[attr-defined]
_label = DeviceLabel.__table__  # type: ignore[attr-defined]
_cert = Certificate.__table__  # type: ignore[attr-defined]
_connection = ConnectionStatus.__table__  # type: ignore[attr-defined]
# Everything a view shows; never the PEM (the bulk of a row).
_CERT_COLUMNS = [c for c in _cert.c if c.name != "pem"]


# --- devices ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class DeviceFilter:
    """What a device list keeps: every given filter must match.

    ``connection``: ``online`` or ``offline`` as the device's last connection event says
    (devices never seen have no state and match neither); ``offline_for``: offline at least
    that long (implies ``offline``)."""

    model: str | None = None
    labels: Mapping[str, str] | None = None
    status: str | None = None
    connection: str | None = None
    offline_for: timedelta | None = None

    def check(self) -> None:
        """Raise :class:`InvalidInput` for a value no device can have."""
        if self.status is not None and self.status not in DEVICE_STATUSES:
            raise InvalidInput(f"device status must be one of {', '.join(DEVICE_STATUSES)}")
        if self.connection is not None and self.connection not in tuple(ConnectionState):
            raise InvalidInput("connection state must be online or offline")
        if self.offline_for is not None and self.connection == ConnectionState.ONLINE:
            raise InvalidInput("--offline-for lists offline devices: it excludes --online")
        for key, value in (self.labels or {}).items():
            validate_label(key, value)


def _device_query(
    columns: list[Any], where: DeviceFilter, *, after: str | None
) -> tuple[Select[Any], KeyedColumnElement[Any]]:
    """``SELECT columns`` of the matching devices, and the key column to order by. The most
    selective index drives the query in device-ID order: the first label's range of
    device_label, else the connection state's (state, device_id), else the device table."""
    where.check()
    pairs = list((where.labels or {}).items())
    connection = ConnectionState.OFFLINE if where.offline_for is not None else where.connection
    conditions: list[ColumnElement[bool]] = []
    source: Any = _device
    if pairs:
        first, *others = pairs
        key_column = _label.c.device_id
        source = _label.join(_device, _device.c.id == _label.c.device_id)
        conditions += [_label.c.key == first[0], _label.c.value == first[1]]
        for key, value in others:
            other = _label.alias()
            conditions.append(
                exists().where(
                    other.c.key == key, other.c.value == value, other.c.device_id == key_column
                )
            )
    elif connection is not None:
        key_column = _connection.c.device_id
        source = _connection.join(_device, _device.c.id == _connection.c.device_id)
    else:
        key_column = _device.c.id
    if connection is not None:
        if pairs:
            source = source.join(_connection, _connection.c.device_id == key_column)
        conditions.append(_connection.c.state == connection)
    if where.offline_for is not None:
        conditions.append(_connection.c.since <= clock.now() - where.offline_for)
    if where.model is not None:
        conditions.append(_device.c.model == where.model)
    if where.status is not None:
        conditions.append(_device.c.status == where.status)
    if after is not None:
        conditions.append(key_column > after)
    query = select(*columns).select_from(source)
    if conditions:
        query = query.where(and_(*conditions))
    return query, key_column


def iter_devices(
    ws: Workspace,
    *,
    model: str | None = None,
    labels: Mapping[str, str] | None = None,
    status: str | None = None,
    connection: str | None = None,
    offline_for: timedelta | None = None,
    after: str | None = None,
    limit: int | None = None,
) -> Iterator[DeviceView]:
    """Devices matching every filter, in ID order after ``after``, at most ``limit``; each with
    its certificates. Streamed in batches: memory stays flat for any number of devices.

    Example::

        for device in iter_devices(ws, labels={"site": "hamburg"}, after="pump-0100", limit=100):
            print(device.id)
    """
    now = clock.now()
    for row, certificates in _device_rows(
        ws.open_registry(),
        list(_device.c),
        _CERT_COLUMNS,
        DeviceFilter(model, labels, status, connection, offline_for),
        after=after,
        limit=limit,
    ):
        yield DeviceView.from_rows(row, certificates, now)


def iter_device_dicts(
    ws: Workspace,
    *,
    model: str | None = None,
    labels: Mapping[str, str] | None = None,
    status: str | None = None,
    connection: str | None = None,
    offline_for: timedelta | None = None,
    after: str | None = None,
    limit: int | None = None,
) -> Iterator[dict[str, Any]]:
    """:func:`iter_devices` as JSON-ready dicts, each equal to ``DeviceView.to_dict()``: what
    ``device list --json`` streams. The database selects the shape's fields in its order,
    formats times and judges certificate statuses, so a row becomes its dict in one step."""
    engine = ws.open_registry()
    dialect = engine.dialect.name
    shown = _shown_columns(_device, DEVICE_FIELDS, dialect)
    # labels as the stored JSON text: parsing it here skips the JSON type's per-row wrapper
    shown[DEVICE_FIELDS.index("labels")] = cast(_device.c.labels, Text).label("labels")
    certificate_columns = _shown_columns(_cert, CERTIFICATE_FIELDS, dialect, now=clock.now())
    for row, certificates in _device_rows(
        engine,
        shown,
        certificate_columns,
        DeviceFilter(model, labels, status, connection, offline_for),
        after=after,
        limit=limit,
    ):
        shape = dict(zip(DEVICE_FIELDS, row, strict=True))
        shape["labels"] = dict(_labels(shape["labels"]))  # a copy: the caller may change it
        shape["certificates"] = [
            dict(zip(CERTIFICATE_FIELDS, cert, strict=True)) for cert in certificates
        ]
        yield shape


def iter_device_json(
    ws: Workspace,
    *,
    model: str | None = None,
    labels: Mapping[str, str] | None = None,
    status: str | None = None,
    connection: str | None = None,
    offline_for: timedelta | None = None,
    after: str | None = None,
    limit: int | None = None,
) -> Iterator[str]:
    """:func:`iter_device_dicts` as compact JSON texts, each byte for byte the text of
    ``orjson.dumps(device_dict)``: what ``device list --json``/``--jsonl`` write.

    On SQLite the database writes each device's JSON (``json_object``) in one streamed query,
    so a row costs no Python object but its text; a text holding an escape (a label stored
    with ``\\uXXXX``, a quote, a control character) is re-encoded by orjson, so escaping is
    orjson's whatever SQLite's version does. Elsewhere the dicts are encoded one by one."""
    where = DeviceFilter(model, labels, status, connection, offline_for)
    engine = ws.open_registry()
    if engine.dialect.name != "sqlite":
        for shape in iter_device_dicts(
            ws,
            model=model,
            labels=labels,
            status=status,
            connection=connection,
            offline_for=offline_for,
            after=after,
            limit=limit,
        ):
            yield orjson.dumps(shape).decode("utf-8")
        return
    query = _device_json_query(where, after=after, limit=limit)
    loads, dumps = orjson.loads, orjson.dumps
    with read_session(engine) as session:
        result = session.execute(query.execution_options(yield_per=JSON_BATCH))
        for batch in result.scalars().partitions():
            for text in batch:
                # an escape: re-encoded the way orjson writes it (a few rows, if any)
                yield dumps(loads(text)).decode("utf-8") if "\\" in text else text


JSON_BATCH = 5000


def _json_object(fields: tuple[str, ...], columns: list[Any]) -> Any:
    """SQLite's ``json_object`` of ``fields`` (keys in that order) and their SQL values."""
    pairs: list[Any] = []
    for name, column in zip(fields, columns, strict=True):
        pairs += [literal(name), column]
    return func.json_object(*pairs, type_=Text)


def _device_json_query(where: DeviceFilter, *, after: str | None, limit: int | None) -> Any:
    """One SQLite query yielding each matching device's JSON text in ID order: the device's
    fields as ``json_object``, its certificates (newest first) spliced in as an array."""
    shown = _shown_columns(_device, DEVICE_FIELDS, "sqlite")
    shown[DEVICE_FIELDS.index("labels")] = func.json(_device.c.labels)
    certificate = _shown_columns(_cert, CERTIFICATE_FIELDS, "sqlite", now=clock.now())
    newest_first = (
        select(_json_object(CERTIFICATE_FIELDS, certificate).label("doc"))
        .where(_cert.c.device_id == _device.c.id)
        .order_by(_cert.c.issued_at.desc(), _cert.c.serial.desc())
        .correlate(_device)
        .subquery()
    )
    array = select(func.group_concat(newest_first.c.doc, ",")).scalar_subquery()
    # '{...,"certificates":0}' cut to '{...,"certificates":' (rtrim stops at the ':'), then
    # the array spliced in: no second parse of the certificates' JSON
    device = _json_object((*DEVICE_FIELDS, "certificates"), [*shown, literal(0)])
    text = (
        type_coerce(func.rtrim(device, literal("0}")), Text)
        .concat(literal("[", Text))
        .concat(type_coerce(func.coalesce(array, literal("", Text)), Text))
        .concat(literal("]}", Text))
    )
    query, key = _device_query([text.label("doc")], where, after=after)
    query = query.order_by(key)
    if limit is not None:
        query = query.limit(limit)
    return query


@lru_cache(maxsize=4096)
def _labels(text: str) -> dict[str, str]:
    """A stored labels text parsed (cached: a fleet shares a few label sets)."""
    parsed: dict[str, str] = json.loads(text)
    return parsed


def _shown_columns(
    table: Any, fields: tuple[str, ...], dialect: str, *, now: datetime | None = None
) -> list[Any]:
    """SQL for a shape's fields in order: times as ISO text; a certificate's ``status`` as
    shown at ``now`` (``expired`` is derived, never stored)."""
    columns: list[Any] = []
    for name in fields:
        column = table.c[name]
        if name in TIME_FIELDS:
            column = iso_text(column, dialect).label(name)
        elif name == "status" and now is not None:
            column = case(
                (column == CertStatus.REVOKED, literal(CertStatus.REVOKED.value)),
                (table.c.not_after < now, literal(CertStatus.EXPIRED.value)),
                else_=literal(CertStatus.ACTIVE.value),
            ).label(name)
        columns.append(column)
    return columns


def _device_rows(
    engine: Engine,
    device_columns: list[Any],
    certificate_columns: list[Any],
    where: DeviceFilter,
    *,
    after: str | None,
    limit: int | None,
) -> Iterator[tuple[Any, list[Any]]]:
    """(device row, its certificate rows newest first) in ID order, a page at a time."""
    for page in _device_pages(
        engine, device_columns, certificate_columns, where, after=after, limit=limit
    ):
        yield from page


def _device_pages(
    engine: Engine,
    device_columns: list[Any],
    certificate_columns: list[Any],
    where: DeviceFilter,
    *,
    after: str | None,
    limit: int | None,
) -> Iterator[list[tuple[Any, list[Any]]]]:
    """The pages of :func:`_device_rows`, each read in one go."""
    query, key = _device_query(device_columns, where, after=None)
    # Two statements built once, run per page with new parameters: SQLAlchemy's compiled
    # cache then costs nothing per page. The certificates' IN takes the page's IDs as a
    # subquery: the database probes its own index instead of parsing a thousand parameters.
    page = query.where(key > bindparam("last")).order_by(key).limit(bindparam("size"))
    ids = page.with_only_columns(key).subquery()
    newest_first = (
        select(*certificate_columns)
        .where(_cert.c.device_id.in_(select(ids.c[0])))
        .order_by(_cert.c.device_id, _cert.c.issued_at.desc(), _cert.c.serial.desc())
    )
    remaining = limit
    last = after or ""  # every ID is longer than ""
    with read_session(engine) as session:  # one snapshot: pages cannot disagree
        while remaining is None or remaining > 0:
            size = BATCH if remaining is None else min(BATCH, remaining)
            params = {"last": last, "size": size}
            rows = session.execute(page, params).all()
            if not rows:
                return
            by_device: dict[str, list[Any]] = {}
            for cert in session.execute(newest_first, params).all():
                by_device.setdefault(cert.device_id, []).append(cert)
            yield [(row, by_device.get(row.id, [])) for row in rows]
            last = rows[-1].id
            if remaining is not None:
                remaining -= len(rows)
            if len(rows) < size:
                return


def count_devices(
    ws: Workspace,
    *,
    model: str | None = None,
    labels: Mapping[str, str] | None = None,
    status: str | None = None,
    connection: str | None = None,
    offline_for: timedelta | None = None,
    after: str | None = None,
    at_most: int | None = None,
) -> int:
    """How many devices match the filters (after ``after``), counted in the indexes; with
    ``at_most``, counting stops at ``at_most + 1``."""
    where = DeviceFilter(model, labels, status, connection, offline_for)
    query, key = _device_query([func.count()], where, after=after)
    if at_most is not None:
        # count the first at_most + 1 keys only: the index range stops there
        query, _ = _device_query([key], where, after=after)
        query = select(func.count()).select_from(query.limit(at_most + 1).subquery())
    with read_session(ws.open_registry()) as session:
        return int(session.execute(query).scalar_one())


def list_devices(
    ws: Workspace,
    *,
    model: str | None = None,
    labels: Mapping[str, str] | None = None,
    status: str | None = None,
    connection: str | None = None,
    offline_for: timedelta | None = None,
) -> list[DeviceView]:
    """All devices matching the filters, as a list (see :func:`iter_devices` to stream)."""
    return list(
        iter_devices(
            ws,
            model=model,
            labels=labels,
            status=status,
            connection=connection,
            offline_for=offline_for,
        )
    )


# --- certificates -----------------------------------------------------------------------------


def _certificate_conditions(
    *,
    device_id: str | None,
    status: str | None,
    expiring_within: timedelta | None,
    now: datetime,
) -> list[ColumnElement[bool]]:
    if status is not None and status not in CERT_STATUSES:
        raise InvalidInput(f"certificate status must be one of {', '.join(CERT_STATUSES)}")
    conditions: list[ColumnElement[bool]] = []
    if device_id is not None:
        conditions.append(_cert.c.device_id == device_id)
    if status == CertStatus.REVOKED:
        conditions.append(_cert.c.status == CertStatus.REVOKED)
    elif status == CertStatus.ACTIVE:
        conditions += [_cert.c.status == CertStatus.ACTIVE, _cert.c.not_after >= now]
    elif status == CertStatus.EXPIRED:
        conditions += [_cert.c.status == CertStatus.ACTIVE, _cert.c.not_after < now]
    if expiring_within is not None:
        # unrevoked and still valid, ending within the span
        conditions += [
            _cert.c.status == CertStatus.ACTIVE,
            _cert.c.not_after >= now,
            _cert.c.not_after <= now + expiring_within,
        ]
    return conditions


def _check_device(ws: Workspace, device_id: str | None) -> None:
    if device_id is None:
        return
    with read_session(ws.open_registry()) as session:
        if session.execute(select(_device.c.id).where(_device.c.id == device_id)).first() is None:
            raise NotFound(f"no device {device_id!r} in the registry")


def iter_certificates(
    ws: Workspace,
    *,
    device_id: str | None = None,
    status: str | None = None,
    expiring_within: timedelta | None = None,
    after: str | None = None,
    limit: int | None = None,
) -> Iterator[CertificateView]:
    """Certificates matching every filter, in serial order after ``after``, at most ``limit``,
    streamed. ``status`` is ``active``, ``revoked`` or ``expired`` (derived: unrevoked and
    past ``not_after``); ``expiring_within`` keeps unrevoked, unexpired certificates ending
    within that span from now.

    Example::

        soon = list(iter_certificates(ws, expiring_within=timedelta(days=30)))
    """
    now = clock.now()
    conditions = _certificate_conditions(
        device_id=device_id, status=status, expiring_within=expiring_within, now=now
    )
    _check_device(ws, device_id)
    query = select(*_CERT_COLUMNS).where(*conditions)
    if after is not None:
        query = query.where(_cert.c.serial > after)
    query = query.order_by(_cert.c.serial)
    if limit is not None:
        query = query.limit(limit)
    # One query, streamed (a server-side cursor on PostgreSQL): a filter such as "expiring
    # within 30 days" is one index range sorted once, where pages of a keyset would re-read
    # the range for each page.
    with read_session(ws.open_registry()) as session:
        for row in session.execute(query.execution_options(yield_per=BATCH)):
            yield CertificateView.from_row(row, now)


def count_certificates(
    ws: Workspace,
    *,
    device_id: str | None = None,
    status: str | None = None,
    expiring_within: timedelta | None = None,
    after: str | None = None,
) -> int:
    """How many certificates match the filters (after serial ``after``)."""
    conditions = _certificate_conditions(
        device_id=device_id, status=status, expiring_within=expiring_within, now=clock.now()
    )
    if after is not None:
        conditions.append(_cert.c.serial > after)
    _check_device(ws, device_id)
    with read_session(ws.open_registry()) as session:
        query = select(func.count()).select_from(_cert).where(*conditions)
        return int(session.execute(query).scalar_one())


def list_certificates(
    ws: Workspace,
    *,
    device_id: str | None = None,
    status: str | None = None,
    expiring_within: timedelta | None = None,
) -> list[CertificateView]:
    """All certificates matching the filters, in serial order (see :func:`iter_certificates`)."""
    return list(
        iter_certificates(ws, device_id=device_id, status=status, expiring_within=expiring_within)
    )
