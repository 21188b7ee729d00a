"""Writing rows out: batches of UTF-8 lines go to a stream as CSV, JSON or JSONL, from a
second thread, so that writing overlaps reading the next rows from the database."""

from __future__ import annotations

import codecs
import queue
import threading
from collections.abc import Callable, Iterable
from typing import TextIO

from fleet.export.telemetry import EXPORT_COLUMNS

# What ends each row in a file: CSV lines CRLF (RFC 4180), JSONL LF. Rows are produced
# without it; JSON objects in an array are separated by ",\n" instead.
LINE_ENDS = {"csv": b"\r\n", "jsonl": b"\n"}


def write_lines(stream: TextIO, fmt: str, batches: Iterable[list[bytes]]) -> int:
    """Write rows given as batches of UTF-8 rows without line ends in ``fmt`` (CSV and
    JSONL lines end as :data:`LINE_ENDS` says; JSON objects go in an array); return how
    many. The batches are the caller's to give away (they are appended to)."""
    count = 0
    writer = _BackgroundWriter(_byte_sink(stream))
    write = writer.write
    try:
        if fmt == "json":
            write(b"[")
            for batch in batches:
                if batch:
                    write((b"\n" if not count else b",\n") + b",\n".join(batch))
                    count += len(batch)
            write(b"\n]\n" if count else b"]\n")
        else:
            end = LINE_ENDS[fmt]
            if fmt == "csv":
                write(",".join(EXPORT_COLUMNS).encode() + end)
            for batch in batches:
                if batch:
                    count += len(batch)
                    batch.append(b"")  # so the join ends the last line too
                    write(end.join(batch))
    finally:
        # a failed write leaves the source mid-way: close its cursor (or worker pool) now,
        # while its connection is still open, not whenever it is garbage-collected
        close = getattr(batches, "close", None)
        if close is not None:
            close()
        writer.close()
    return count


def _byte_sink(stream: TextIO) -> Callable[[bytes], object]:
    """Where UTF-8 bytes go: the stream's binary buffer when it has one and encodes UTF-8
    (files, stdout), so rows from the database are never decoded and re-encoded."""
    buffer = getattr(stream, "buffer", None)
    if buffer is not None and codecs.lookup(stream.encoding or "ascii").name == "utf-8":
        stream.flush()
        return buffer.write  # type: ignore[no-any-return]
    return lambda data: stream.write(data.decode("utf-8"))


class _BackgroundWriter:
    """Writes chunks from a second thread, so that writing the output overlaps reading the
    next rows from the database (both release the GIL). Errors surface in the caller."""

    def __init__(self, write: Callable[[bytes], object]) -> None:
        self._write = write
        self._chunks: queue.Queue[bytes | None] = queue.Queue(maxsize=4)
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="fleet-export-writer")
        self._thread.start()

    def _run(self) -> None:
        while (chunk := self._chunks.get()) is not None:
            if self._error is None:
                try:
                    self._write(chunk)
                except BaseException as exc:  # handed to the caller's thread
                    self._error = exc

    def write(self, chunk: bytes) -> None:
        """Queue ``chunk`` (raises the error of an earlier write, if any)."""
        if self._error is not None:
            raise self._error
        self._chunks.put(chunk)

    def close(self) -> None:
        """Wait until every chunk is written; raise the first write error."""
        self._chunks.put(None)
        self._thread.join()
        if self._error is not None:
            raise self._error
