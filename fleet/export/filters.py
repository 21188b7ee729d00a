"""Which devices an export holds: :class:`ExportFilters`, parsed from the command line, and
their SQL on the device table (the live query and the export cache both filter with it)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Select

from fleet.errors import InvalidInput
from fleet.identifiers import parse_label, validate_label, validate_text_field
from fleet.statuses import CertStatus, DeviceStatus

FILTER_FIELDS = ("model", "serial", "status", "cert_status", "label.KEY")
# ``cert_status=none`` asks for the devices without a certificate
NO_CERTIFICATE = "none"
CERT_STATUS_FILTERS = (*CertStatus, NO_CERTIFICATE)


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
    _check_values(values)
    return ExportFilters(
        model=values.get("model"),
        serial=values.get("serial"),
        status=values.get("status"),
        cert_status=values.get("cert_status"),
        labels=wanted_labels,
    )


def _check_values(values: dict[str, str]) -> None:
    for name in ("model", "serial"):
        validate_text_field(name, values.get(name))
    if values.get("status", DeviceStatus.ACTIVE) not in tuple(DeviceStatus):
        raise InvalidInput(f"device status must be one of {', '.join(DeviceStatus)}")
    if values.get("cert_status", CertStatus.ACTIVE) not in CERT_STATUS_FILTERS:
        raise InvalidInput(f"certificate status must be one of {', '.join(CERT_STATUS_FILTERS)}")


def device_filters(query: Select[Any], d: Any, filters: ExportFilters) -> Select[Any]:
    """``query`` limited to the devices (``d``: the device table's columns) matching every
    filter but ``cert_status``, which depends on the moment of the export."""
    if filters.model is not None:
        query = query.where(d.model == filters.model)
    if filters.serial is not None:
        query = query.where(d.serial == filters.serial)
    if filters.status is not None:
        query = query.where(d.status == filters.status)
    for key, value in filters.labels.items():
        query = query.where(d.labels[key].as_string() == value)
    return query
