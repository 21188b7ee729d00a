"""Reading the provisioning file: CSV or JSON Lines, checked whole, then streamed as rows."""

from __future__ import annotations

import codecs
import csv
import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from fleet.errors import FleetError, InvalidInput
from fleet.identifiers import (
    is_utf8_text,
    printable,
    validate_device_id,
    validate_label,
    validate_text_field,
)

COLUMNS = ("id", "model", "serial", "labels", "profile", "csr")
FORMATS = ("csv", "jsonl")
DELIMITERS = ",;\t"  # what spreadsheets write: `;` where the decimal separator is a comma
# fleet's own export CSV (`fleet export --format csv`) as input: its columns that mean ours;
# its other columns are ignored without a warning (labels cells are JSON objects there)
EXPORT_ALIASES = {"device_id": "id", "cert_profile": "profile"}
_SNIFF_BYTES = 64 * 1024
# Rows per worker task and per registry transaction: large enough to amortise IPC and
# commits, small enough to keep transactions (and the SQLite write lock) short.
BATCH_SIZE = 500
_READ_BLOCK = 1 << 20


@dataclass(frozen=True)
class RowError:
    """A row that was not provisioned, and why."""

    line: int
    device_id: str
    error: str


@dataclass(frozen=True, slots=True)
class Row:
    """One valid row of the file: a device to provision."""

    line: int
    device_id: str
    model: str | None
    serial: str | None
    labels: dict[str, str]
    profile: str  # "" when the row names none (the run's default profile)
    csr: str | None  # a CSR file, relative to the file's folder

    def digest(self) -> str:
        """A short fingerprint of everything but the line, to tell identical duplicates."""
        text = repr((self.model, self.serial, sorted(self.labels.items()), self.profile, self.csr))
        return hashlib.blake2b(text.encode("utf-8"), digest_size=8).hexdigest()


Record = tuple[int, Row | RowError]
"""A row of the file by its line number: valid, or why not."""


@dataclass(frozen=True)
class Source:
    """A checked provisioning file."""

    path: Path
    fmt: str
    total: int  # data rows (an upper bound for CSV with quoted line breaks)
    delimiter: str = ","
    ignored: tuple[str, ...] = ()  # unknown columns or keys, left out (warned about)
    export: bool = False  # the file is a fleet export CSV (its columns mapped)


def detect_format(path: Path, fmt: str | None) -> str:
    """``fmt`` if given, else from the file name (``.csv``; ``.jsonl``, ``.ndjson``, ``.json``)."""
    if fmt is not None:
        if fmt not in FORMATS:
            raise InvalidInput(f"--format must be one of {', '.join(FORMATS)}")
        return fmt
    suffix = path.suffix.lower()
    if suffix == ".csv":
        return "csv"
    if suffix in (".jsonl", ".ndjson", ".json"):
        return "jsonl"
    raise InvalidInput(f"cannot tell the format of {path} from its name: give --format csv|jsonl")


def open_source(path: Path, fmt: str | None, *, strict: bool = False) -> Source:
    """Check the whole file before anything is written: readable, UTF-8, a header with
    ``id``. A CSV's delimiter is sniffed (``,``, ``;`` or tab); unknown columns (keys) are
    ignored and listed in ``Source.ignored``, or refused when ``strict``. A fleet export CSV
    (``device_id`` ...) is read with its columns mapped (:data:`EXPORT_ALIASES`)."""
    chosen = detect_format(path, fmt)
    if not path.is_file():
        raise InvalidInput(f"cannot read {path}: no such file")
    unknown: set[str] = set()
    try:
        with path.open("rb") as handle:
            if chosen == "csv":
                lines = _scan_csv(handle)
            else:
                lines, unknown = _scan_jsonl(handle)
    except UnicodeDecodeError as exc:
        raise InvalidInput(f"{path} is not UTF-8 text (byte offset {exc.start})") from exc
    except OSError as exc:
        raise InvalidInput(f"cannot read {path}: {exc.strerror}") from exc
    delimiter, export = ",", False
    if chosen == "csv":
        delimiter = sniff_delimiter(path)
        unknown, export = _check_csv_header(path, delimiter)
        lines = max(lines - 1, 0)
    if unknown and strict:
        shown = ", ".join(sorted(repr(c) for c in unknown))
        raise InvalidInput(f"{path}: unknown column(s) {shown}; allowed: {', '.join(COLUMNS)}")
    return Source(path, chosen, lines, delimiter, tuple(sorted(unknown)), export)


