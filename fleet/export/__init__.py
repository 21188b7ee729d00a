"""Auditor exports: the registry (now, or as it was at a moment) and the audit trail.

Rows (their layout, rendering and sources) come from :mod:`fleet.export.rows`: a live export
reads the export cache in one ordered scan, ``--as-of`` replays the audit trail. CSV is flat
(RFC 4180, CRLF line ends, a header row of :data:`CSV_COLUMNS`); free-text cells that start
with ``=``, ``+``, ``-``, ``@``, TAB or CR get a leading ``'`` so spreadsheets do not run
them as formulas (OWASP's advice). JSON (an array, one device per line) and JSONL are nested
and unescaped. Nothing secret is exported: no keys, no PEM.

Written files appear whole or not at all: rows stream to a temporary file beside the target,
which is renamed into place once the manifest and signatures (:mod:`fleet.pki.cms`) exist.
"""

from __future__ import annotations

import codecs
import csv
import hashlib
import io
import itertools
import json
import multiprocessing
import operator
import os
import queue
import sys
import tempfile
import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

from sqlalchemy import select
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import DBAPIError

from fleet import __version__
from fleet.errors import InvalidInput
from fleet.export.cache import cache_is_current, cached_query
from fleet.export.rows import (
    BATCH_ROWS,
    CERT_FIELDS,
    CSV_COLUMNS,
    DEVICE_FIELDS,
    FILTER_FIELDS,
    LAYOUT,
    LINE_ENDS,
    SECTIONS,
    ExportFilters,
    Rendered,
    Section,
    canonical_labels,
    cells_matcher,
    csv_safe,
    effective_status,
    iso_moment,
    line,
    live_query,
    live_rows,
    parse_filters,
    render,
    replayed_cells,
    row_batches,
    row_to_object,
)
from fleet.pki import ca
from fleet.pki.cms import (
    SignatureError,
    Signer,
    load_root,
    sha256_file,
    sign_detached,
    verify_detached,
)
from fleet.pki.signers import load_signer
from fleet.registry import audit
from fleet.registry.db import read_session, write_session
from fleet.registry.models import AuditHead, Device
from fleet.workspace import Passphrase, Workspace

FORMATS = ("csv", "json", "jsonl")
MANIFEST_VERSION = 1


def row_to_json(cells: list[Any], moment: str = "") -> str:
    """One row's JSON object text (what JSON and JSONL exports write for it)."""
    return line(render(cells), "json", moment)


# --- writing ----------------------------------------------------------------------------


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


def _write_lines(stream: TextIO, fmt: str, batches: Iterable[list[bytes]]) -> int:
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
                write(",".join(CSV_COLUMNS).encode() + end)
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


def _in_batches(lines: Iterable[bytes]) -> Iterator[list[bytes]]:
    """``lines`` in lists of :data:`BATCH_ROWS` (the last one short, perhaps empty)."""
    batch: list[bytes] = []
    for item in lines:
        batch.append(item)
        if len(batch) >= BATCH_ROWS:
            yield batch
            batch = []
    yield batch


def _write_rows(stream: TextIO, fmt: str, rows: Iterable[Rendered], moment: str) -> int:
    """Write rendered rows in ``fmt`` as they are at ``moment``; return how many."""
    return _write_lines(stream, fmt, _in_batches(line(r, fmt, moment).encode() for r in rows))


@dataclass(frozen=True)
class _Snapshot:
    rows: int
    head_seq: int
    head_hash: str


def _read_head(conn: Connection) -> tuple[int, str]:
    h = AuditHead.__table__  # type: ignore[attr-defined]
    row = conn.execute(select(h.c.seq, h.c.hash).where(h.c.id == 1)).first()
    return (0, audit.GENESIS_HASH) if row is None else (int(row[0]), str(row[1]))


def _snapshot_connection(engine: Engine) -> Any:
    """A read-only connection whose statements all see one snapshot of the registry."""
    if engine.dialect.name == "postgresql":
        return engine.connect().execution_options(isolation_level="REPEATABLE READ")
    return engine.connect().execution_options(fleet_readonly=True)


def _cached_batches(conn: Connection, query: Any) -> Iterator[list[bytes]]:
    if conn.dialect.name == "postgresql":
        yield from _copied_batches(conn, query)
        return
    first = operator.itemgetter(0)  # the one column, already bytes (a C loop, no Python frame)
    for rows in row_batches(conn, query):
        yield list(map(first, rows))


