"""Properties of fleet's input parsers, shared by ``tests/test_fuzz_inputs.py`` (few examples,
in CI) and ``bench/fuzz.py`` (many): whatever the input, the parser returns a value or raises
one of the documented :class:`~fleet.errors.FleetError` subclasses, nothing else."""

from __future__ import annotations

import contextlib
import csv
import io
import json
import tempfile
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from hypothesis import strategies as st

from fleet.errors import InvalidInput
from fleet.identifiers import (
    is_utf8_text,
    parse_label,
    parse_labels,
    parse_timestamp,
    validate_label,
)
from fleet.provision.source import COLUMNS, Row, RowError, batches, open_source, parse_label_list

NOW = datetime(2027, 3, 1, 9, 0, tzinfo=UTC)

# Characters that break naive parsers: separators, quotes, line ends, NUL, lone surrogates.
_NASTY = ["", ",", ";", "=", '"', "\n", "\r", "\r\n", "\x00", "\ud800", "\udfff", "\ufeff", " "]
nasty_text = st.lists(st.one_of(st.characters(), st.sampled_from(_NASTY)), max_size=30).map("".join)


# --- the provisioning file --------------------------------------------------------------


def _csv_bytes(header: list[str], rows: list[list[str]], tail: bytes) -> bytes:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return buffer.getvalue().encode("utf-8", "surrogatepass") + tail


csv_files = st.builds(
    _csv_bytes,
    st.lists(st.one_of(st.sampled_from(COLUMNS), nasty_text), min_size=1, max_size=7),
    st.lists(st.lists(nasty_text, max_size=8), max_size=6),
    st.binary(max_size=30),
)

_json_leaf = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), nasty_text
)
json_values = st.recursive(
    _json_leaf,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.dictionaries(st.one_of(st.sampled_from(COLUMNS), nasty_text), inner, max_size=6),
    ),
    max_leaves=12,
)


def _jsonl_bytes(values: list[Any], raw: list[bytes]) -> bytes:
    lines = [json.dumps(v).encode("ascii") for v in values]  # ensure_ascii: \\ud800 escapes
    return b"\n".join(lines + raw) + b"\n"


jsonl_files = st.builds(
    _jsonl_bytes,
    st.lists(
        st.one_of(
            json_values,
            st.fixed_dictionaries(
                {
                    "id": st.one_of(
                        st.from_regex(r"[a-z][a-z0-9-]{0,8}", fullmatch=True), nasty_text
                    )
                },
                optional={name: json_values for name in COLUMNS if name != "id"},
            ),
        ),
        max_size=6,
    ),
    st.lists(st.binary(max_size=20), max_size=2),
)


def check_source(data: bytes, suffix: str) -> None:
    """Read ``data`` as a provisioning file: refused whole (:class:`InvalidInput`) or every
    line a valid row or a row error; every string storable (UTF-8)."""
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / f"devices.{suffix}"
        path.write_bytes(data)
        try:
            source = open_source(path, None)
        except InvalidInput:
            return
        for group in batches(source):
            for line, record in group:
                assert line >= 1
                if isinstance(record, RowError):
                    assert is_utf8_text(record.error) and is_utf8_text(record.device_id)
                    continue
                assert isinstance(record, Row)
                for text in (record.device_id, record.model, record.serial, record.csr):
                    assert text is None or is_utf8_text(text)
                for key, value in record.labels.items():
                    assert validate_label(key, value) == (key, value)


# --- times and durations --------------------------------------------------------------------

times = st.one_of(
    nasty_text,
    st.from_regex(r"\d{1,25}[smhdw]", fullmatch=True),
    st.datetimes(timezones=st.timezones()).map(lambda d: d.isoformat()),
    st.datetimes().map(lambda d: d.isoformat() + "Z"),
    st.from_regex(r"\d{4}-\d{2}-\d{2}(T\d{2}:\d{2}(:\d{2})?)?([+-]\d{2}:\d{2}|Z)?", fullmatch=True),
)


def check_timestamp(text: str) -> None:
    """A time is a UTC datetime or :class:`InvalidInput`."""
    try:
        moment = parse_timestamp(text, now=NOW)
    except InvalidInput:
        return
    assert moment.tzinfo is not None and moment.utcoffset() == UTC.utcoffset(moment)


# --- labels ---------------------------------------------------------------------------------

label_texts = st.one_of(
    nasty_text,
    st.builds(lambda k, v: f"{k}={v}", nasty_text, nasty_text),
    st.lists(st.builds(lambda k, v: f"{k}={v}", nasty_text, nasty_text), max_size=4).map(";".join),
)


def check_label(text: str) -> None:
    """``KEY=VALUE``, a CSV ``k=v;k=v`` cell and ``--label`` lists: accepted (storable, the
    key on one line) or :class:`InvalidInput`."""
    with contextlib.suppress(InvalidInput):
        parse_label_list(text)  # a CSV cell: its keys and values are checked per row
    for parse in (parse_label, lambda t: parse_labels([t])):
        try:
            parsed: Any = parse(text)
        except InvalidInput:
            continue
        pairs = [parsed] if isinstance(parsed, tuple) else list(parsed.items())
        for key, value in pairs:
            assert is_utf8_text(key) and "\n" not in key and is_utf8_text(value)
    key, _, value = text.partition("=")
    try:
        validate_label(key, value)
    except InvalidInput:
        return
    assert key.strip() == key and is_utf8_text(value) and "\n" not in key


PROPERTIES: dict[str, tuple[Any, Callable[..., None]]] = {
    "csv": (csv_files.map(lambda b: (b, "csv")), lambda args: check_source(*args)),
    "jsonl": (jsonl_files.map(lambda b: (b, "jsonl")), lambda args: check_source(*args)),
    "timestamp": (times, check_timestamp),
    "label": (label_texts, check_label),
}
"""name -> (strategy, check): each check takes one drawn value."""

KNOWN: dict[str, list[Any]] = {
    "csv": [(b"id,model\nok-1," + b"x" * 200_000 + b"\nok-2,p\n", "csv")],
    "jsonl": [
        (b'{"id": "a-1", "model": "\\ud800"}\n', "jsonl"),
        (b"[" * 100_000 + b"]" * 100_000 + b"\n", "jsonl"),
        (b'{"id": "a-1", "labels": []}\n', "jsonl"),
    ],
    "timestamp": ["800000d", "9999-12-31T23:59:59-01:00", "0001-01-01T00:00:00+00:30", ""],
    "label": ["site\n=x", "k=\udcff"],
}
"""Inputs that once got through, checked first every time."""
