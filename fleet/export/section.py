"""What a section of the export row is (:class:`Section`) and what its functions are given.

A device export has one row per device, built from sections (the device's own fields, its
newest certificate, the clouds it is registered with; see :mod:`fleet.export.sections`). A
section gives its fields in column order and their kinds, the SQL producing them from the
live tables, and how audit events change them for ``--as-of`` (the state is rebuilt by
replaying, per device, every event up to and including that moment).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy.sql.elements import ColumnElement

from fleet.registry.models import iso_text


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
        return iso_text(column, self.dialect)  # type: ignore[no-any-return]


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