def _copied_batches(conn: Connection, query: Any) -> Iterator[list[bytes]]:
    """PostgreSQL: the query's one bytea column through ``COPY (query) TO STDOUT`` in binary,
    in the connection's transaction (so its snapshot). A server-side cursor fetched 100k
    JSONL rows in 0.80-0.90 s, psycopg's COPY row parser in 0.49-0.55 s (parameters are
    bound client-side by psycopg: COPY takes none)."""
    compiled = query.compile(dialect=conn.dialect)
    driver = conn.connection.driver_connection
    assert driver is not None  # an open connection
    statement = f"COPY ({compiled}) TO STDOUT (FORMAT binary)"
    with driver.cursor() as cursor, cursor.copy(statement, compiled.params) as copy:
        copy.set_types(["bytea"])
        yield from _in_batches(map(operator.itemgetter(0), copy.rows()))


def _refresh_cache(engine: Engine) -> None:
    """Render the export rows of devices written around ``write_session`` (if any), so the
    export can read the cache. A registry this process may not write (a read-only copy)
    keeps its stale rows; the export then reads the live tables."""
    with _snapshot_connection(engine) as conn, conn.begin():
        if cache_is_current(conn):
            return
    try:
        with write_session(engine):
            pass  # write_session re-renders the dirty rows before it commits
    except DBAPIError:
        pass


def write_devices(
    ws: Workspace,
    stream: TextIO,
    *,
    fmt: str = "csv",
    filters: ExportFilters | None = None,
    as_of: datetime | None = None,
    now: datetime | None = None,
    use_cache: bool = True,
    replay_workers: int | None = None,
) -> _Snapshot:
    """Stream the device export to ``stream``; return the row count and the audit head the
    rows correspond to (read in the same snapshot).

    Live rows come from the export cache when it is current (else from the live tables,
    as with ``use_cache=False``); ``as_of`` replays the audit trail, in ``replay_workers``
    processes (default: one per CPU) once there are more than :data:`REPLAY_PART_DEVICES`
    devices. Every path writes the same bytes for the same registry.
    """
    if fmt not in FORMATS:
        raise InvalidInput(f"format must be one of {', '.join(FORMATS)}")
    filters = filters or ExportFilters()
    engine = ws.open_registry()
    moment = iso_moment(as_of if as_of is not None else now or datetime.now(UTC))
    if as_of is None and use_cache:
        _refresh_cache(engine)
    with _snapshot_connection(engine) as conn, conn.begin():
        head_seq, head_hash = _read_head(conn)
        if as_of is not None:
            workers = replay_workers or os.cpu_count() or 1
            bounds = _part_bounds(conn) if workers > 1 else []
            if bounds:
                args = (fmt, filters, as_of, head_seq)
                count = _write_lines(stream, fmt, _replayed_parts(ws, args, bounds, workers))
            else:
                rendered = _replayed_rows(conn, fmt, filters, as_of)
                count = _write_rows(stream, fmt, rendered, moment)
        elif use_cache and cache_is_current(conn):
            count = _write_lines(
                stream,
                fmt,
                _cached_batches(conn, cached_query(fmt, filters, moment)),
            )
        else:
            rows: Iterable[Rendered] = live_rows(conn, filters)
            wanted = filters.cert_status
            if wanted is not None:
                rows = (
                    r
                    for r in rows
                    if (effective_status(r.cert_status, r.cert_not_after, moment) or "none")
                    == wanted
                )
            count = _write_rows(stream, fmt, rows, moment)
    return _Snapshot(count, head_seq, head_hash)


# --as-of replays the trail in parts of this many devices (ID ranges), in worker processes.
REPLAY_PART_DEVICES = 20_000


def _replayed_rows(
    conn: Connection,
    fmt: str,
    filters: ExportFilters,
    as_of: datetime,
    *,
    targets: tuple[str | None, str | None] | None = None,
    max_seq: int | None = None,
) -> Iterator[Rendered]:
    moment = iso_moment(as_of)
    cells: Iterable[list[Any]] = replayed_cells(conn, as_of, targets=targets, max_seq=max_seq)
    matches = cells_matcher(filters, moment)
    if matches is not None:
        cells = filter(matches, cells)
    return (render(c, fmt) for c in cells)