def sniff_delimiter(path: Path) -> str:
    """The CSV file's delimiter, ``,``, ``;`` or tab, sniffed from its header row (``,``
    when the header has a single column)."""
    with path.open(encoding="utf-8-sig", newline="") as handle:
        sample = handle.read(_SNIFF_BYTES)
    header = sample.splitlines()[0] if sample else ""
    present = [d for d in DELIMITERS if d in header]
    if len(present) <= 1:
        return present[0] if present else ","
    try:
        return csv.Sniffer().sniff(header, delimiters=DELIMITERS).delimiter
    except csv.Error:
        return ","


def _header(path: Path, delimiter: str) -> tuple[list[str], bool]:
    """The header row, stripped, export columns renamed; whether it is a fleet export."""
    try:
        with path.open(encoding="utf-8-sig", newline="") as handle:
            header = next(csv.reader(handle, delimiter=delimiter), None)
    except csv.Error as exc:
        raise InvalidInput(f"{path}: the header row is not valid CSV ({exc})") from exc
    if not header:
        raise InvalidInput(f"{path} is empty: expected a header row ({', '.join(COLUMNS)})")
    header = [c.strip() for c in header]
    export = "device_id" in header and "id" not in header
    if export:
        header = [EXPORT_ALIASES.get(c, c) for c in header]
    return header, export


def _scan_csv(handle: IO[bytes]) -> int:
    """Check that the file is UTF-8; count its line ends."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    lines = 0
    for block in iter(lambda: handle.read(_READ_BLOCK), b""):
        decoder.decode(block)
        lines += block.count(b"\n")
    decoder.decode(b"", final=True)
    return lines


def _scan_jsonl(handle: IO[bytes]) -> tuple[int, set[str]]:
    """Check that the file is UTF-8; count its lines and collect unknown keys."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    lines = 0
    unknown: set[str] = set()
    for raw in handle:
        lines += 1
        text = decoder.decode(raw)
        if not text.strip():
            continue
        try:
            value = json.loads(text)
        except (ValueError, RecursionError):
            continue  # reported for its row
        if isinstance(value, dict):
            unknown.update(k for k in value if k not in COLUMNS)
    decoder.decode(b"", final=True)
    return lines, unknown


def _check_csv_header(path: Path, delimiter: str) -> tuple[set[str], bool]:
    """The header's unknown columns (an export's own are not), and whether the file is a
    fleet export; refuse a header without ``id`` or with a repeat."""
    header, export = _header(path, delimiter)
    if len(set(header)) != len(header):
        raise InvalidInput(f"{path}: a column appears twice in the header")
    if "id" not in header:
        raise InvalidInput(f"{path}: the header has no 'id' column (allowed: {', '.join(COLUMNS)})")
    # an export's other columns (status, cert_serial, clouds...) are expected: no warning
    unknown = set() if export else {c for c in header if c not in COLUMNS}
    return unknown, export


def batches(source: Source) -> Iterator[list[Record]]:
    """The file's records in groups of :data:`BATCH_SIZE`, in file order."""
    group: list[Record] = []
    for record in _iter_records(source):
        group.append(record)
        if len(group) >= BATCH_SIZE:
            yield group
            group = []
    if group:
        yield group


def _iter_records(source: Source) -> Iterator[Record]:
    if source.fmt == "csv":
        yield from _iter_csv(source.path, source.delimiter)
    else:
        yield from _iter_jsonl(source.path)


def _iter_csv(path: Path, delimiter: str = ",") -> Iterator[Record]:
    header, _export = _header(path, delimiter)
    with path.open(encoding="utf-8-sig", newline="") as handle:
        reader = csv.reader(handle, delimiter=delimiter)
        next(reader)
        last = reader.line_num
        while True:
            try:
                values = next(reader)
            except StopIteration:
                return
            except csv.Error as exc:  # e.g. a field over the csv module's limit: this row only
                line, last = last + 1, reader.line_num
                yield line, RowError(line, "", f"not valid CSV ({exc})")
                continue
            line, last = last + 1, reader.line_num
            if not values or values == [""]:
                continue
            yield line, _csv_record(line, header, values)


