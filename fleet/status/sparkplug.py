"""Sparkplug B 3.0 payloads and topics: just what ``fleet watch`` needs.

A small protobuf wire-format reader for the ``Payload`` message of Eclipse Sparkplug B
(``sparkplug_b.proto``): the payload's ``timestamp`` (1) and ``seq`` (3), and each metric's
``name`` (1), ``timestamp`` (3), ``datatype`` (4) and value (``int_value`` 10, ``long_value``
11, ``boolean_value`` 14, ``string_value`` 15). Other fields (float/double values, data sets,
templates, property sets, metadata) are skipped by wire type, so payloads carrying them still
decode. Hand-written rather than generated: no protobuf runtime to depend on for five fields.

:func:`encode_payload` writes the same subset (the tests and the benchmark publish with it;
the tests also publish with an independent implementation, pysparkplug).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

from fleet.errors import InvalidInput

NAMESPACE = "spBv1.0"
BD_SEQ = "bdSeq"

# Sparkplug B DataType values whose value lives in int_value / long_value / string_value
_INT_TYPES = {1, 2, 3, 5, 6, 7}  # Int8, Int16, Int32, UInt8, UInt16, UInt32
_LONG_TYPES = {4, 8, 13}  # Int64, UInt64, DateTime
_STRING_TYPES = {12, 14, 15}  # String, Text, UUID
INT64, STRING = 4, 12

# Metric names taken as the reported firmware version, compared after lower-casing and
# removing spaces, "_" and "-", on the last path segment ("Properties/Firmware Version").
FIRMWARE_METRICS = frozenset({"firmwareversion", "firmware", "fwversion", "firmwarerevision"})


class MessageKind(StrEnum):
    """The Sparkplug message types ``fleet watch`` subscribes to."""

    NBIRTH = "NBIRTH"
    NDEATH = "NDEATH"
    DBIRTH = "DBIRTH"
    DDEATH = "DDEATH"


@dataclass(frozen=True, slots=True)
class Topic:
    """``spBv1.0/{group}/{kind}/{node}[/{device}]``."""

    group: str
    kind: MessageKind
    node: str
    device: str | None = None


def parse_topic(topic: str) -> Topic | None:
    """The Sparkplug topic's parts, or None when ``topic`` is not one of the four kinds."""
    parts = topic.split("/")
    if len(parts) not in (4, 5) or parts[0] != NAMESPACE:
        return None
    try:
        kind = MessageKind(parts[2])
    except ValueError:
        return None
    is_device = kind in (MessageKind.DBIRTH, MessageKind.DDEATH)
    if len(parts) != (5 if is_device else 4) or not all(parts):
        return None
    return Topic(parts[1], kind, parts[3], parts[4] if is_device else None)


@dataclass(slots=True)
class Metric:
    """One decoded metric (value: int, bool, str or None for the types not decoded)."""

    name: str | None = None
    datatype: int | None = None
    timestamp: int | None = None
    value: int | bool | str | None = None


@dataclass(slots=True)
class Payload:
    """A decoded Sparkplug B payload (times in ms since the epoch)."""

    timestamp: int | None = None
    seq: int | None = None
    metrics: list[Metric] = field(default_factory=list)

    @property
    def bd_seq(self) -> int | None:
        """The ``bdSeq`` metric's value (NBIRTH and NDEATH carry it), else None."""
        for metric in self.metrics:
            if metric.name == BD_SEQ and isinstance(metric.value, int):
                return int(metric.value)
        return None

    @property
    def firmware(self) -> str | None:
        """A firmware version reported in a metric named as in :data:`FIRMWARE_METRICS`."""
        for metric in self.metrics:
            if metric.name and isinstance(metric.value, str) and metric.value:
                last = metric.name.rsplit("/", 1)[-1].lower()
                if "".join(c for c in last if c not in " _-") in FIRMWARE_METRICS:
                    return metric.value[:128]
        return None


