"""Rendering: a row's cells become CSV and JSON text once, as a :class:`Rendered` row.

CSV is flat (RFC 4180 quoting); free-text cells that start with ``=``, ``+``, ``-``, ``@``,
TAB or CR get a leading ``'`` so spreadsheets do not run them as formulas (OWASP's advice).
JSON is nested and unescaped. The text is kept in two parts around the certificate's status,
which alone depends on the moment of the export (an active certificate past ``not_after`` is
``expired``). Live, as-of and cached rows all go through :func:`render`, so every path writes
the same bytes.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator
from typing import Any, NamedTuple

from fleet.export.batches import in_batches
from fleet.export.cells import Cells, labels_object
from fleet.export.layout import LAYOUT
from fleet.statuses import CertStatus

# Cells starting with these are formulas (or become one after a spreadsheet strips the
# whitespace), see https://owasp.org/www-community/attacks/CSV_Injection.
FORMULA_PREFIXES = ("=", "+", "-", "@", "\t", "\r")
# The statuses compared per row, as plain str bound once (an enum member's lookup costs
# about half a microsecond on Python 3.11).
_ACTIVE: str = CertStatus.ACTIVE.value
_EXPIRED: str = CertStatus.EXPIRED.value
_json_str: Callable[[str], str] = json.encoder.encode_basestring  # what json.dumps uses
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
    if stored == _ACTIVE and not_after is not None and not_after < moment:
        return _EXPIRED
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
    obj["labels"] = dict(labels_object(obj["labels"]))  # a copy: the parsed one is cached
    return obj


def row_to_json(cells: Cells, moment: str = "") -> str:
    """One row's JSON object text (what JSON and JSONL exports write for it)."""
    return line(render(cells), "json", moment)


def rendered_lines(rows: Iterable[Rendered], fmt: str, moment: str) -> Iterator[list[bytes]]:
    """The rows' lines in ``fmt`` at ``moment``, as UTF-8, in batches (see :func:`in_batches`)."""
    return in_batches(line(r, fmt, moment).encode() for r in rows)
