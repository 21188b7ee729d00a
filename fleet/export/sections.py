"""The export row's sections: the device's own fields, its newest ``certificate`` (a nested
object) and the ``clouds`` it is registered with (firmware later adds its own). Each gives
its fields, their SQL on the live tables and how audit events change them (``--as-of``);
see :class:`~fleet.export.section.Section`.
"""

from __future__ import annotations

from datetime import UTC, datetime
from functools import lru_cache
from typing import Any

from sqlalchemy import String, Text, and_, cast, func, literal_column, select
from sqlalchemy.sql.elements import ColumnElement

from fleet.export.cells import ISO_FORMAT
from fleet.export.section import LiveContext, ReplayContext, ReplayedDevice, Section
from fleet.registry import audit
from fleet.registry.models import Certificate
from fleet.statuses import CertStatus, DeviceStatus, RegistrationStatus

# The statuses replay writes, as plain str bound once: looking an enum member up costs about
# half a microsecond on Python 3.11, and replay does it per event and per device.
_DEVICE_ACTIVE: str = DeviceStatus.ACTIVE.value
_DECOMMISSIONED: str = DeviceStatus.DECOMMISSIONED.value
_CERT_ACTIVE: str = CertStatus.ACTIVE.value
_REVOKED: str = CertStatus.REVOKED.value


def _ts_iso(ts: str) -> str:
    """Audit ``ts`` (``...T10:00:00.123456Z``) as :func:`fleet.views.iso` text."""
    return ts[:19] + "Z"


def _iso_text(text: str) -> str:
    """An ISO 8601 time from an audit event (``isoformat()`` text) as export text."""
    if len(text) == 25 and text.endswith("+00:00"):  # what fleet writes: UTC, whole seconds
        return text[:19] + "Z"
    return datetime.fromisoformat(text).astimezone(UTC).strftime(ISO_FORMAT)


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
        status=details.get("status", _DEVICE_ACTIVE),
        updated_at=_ts_iso(ts),
    )


def _device_decommission(state: ReplayedDevice, details: dict[str, Any], ts: str) -> None:
    state.fields.update(
        status=details.get("status", _DECOMMISSIONED),
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
        f.get("status", _DEVICE_ACTIVE),
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
        _REVOKED if revoked_ts is not None else _CERT_ACTIVE,
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
    mine = and_(r.c.device_id == ctx.device.c.id, r.c.status == RegistrationStatus.REGISTERED)
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
