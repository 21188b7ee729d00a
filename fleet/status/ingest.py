"""``fleet status ingest FILE|-``: connection events from JSON Lines, in the platforms' own
shapes, recognised line by line.

- AWS IoT lifecycle events (what ``$aws/events/presence/connected|disconnected/{clientId}``
  carries): ``clientId``, ``timestamp`` (ms), ``eventType``, ``sessionIdentifier``,
  ``versionNumber`` (the ordering marker), ``disconnectReason``;
- Azure IoT Hub ``Microsoft.Devices.DeviceConnected|DeviceDisconnected`` through Event Grid,
  in the Event Grid schema (``eventType``, ``eventTime``) or as a CloudEvent (``type``,
  ``time``): ``data.deviceId`` and ``data.deviceConnectionStateEventInfo.sequenceNumber``;
- fleet's own: ``{"device_id": "...", "state": "online"|"offline", "time": "ISO 8601"}``
  with optional ``reason``, ``firmware`` and ``source``.

A line that is none of these, or is broken, goes to the report with its line number; the
others are recorded (in batches, so memory stays flat for any file size).
"""

from __future__ import annotations

import csv
import io
import signal
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from itertools import islice
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

import orjson

from fleet import clock
from fleet.files import atomic_write
from fleet.processes import worker_context
from fleet.registry.bulk import utc_text
from fleet.status.events import (
    RecordReport,
    Seen,
    event_row,
    record_batches,
    record_row_chunks,
    uses_sqlite_driver,
)
from fleet.status.sqlite_record import EventRow, in_order
from fleet.statuses import ConnectionState, EventSource

if TYPE_CHECKING:
    from fleet.workspace import Workspace

BATCH = 20_000  # events per transaction (PostgreSQL)
CHUNK_BYTES = 2 * 1024 * 1024  # lines parsed and recorded together (SQLite): ~20,000 events
AHEAD = 3  # chunks handed to the parsing worker ahead of the one being recorded
LINE_MAX = 64 * 1024
AZURE_TYPES = {
    "Microsoft.Devices.DeviceConnected": ConnectionState.ONLINE,
    "Microsoft.Devices.DeviceDisconnected": ConnectionState.OFFLINE,
}
AWS_TYPES = {"connected": ConnectionState.ONLINE, "disconnected": ConnectionState.OFFLINE}
# lookups, not enum calls: a million lines pay for each
_STATES = {state.value: state for state in ConnectionState}
_SOURCES = {source.value: source for source in EventSource}


class BadLine(ValueError):
    """Why a line is not an event."""


@dataclass
class IngestReport:
    """What ``fleet status ingest`` did: the recording report, and the lines it refused."""

    lines: int = 0
    recorded: RecordReport = field(default_factory=RecordReport)
    bad: list[tuple[int, str]] = field(default_factory=list)
    bad_count: int = 0

    def refuse(self, number: int, error: str) -> None:
        """Count line ``number`` as bad, for ``error`` (the first 10,000 are listed)."""
        self.bad_count += 1
        if len(self.bad) < 10_000:
            self.bad.append((number, error))

    def to_dict(self) -> dict[str, Any]:
        """The report as ``--json`` shows it (at most 20 bad lines listed)."""
        return {
            "lines": self.lines,
            **self.recorded.to_dict(),
            "bad": self.bad_count,
            "bad_lines": [{"line": n, "error": e} for n, e in self.bad[:20]],
        }


def parse_event(value: Any) -> Seen:
    """One JSON value as a connection event, in whichever shape it is; :class:`BadLine` if
    it is none of them."""
    if not isinstance(value, dict):
        raise BadLine("not a JSON object")
    if "clientId" in value and "eventType" in value:
        return _aws(value)
    kind = value.get("eventType", value.get("type"))
    if isinstance(kind, str) and kind.startswith("Microsoft.Devices."):
        return _azure(value, kind)
    if "device_id" in value:
        return _fleet(value)
    raise BadLine("not an AWS lifecycle, Azure Event Grid or fleet connection event")


def _text(value: dict[str, Any], name: str, *, limit: int = 128) -> str:
    item = value.get(name)
    if not isinstance(item, str) or not item or len(item) > limit:
        raise BadLine(f"{name!r} must be a string of 1 to {limit} characters")
    return item


def _optional_text(value: dict[str, Any], name: str, limit: int) -> str | None:
    item = value.get(name)
    if item is None:
        return None
    if not isinstance(item, str):
        raise BadLine(f"{name!r} must be a string")
    return item[:limit]