def _part_bounds(conn: Connection) -> list[str]:
    """Device IDs splitting the registry into parts of :data:`REPLAY_PART_DEVICES`."""
    d = Device.__table__  # type: ignore[attr-defined]
    bounds: list[str] = []
    seen = 0
    for rows in row_batches(conn, select(d.c.id).order_by(d.c.id)):
        for (device_id,) in rows:
            if seen and seen % REPLAY_PART_DEVICES == 0:
                bounds.append(device_id)
            seen += 1
    return bounds


_worker_registries: dict[tuple[str, str | None], Engine] = {}


def _replay_part(
    home: str,
    db_url: str | None,
    args: tuple[str, ExportFilters, datetime, int],
    targets: tuple[str | None, str | None],
) -> list[bytes]:
    """In a worker process: one ID range's lines, replayed in the worker's own snapshot (the
    same events as the parent's: the trail is append-only and read up to its head)."""
    fmt, filters, as_of, head_seq = args
    engine = _worker_registries.get((home, db_url))
    if engine is None:
        engine = Workspace(home=Path(home), db_url=db_url).open_registry()
        _worker_registries[(home, db_url)] = engine
    with _snapshot_connection(engine) as conn, conn.begin():
        rows = _replayed_rows(conn, fmt, filters, as_of, targets=targets, max_seq=head_seq)
        moment = iso_moment(as_of)
        return [line(row, fmt, moment).encode() for row in rows]


def _replayed_parts(
    ws: Workspace,
    args: tuple[str, ExportFilters, datetime, int],
    bounds: list[str],
    workers: int,
) -> Iterator[list[bytes]]:
    """Each ID range's lines, in ID order, replayed by ``workers`` processes. At most
    ``workers + 1`` parts are in flight, so memory stays flat.

    The workers are forked here, before the caller starts its writer thread (spawning would
    re-import a caller's unguarded main module); they open their own connections and never
    touch the parent's.
    """
    ranges = iter(zip([None, *bounds], [*bounds, None], strict=True))
    pool = ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("fork"))

    def submit(part: tuple[str | None, str | None]) -> Future[list[bytes]]:
        return pool.submit(_replay_part, str(ws.home), ws.db_url, args, part)

    try:
        pending = deque(submit(part) for part in itertools.islice(ranges, workers + 1))
    except BaseException:
        pool.shutdown(cancel_futures=True)
        raise

    def results() -> Iterator[list[bytes]]:
        try:
            while pending:
                lines = pending.popleft().result()
                pending.extend(submit(part) for part in itertools.islice(ranges, 1))
                yield lines
        finally:
            pool.shutdown(cancel_futures=True)

    return results()


def write_audit(
    ws: Workspace,
    stream: TextIO,
    *,
    since: datetime | None = None,
    until: datetime | None = None,
) -> _Snapshot:
    """Stream audit events in ``[since, until)`` as JSONL, one canonical-JSON event (its
    hashed fields plus ``hash``) per line."""
    engine = ws.open_registry()
    count = 0
    with read_session(engine) as session:
        conn = session.connection()
        head_seq, head_hash = _read_head(conn)
        for event in audit.iter_events(session, since=since, until=until):
            if event.seq > head_seq:  # appended after our head read (PostgreSQL)
                break
            stream.write(audit.canonical_json(audit.event_to_dict(event)) + "\n")
            count += 1
    return _Snapshot(count, head_seq, head_hash)


# --- files, manifests, signatures -------------------------------------------------------


def manifest_path(path: Path) -> Path:
    """``FILE.manifest.json``"""
    return path.with_name(path.name + ".manifest.json")


def signature_path(path: Path) -> Path:
    """``FILE.p7s``: the detached signature over ``FILE``."""
    return path.with_name(path.name + ".p7s")


def _temp_beside(path: Path) -> Path:
    if path.is_dir():
        raise InvalidInput(f"cannot write {path}: it is a directory")
    folder = path.parent if str(path.parent) else Path(".")
    try:
        fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=folder)
    except OSError as exc:
        raise InvalidInput(f"cannot write {path}: {exc.strerror}") from exc
    os.close(fd)
    return Path(name)


