"""Auditor exports: the registry (now, or as it was at a moment) and the audit trail.

A device export has one row per device, built from sections (:mod:`.sections`: the device,
its newest certificate, its clouds) laid out in :data:`CSV_COLUMNS` order (:mod:`.layout`)
and rendered once to CSV and JSON text (:mod:`.render`). Rows come from the export cache
(:mod:`.cache`, kept current in every write), the live tables (:mod:`.live`) or, for
``--as-of``, the audit trail replayed (:mod:`.replay`); :mod:`.device_export` picks the
source and :mod:`.write` streams the lines. CSV is flat (RFC 4180, CRLF line ends, a header
row, formula-safe); JSON (an array, one device per line) and JSONL are nested and unescaped.
Nothing secret is exported: no keys, no PEM.

Written files appear whole or not at all, beside a signed manifest (:mod:`.files`);
:mod:`.audit_export` exports the audit trail the same way and :mod:`.verify` checks either.
"""

from __future__ import annotations

from fleet.export.audit_export import export_audit, write_audit
from fleet.export.cells import canonical_labels, iso_moment
from fleet.export.device_export import FORMATS, export_devices, write_devices
from fleet.export.filters import FILTER_FIELDS, ExportFilters, parse_filters
from fleet.export.layout import LAYOUT
from fleet.export.live import live_query
from fleet.export.render import csv_safe, row_to_json, row_to_object
from fleet.export.section import Section
from fleet.export.sections import CERT_FIELDS, DEVICE_FIELDS, SECTIONS

# a CSV export's header: the sections' columns, then those joined at export time
from fleet.export.telemetry import EXPORT_COLUMNS as CSV_COLUMNS
from fleet.export.verify import Check, VerifyReport, verify_export

__all__ = [
    "CERT_FIELDS",
    "CSV_COLUMNS",
    "DEVICE_FIELDS",
    "FILTER_FIELDS",
    "FORMATS",
    "LAYOUT",
    "SECTIONS",
    "Check",
    "ExportFilters",
    "Section",
    "VerifyReport",
    "canonical_labels",
    "csv_safe",
    "export_audit",
    "export_devices",
    "iso_moment",
    "live_query",
    "parse_filters",
    "row_to_json",
    "row_to_object",
    "verify_export",
    "write_audit",
    "write_devices",
]