def _moment(text: Any, name: str) -> tuple[datetime, str | None]:
    """An event's absolute time (ISO 8601; no offset means UTC), in UTC, and its stored text
    (:func:`~fleet.registry.bulk.utc_text`) when ``text`` is already UTC with microseconds or
    whole seconds: cut from it rather than formatted."""
    if not isinstance(text, str):
        raise BadLine(f"{name!r} must be an ISO 8601 time")
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise BadLine(f"{name!r}: cannot parse time {text[:40]!r} (ISO 8601)") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    elif moment.tzinfo is not UTC:
        moment = moment.astimezone(UTC)
    # it parsed, so at these fixed positions are its own zero-padded ASCII fields
    size = len(text)
    if (
        size in (25, 32)
        and text.isascii()
        and text[10] == "T"
        and text[13] == text[16] == ":"
        and text[-6:] in _UTC_SUFFIXES
    ):
        if size == 32 and text[19] == ".":
            return moment, f"{text[:10]} {text[11:26]}"
        if size == 25:
            return moment, f"{text[:10]} {text[11:19]}.000000"
    return moment, None


_UTC_SUFFIXES = frozenset({"+00:00", "-00:00"})


def _aws(value: dict[str, Any]) -> Seen:
    state = AWS_TYPES.get(value["eventType"])
    if state is None:
        raise BadLine(f"AWS eventType {value['eventType']!r} is not connected/disconnected")
    stamp = value.get("timestamp")
    if not isinstance(stamp, int) or isinstance(stamp, bool) or stamp < 0:
        raise BadLine("AWS 'timestamp' must be epoch milliseconds")
    version = value.get("versionNumber")
    if version is not None and (not isinstance(version, int) or version < 0):
        raise BadLine("AWS 'versionNumber' must be a non-negative integer")
    try:
        moment = datetime.fromtimestamp(stamp / 1000, UTC)
    except (OverflowError, OSError, ValueError):
        raise BadLine("AWS 'timestamp' is out of range") from None
    return Seen(
        device_id=_text(value, "clientId"),
        state=state,
        source=EventSource.AWS,
        source_time=moment,
        # zero-padded, so text order is number order
        marker=None if version is None else f"{version:020d}",
        session=_optional_text(value, "sessionIdentifier", 128),
        reason=_optional_text(value, "disconnectReason", 256),
    )


def _azure(value: dict[str, Any], kind: str) -> Seen:
    state = AZURE_TYPES.get(kind)
    if state is None:
        raise BadLine(f"Azure event type {kind!r} is not DeviceConnected/DeviceDisconnected")
    data = value.get("data")
    if not isinstance(data, dict):
        raise BadLine("Azure event has no 'data' object")
    info = data.get("deviceConnectionStateEventInfo")
    sequence = info.get("sequenceNumber") if isinstance(info, dict) else None
    if sequence is not None and (not isinstance(sequence, str) or len(sequence) > 80):
        raise BadLine("Azure 'sequenceNumber' must be a string of at most 80 characters")
    moment, text = _moment(value.get("eventTime", value.get("time")), "eventTime")
    return Seen(
        device_id=_text(data, "deviceId"),
        state=state,
        source=EventSource.AZURE,
        source_time=moment,
        marker=sequence,
        time_text=text,
    )


def _fleet(value: dict[str, Any]) -> Seen:
    # the bulk of a large ingest: written for speed, the same checks as the other shapes
    get = value.get
    state = get("state")
    state = _STATES.get(state) if type(state) is str else None
    if state is None:
        raise BadLine("'state' must be 'online' or 'offline'")
    source = get("source", "ingest")
    chosen = _SOURCES.get(source) if type(source) is str else None
    if chosen is None:
        raise BadLine(f"'source' must be one of {', '.join(EventSource)}")
    device_id = get("device_id")
    if type(device_id) is not str or not 0 < len(device_id) <= 128:
        device_id = _text(value, "device_id")  # its error
    moment, text = _moment(get("time"), "time")
    marker, reason, firmware = get("marker"), get("reason"), get("firmware")
    return Seen(
        device_id,
        state,
        chosen,
        moment,
        None if marker is None else _optional_text(value, "marker", 80),
        None,
        None if reason is None else _optional_text(value, "reason", 256),
        None if firmware is None else _optional_text(value, "firmware", 128),
        text,
    )


def _parse_line(raw: bytes) -> Seen:
    if len(raw) > LINE_MAX:
        raise BadLine(f"line longer than {LINE_MAX} bytes")
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise BadLine(f"not JSON: {exc}") from None
    return parse_event(value)