class _HashingFile(io.RawIOBase):
    """A file that hashes what it writes, as it writes it: the manifest's SHA-256 without
    reading the export back (the hashing runs in the writer thread, beside the reading)."""

    def __init__(self, raw: io.FileIO) -> None:
        self._raw = raw
        self.sha256 = hashlib.sha256()
        self.size = 0

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        written = self._raw.write(data) or 0
        self.sha256.update(memoryview(data)[:written])  # only what reached the file
        self.size += written
        return written


def _export_to_file(
    out: Path,
    produce: Callable[[TextIO], _Snapshot],
    describe: Callable[[_Snapshot], dict[str, Any]],
    signer: Signer | None,
    now: datetime,
) -> dict[str, Any]:
    """Write ``out`` (and, when signing, its manifest and signatures) all or nothing."""
    temps: list[Path] = [_temp_beside(out)]
    try:
        with temps[0].open("wb", buffering=0) as raw:
            hashed = _HashingFile(raw)
            buffered = io.BufferedWriter(hashed, buffer_size=1 << 20)
            with io.TextIOWrapper(buffered, encoding="utf-8", newline="") as handle:
                snapshot = produce(handle)
        os.chmod(temps[0], 0o644)
        digest, size = hashed.sha256.hexdigest(), hashed.size
        result: dict[str, Any] = {
            "file": str(out),
            "rows": snapshot.rows,
            "sha256": digest,
            "bytes": size,
        }
        renames = [(temps[0], out)]
        if signer is not None:
            manifest = {
                "fleet_export_manifest": MANIFEST_VERSION,
                "file": out.name,
                **describe(snapshot),
                "rows": snapshot.rows,
                "sha256": digest,
                "bytes": size,
                "audit_head": {"seq": snapshot.head_seq, "hash": snapshot.head_hash},
                "fleet_version": __version__,
                "created_at": audit.format_ts(now),
                "signer": signer.summary(),
            }
            manifest_bytes = (json.dumps(manifest, indent=2, ensure_ascii=False) + "\n").encode()
            extra = [
                (manifest_path(out), manifest_bytes),
                (signature_path(out), sign_detached(signer, temps[0])),
                (signature_path(manifest_path(out)), sign_detached(signer, manifest_bytes)),
            ]
            for final, data in extra:
                temp = _temp_beside(final)
                temps.append(temp)
                temp.write_bytes(data)
                os.chmod(temp, 0o644)
                renames.insert(0, (temp, final))  # the export itself is renamed last
            result.update(
                manifest=str(manifest_path(out)),
                signature=str(signature_path(out)),
                manifest_signature=str(signature_path(manifest_path(out))),
            )
        for temp, final in renames:
            os.replace(temp, final)
        return result
    except OSError as exc:
        raise InvalidInput(f"cannot write {out}: {exc.strerror or exc}") from exc
    finally:
        for temp in temps:
            temp.unlink(missing_ok=True)


def _resolve_sign(sign: bool | None, out: Path | None) -> bool:
    if sign and out is None:
        raise InvalidInput("--sign needs --out FILE (signatures are written beside the file)")
    return out is not None if sign is None else sign


def export_devices(
    ws: Workspace,
    *,
    fmt: str = "csv",
    out: Path | None = None,
    stream: TextIO | None = None,
    filters: ExportFilters | None = None,
    as_of: datetime | None = None,
    sign: bool | None = None,
    passphrase: Passphrase | None = None,
    now: datetime | None = None,
    replay_workers: int | None = None,
) -> dict[str, Any]:
    """Export every device (matching ``filters``) with its newest certificate.

    To ``out`` (all or nothing; signed with a manifest unless ``sign`` is False) or, without
    ``out``, to ``stream`` (default stdout, never signed). ``as_of`` rebuilds the registry as
    it was at that moment from the audit trail (in ``replay_workers`` processes, default one
    per CPU, for large registries). Returns a summary (rows, file, sha256...).
    Example::

        export_devices(ws, fmt="jsonl", out=Path("devices.jsonl"), as_of=datetime(2026, 6, 30))
    """
    if fmt not in FORMATS:
        raise InvalidInput(f"format must be one of {', '.join(FORMATS)}")
    filters = filters or ExportFilters()
    signing = _resolve_sign(sign, out)
    moment = now or datetime.now(UTC)
    ws.open_registry()

    def produce(handle: TextIO) -> _Snapshot:
        return write_devices(
            ws,
            handle,
            fmt=fmt,
            filters=filters,
            as_of=as_of,
            now=moment,
            replay_workers=replay_workers,
        )

    if out is None:
        return {"file": None, "rows": produce(stream or sys.stdout).rows}
    _temp_beside(out).unlink()  # fail on an unwritable path before asking for the passphrase
    signer = load_signer(ws, passphrase) if signing else None

    def describe(_snapshot: _Snapshot) -> dict[str, Any]:
        return {
            "kind": "devices",
            "format": fmt,
            "columns": list(CSV_COLUMNS) if fmt == "csv" else None,
            "filters": filters.to_dict(),
            "as_of": audit.format_ts(as_of) if as_of is not None else None,
        }

    return _export_to_file(
        out,
        produce,
        describe,
        signer,
        moment,
    )