def _csv_record(line: int, header: list[str], values: list[str]) -> Row | RowError:
    """One CSV row checked: its fields by column, its ``labels`` cell parsed."""
    if len(values) != len(header):
        device_id = values[header.index("id")] if len(values) > header.index("id") else ""
        found = f"expected {len(header)} fields, found {len(values)}"
        return RowError(line, printable(device_id[:128]), found)
    fields: dict[str, Any] = {
        k: (v if v != "" else None) for k, v in zip(header, values, strict=True)
    }
    labels_text = fields.get("labels")
    try:
        fields["labels"] = parse_label_cell(labels_text) if labels_text else None
    except FleetError as exc:
        return RowError(line, printable(str(fields.get("id") or "")[:128]), str(exc))
    return _make_row(line, fields)


def parse_label_cell(text: str) -> dict[str, str]:
    """A CSV ``labels`` cell: ``k=v;k=v``, or a JSON object as fleet's export writes it."""
    if text.lstrip().startswith("{"):
        try:
            value = json.loads(text)
        except (ValueError, RecursionError):
            raise InvalidInput("labels cell is not a valid JSON object") from None
        if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
            raise InvalidInput("labels must be an object of strings")
        return value
    return parse_label_list(text)


def parse_label_list(text: str) -> dict[str, str]:
    """A CSV ``labels`` cell, ``k=v;k=v``, as a dict (each key once)."""
    labels: dict[str, str] = {}
    for item in text.split(";"):
        if not item.strip():
            continue
        key, sep, value = item.partition("=")
        if not sep:
            raise InvalidInput(f"label {item!r} must be KEY=VALUE (labels are k=v;k=v)")
        key = key.strip()
        if key in labels:
            raise InvalidInput(f"label {key!r} given twice")
        labels[key] = value
    return labels


def _iter_jsonl(path: Path) -> Iterator[Record]:
    with path.open(encoding="utf-8-sig") as handle:
        for line, text in enumerate(handle, start=1):
            if not text.strip():
                continue
            try:
                value = json.loads(text)
            except ValueError as exc:
                yield line, RowError(line, "", f"not valid JSON ({exc})")
                continue
            except RecursionError:
                yield line, RowError(line, "", "not valid JSON (nested too deep)")
                continue
            if not isinstance(value, dict):
                yield line, RowError(line, "", "each line must be a JSON object")
                continue
            yield line, _make_row(line, value)


def _make_row(line: int, fields: dict[str, Any]) -> Row | RowError:
    raw_id = fields.get("id")
    shown_id = raw_id if isinstance(raw_id, str) else ("" if raw_id is None else repr(raw_id))
    shown_id = printable(shown_id[:128])
    try:
        if raw_id is not None and not isinstance(raw_id, str):
            raise InvalidInput("id must be a string")
        device_id = validate_device_id(raw_id or "")
        texts: dict[str, str | None] = {}
        for name in ("model", "serial", "profile", "csr"):
            value = fields.get(name)
            if value is not None and not isinstance(value, str):
                raise InvalidInput(f"{name} must be a string")
            texts[name] = value
        validate_text_field("model", texts["model"])
        validate_text_field("serial", texts["serial"])
        validate_text_field("csr", texts["csr"], limit=4096)
        if texts["profile"] is not None and not is_utf8_text(texts["profile"]):
            raise InvalidInput("profile is not valid Unicode text (a lone surrogate)")
        labels = fields.get("labels")
        if labels is None:
            labels = {}
        elif not isinstance(labels, dict):
            raise InvalidInput("labels must be an object of strings")
        for key, value in labels.items():
            validate_label(key, value)
    except FleetError as exc:
        return RowError(line, shown_id, str(exc))
    return Row(
        line,
        device_id,
        texts["model"],
        texts["serial"],
        dict(labels),
        texts["profile"] or "",
        texts["csr"],
    )