def _chunks(stream: IO[bytes], report: IngestReport) -> Iterator[tuple[int, bytes]]:
    """The stream in blocks of whole lines, about :data:`CHUNK_BYTES` each, each with its
    first line's number; ``report.lines`` counts the lines read. A block is one bytes object:
    the parser splits it (in the worker, when there is one), not this process."""
    first = 1
    while block := stream.read(CHUNK_BYTES):
        if not block.endswith(b"\n"):
            block += stream.readline()
        yield first, block
        first += block.count(b"\n") + (not block.endswith(b"\n"))
        report.lines = first - 1


def _events(first: int, block: bytes, refuse: Callable[[int, str], object]) -> Iterator[Seen]:
    """The events in the lines of ``block`` (numbered from ``first``); ``refuse(number,
    error)`` for each line that is not one. Blank lines are skipped."""
    lines = block.split(b"\n")
    if block.endswith(b"\n"):
        lines.pop()  # what follows the last newline is no line
    for number, raw in enumerate(lines, start=first):
        if not raw.strip():
            continue
        try:
            yield _parse_line(raw)
        except BadLine as exc:
            refuse(number, str(exc))


def _lines(stream: IO[bytes], report: IngestReport) -> Iterator[Seen]:
    for first, block in _chunks(stream, report):
        yield from _events(first, block, report.refuse)


# what a parse job gets (its first line's number, a block of lines, the received time text)
# and gives back (the events as rows, the refused lines)
ParseJob = tuple[int, bytes, str]
Parsed = tuple[list[EventRow], list[tuple[int, str]]]


def _parse_job(job: ParseJob) -> Parsed:
    first, block, received = job
    bad: list[tuple[int, str]] = []
    refuse = lambda number, error: bad.append((number, error))  # noqa: E731
    rows = [event_row(event, received) for event in _events(first, block, refuse)]
    # in the order the recorder takes them: sorting here costs the recording process nothing
    rows.sort(key=in_order)
    return rows, bad


def _rows(stream: IO[bytes], report: IngestReport, received: str) -> Iterator[list[EventRow]]:
    """The events in ``stream`` as rows, a chunk at a time: parsed in a worker process
    (:func:`_parsed_ahead`) while this one records the chunk before."""
    jobs = ((first, block, received) for first, block in _chunks(stream, report))
    for rows, bad in _parsed_ahead(jobs):
        for number, error in bad:
            report.refuse(number, error)
        yield rows


def _parsed_ahead(jobs: Iterator[ParseJob]) -> Iterator[Parsed]:
    """:func:`_parse_job` over ``jobs``, in order. A stream of one chunk is parsed here;
    a longer one in a worker process, :data:`AHEAD` jobs ahead, so that parsing and hashing
    (a third of the work) run beside the recording."""
    head = list(islice(jobs, 2))
    if len(head) < 2:
        yield from map(_parse_job, head)
        return
    pool = ProcessPoolExecutor(1, mp_context=worker_context(), initializer=_ignore_interrupts)
    try:
        ahead = deque(pool.submit(_parse_job, job) for job in head)
        for job in jobs:
            if len(ahead) >= AHEAD:
                yield ahead.popleft().result()
            ahead.append(pool.submit(_parse_job, job))
        while ahead:
            yield ahead.popleft().result()
    finally:
        pool.shutdown(cancel_futures=True)


def _ignore_interrupts() -> None:
    # Ctrl-C reaches the whole process group: the command reports it, not its worker
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def ingest(ws: Workspace, stream: IO[bytes], *, report_path: Path | None = None) -> IngestReport:
    """Record the connection events in ``stream`` (JSON Lines) in batches; write refused
    lines to ``report_path`` (CSV ``line,error``) if given. Example::

        with open("presence.jsonl", "rb") as f:
            print(ingest(ws, f).to_dict())
    """
    report = IngestReport()
    engine = ws.open_registry()
    if uses_sqlite_driver(engine):
        rows = _rows(stream, report, utc_text(clock.now()))
        report.recorded = record_row_chunks(engine, rows, ordered=True)
    else:
        report.recorded = record_batches(ws, _lines(stream, report), batch=BATCH)
    if report_path is not None:
        body = io.StringIO()
        writer = csv.writer(body, lineterminator="\n")
        writer.writerow(("line", "error"))
        writer.writerows(report.bad)
        atomic_write(report_path, body.getvalue().encode("utf-8"))
    return report