def export_audit(
    ws: Workspace,
    *,
    out: Path | None = None,
    stream: TextIO | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    sign: bool | None = None,
    passphrase: Passphrase | None = None,
    now: datetime | None = None,
) -> dict[str, Any]:
    """Export the audit events in ``[since, until)`` as JSONL with their hashes, signed like
    :func:`export_devices`. Each line is the event's canonical JSON (see
    :mod:`fleet.registry.audit`)
    plus ``hash``, so an auditor can recompute the chain.
    Example::

        export_audit(ws, out=Path("audit.jsonl"), since=datetime(2026, 1, 1, tzinfo=UTC))
    """
    if since is not None and until is not None and until <= since:
        raise InvalidInput("--until must be later than --since")
    signing = _resolve_sign(sign, out)
    moment = now or datetime.now(UTC)
    ws.open_registry()
    if out is None:
        snapshot = write_audit(ws, stream or sys.stdout, since=since, until=until)
        return {"file": None, "rows": snapshot.rows}
    _temp_beside(out).unlink()
    signer = load_signer(ws, passphrase) if signing else None

    def describe(_snapshot: _Snapshot) -> dict[str, Any]:
        return {
            "kind": "audit",
            "format": "jsonl",
            "filters": {
                k: audit.format_ts(v) for k, v in (("since", since), ("until", until)) if v
            },
        }

    return _export_to_file(
        out,
        lambda handle: write_audit(ws, handle, since=since, until=until),
        describe,
        signer,
        moment,
    )


# --- verification -----------------------------------------------------------------------


@dataclass(frozen=True)
class Check:
    """One verification step: ``name`` is signature, chain, manifest signature, hash,
    row count or audit chain."""

    name: str
    ok: bool
    detail: str


@dataclass
class VerifyReport:
    """Outcome of :func:`verify_export`."""

    file: str
    checks: list[Check] = field(default_factory=list)
    manifest: dict[str, Any] | None = None

    @property
    def ok(self) -> bool:
        return bool(self.checks) and all(c.ok for c in self.checks)

    def failed(self) -> list[Check]:
        """The checks that failed."""
        return [c for c in self.checks if not c.ok]

    def to_dict(self) -> dict[str, Any]:
        """JSON view."""
        return {
            "file": self.file,
            "ok": self.ok,
            "checks": [{"name": c.name, "ok": c.ok, "detail": c.detail} for c in self.checks],
            "manifest": self.manifest,
        }