class _Reader:
    def __init__(self, data: bytes) -> None:
        self.data, self.pos = data, 0

    def varint(self) -> int:
        data, pos = self.data, self.pos
        if pos < len(data) and data[pos] < 0x80:  # most tags and small values: one byte
            self.pos = pos + 1
            return data[pos]
        result = shift = 0
        while True:
            if pos >= len(data) or shift > 63:
                raise InvalidInput("Sparkplug payload: truncated or overlong varint")
            byte = data[pos]
            pos += 1
            result |= (byte & 0x7F) << shift
            if not byte & 0x80:
                self.pos = pos
                return result
            shift += 7

    def fields(self) -> list[tuple[int, int, int | bytes]]:
        """(field number, wire type, value): varints as int, the rest as bytes."""
        found: list[tuple[int, int, int | bytes]] = []
        while self.pos < len(self.data):
            tag = self.varint()
            number, wire = tag >> 3, tag & 7
            if wire == 0:
                found.append((number, wire, self.varint()))
            elif wire in (1, 5):
                size = 8 if wire == 1 else 4
                found.append((number, wire, self._take(size)))
            elif wire == 2:
                found.append((number, wire, self._take(self.varint())))
            else:
                raise InvalidInput(f"Sparkplug payload: unsupported wire type {wire}")
        return found

    def _take(self, size: int) -> bytes:
        if self.pos + size > len(self.data):
            raise InvalidInput("Sparkplug payload: truncated field")
        chunk = self.data[self.pos : self.pos + size]
        self.pos += size
        return chunk


def _signed(value: int, datatype: int | None) -> int:
    """Sparkplug stores signed integers as their two's complement in an unsigned field."""
    if datatype in (1, 2, 3) and value >= 1 << 31:
        return value - (1 << 32)
    if datatype == 4 and value >= 1 << 63:
        return value - (1 << 64)
    return value


def _metric(data: bytes) -> Metric:
    metric = Metric()
    raw: int | bool | str | None = None
    for number, _wire, value in _Reader(data).fields():
        if number == 1 and isinstance(value, bytes):
            metric.name = value.decode("utf-8", "replace")
        elif number == 3 and isinstance(value, int):
            metric.timestamp = value
        elif number == 4 and isinstance(value, int):
            metric.datatype = value
        elif number in (10, 11) and isinstance(value, int):
            raw = value
        elif number == 14 and isinstance(value, int):
            raw = bool(value)
        elif number == 15 and isinstance(value, bytes):
            raw = value.decode("utf-8", "replace")
    metric.value = _signed(raw, metric.datatype) if type(raw) is int else raw
    return metric


def decode_payload(data: bytes) -> Payload:
    """Decode a Sparkplug B ``Payload``; :class:`InvalidInput` when it is not protobuf."""
    payload = Payload()
    for number, _wire, value in _Reader(data).fields():
        if number == 1 and isinstance(value, int):
            payload.timestamp = value
        elif number == 2 and isinstance(value, bytes):
            payload.metrics.append(_metric(value))
        elif number == 3 and isinstance(value, int):
            payload.seq = value
    return payload


def _varint(value: int) -> bytes:
    out = bytearray()
    value &= (1 << 64) - 1
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _field(number: int, value: int | bytes) -> bytes:
    if isinstance(value, int):
        return _varint(number << 3) + _varint(value)
    return _varint(number << 3 | 2) + _varint(len(value)) + value


def encode_payload(
    timestamp: int, *, seq: int | None = None, metrics: dict[str, int | str] | None = None
) -> bytes:
    """A Sparkplug B payload with int (Int64) and string metrics (tests and benchmarks)."""
    out = _field(1, timestamp)
    for name, value in (metrics or {}).items():
        body = _field(1, name.encode()) + _field(3, timestamp)
        if isinstance(value, str):
            body += _field(4, STRING) + _field(15, value.encode())
        else:
            body += _field(4, INT64) + _field(11, value)
        out += _field(2, body)
    if seq is not None:
        out += _field(3, seq)
    return out