def verify_export(
    path: Path, *, root: Path | None = None, ws: Workspace | None = None
) -> VerifyReport:
    """Check an export against its manifest and detached signatures.

    The chain is checked up to ``root`` (an auditor's copy of the root certificate), else to
    the workspace's root. Every check runs; the report names each that failed.
    """
    if not path.is_file():
        raise InvalidInput(f"cannot read {path}: no such file")
    if root is not None:
        trusted = load_root(root)
    else:
        if ws is None:
            raise InvalidInput("give --ca ROOT.pem (or a workspace) to check the chain against")
        trusted = ca.load_ca_certificates(ws.home)[1]
    report = VerifyReport(str(path))

    def check_signature(sig: Path, content: bytes | Path, label: str) -> bool:
        try:
            pem = sig.read_bytes()
        except OSError:
            report.checks.append(Check(label, False, f"{sig.name} is missing"))
            return False
        try:
            info = verify_detached(pem, content, trusted)
        except SignatureError as exc:
            name = label if exc.check == "signature" else "chain"
            report.checks.append(Check(name, False, f"{sig.name}: {exc}"))
            return False
        report.checks.append(
            Check(label, True, f"{sig.name} signed by {info.signer.subject.rfc4514_string()}")
        )
        return True

    manifest_file = manifest_path(path)
    try:
        manifest_bytes = manifest_file.read_bytes()
        manifest = json.loads(manifest_bytes)
        if not isinstance(manifest, dict):
            raise ValueError("not an object")
    except (OSError, ValueError) as exc:
        report.checks.append(Check("manifest", False, f"{manifest_file.name} unreadable: {exc}"))
        manifest_bytes, manifest = b"", None
    report.manifest = manifest
    sig_ok = check_signature(signature_path(path), path, "signature")
    man_ok = manifest is not None and check_signature(
        signature_path(manifest_file), manifest_bytes, "manifest signature"
    )
    if sig_ok and man_ok:
        report.checks.append(Check("chain", True, f"chains to {trusted.subject.rfc4514_string()}"))
    if manifest is None:
        return report
    digest, size = sha256_file(path)
    if digest == manifest.get("sha256") and size == manifest.get("bytes"):
        report.checks.append(Check("hash", True, f"sha256 {digest}"))
    else:
        report.checks.append(
            Check(
                "hash",
                False,
                f"sha256 of {path.name} is {digest} ({size} bytes); the manifest says "
                f"{manifest.get('sha256')} ({manifest.get('bytes')} bytes)",
            )
        )
    counted, problem = _count_rows(path, str(manifest.get("format")))
    expected = manifest.get("rows")
    if problem is None and counted == expected:
        report.checks.append(Check("row count", True, f"{counted} rows"))
    else:
        report.checks.append(
            Check(
                "row count",
                False,
                problem or f"{path.name} holds {counted} rows; the manifest says {expected}",
            )
        )
    if manifest.get("kind") == "audit":
        report.checks.append(_check_audit_chain(path))
    return report


def _count_rows(path: Path, fmt: str) -> tuple[int, str | None]:
    """Rows in an export file, or a description of why it cannot be read as ``fmt``."""
    count = 0
    try:
        with path.open(encoding="utf-8", newline="") as handle:
            if fmt == "csv":
                reader = csv.reader(handle)
                header = next(reader, None)
                if header is None:
                    return 0, f"{path.name} has no CSV header"
                count = sum(1 for _ in reader)
                return count, None
            if fmt == "jsonl":
                for number, line in enumerate(handle, 1):
                    if not isinstance(json.loads(line), dict):
                        return count, f"line {number} of {path.name} is not a JSON object"
                    count += 1
                return count, None
            if fmt == "json":
                lines = handle.read().split("\n")
                if lines[0] not in ("[", "[]"):
                    return 0, f"{path.name} is not a fleet JSON export"
                for line in lines[1:]:
                    if line in ("]", ""):
                        continue
                    json.loads(line.removesuffix(","))
                    count += 1
                return count, None
    except (ValueError, UnicodeDecodeError, csv.Error) as exc:
        return count, f"{path.name} is not valid {fmt}: {exc}"
    return 0, f"unknown format {fmt!r} in the manifest"


def _check_audit_chain(path: Path) -> Check:
    """Recompute each exported event's hash and its link to the previous one."""
    previous: str | None = None
    events = 0
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            try:
                event = json.loads(line)
                recomputed = audit.event_hash(event)
            except (ValueError, KeyError, TypeError):
                return Check("audit chain", False, f"line {number} is not an audit event")
            if recomputed != event.get("hash"):
                return Check(
                    "audit chain", False, f"event {event.get('seq')} does not match its hash"
                )
            if previous is not None and event["prev_hash"] != previous:
                return Check(
                    "audit chain",
                    False,
                    f"event {event.get('seq')} does not link to the event before it",
                )
            if event["seq"] == 1 and event["prev_hash"] != audit.GENESIS_HASH:
                return Check("audit chain", False, "event 1 does not start the chain")
            previous = event["hash"]
            events += 1
    return Check("audit chain", True, f"{events} events re-hashed and linked")


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
    "live_query",
    "parse_filters",
    "row_to_json",
    "row_to_object",
    "verify_export",
    "write_audit",
    "write_devices",
]
