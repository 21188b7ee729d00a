"""Bulk provisioning: turn a CSV or JSON Lines manifest into devices, identities and bundles.

Pipeline (one ``fleet provision`` process):

* the main process streams the file in groups of :data:`BATCH_SIZE` rows, validates them
  (fields, duplicates inside the file, the registry, the bundle folder, CSR files), hands each
  group to a process pool and, in the order the groups were sent, commits what comes back;
* each pool worker (``workers``, default: the number of cores) holds the issuing CA key in
  memory (handed over at start, never written to disk), generates keys or checks CSRs, signs
  certificates and writes each bundle into a hidden staging folder ``OUT/.ID.tmp-PID-XXXXXX``
  (so private keys never travel between processes);
* :meth:`_Provisioner._commit_batch` makes a batch durable in ONE registry transaction: rename
  the staged bundles into place, bulk-insert the device and certificate rows, append one
  ``device.add`` audit event per device (one chain-head lock per batch), commit; runs that
  share an output folder take turns at this step (``flock`` on ``OUT/.fleet-provision.lock``).

Crash safety (``kill -9`` at any moment; re-running the same command finishes the job):

* before the rename: only staging folders exist; a re-run deletes staging folders whose
  process is gone;
* between rename and commit: ``OUT/ID`` holds a complete bundle whose device is not in the
  registry; a re-run recognises it (its certificate names ID and was signed by this CA, and
  no registry row knows it) and replaces it;
* after the commit: the device is registered, so a re-run skips it;
* ``manifest.csv`` is rebuilt at the end from the registry for every row of the file that is
  provisioned (now or by an earlier run) and renamed into place, so it never lacks a row.

Files are not fsynced: a killed process loses nothing the kernel already has, but a power
cut may lose bundles the registry (with its own durability settings) already records.
"""

from __future__ import annotations

import codecs
import contextlib
import csv
import ctypes
import errno
import fcntl
import hashlib
import json
import multiprocessing
import os
import re
import secrets
import shutil
import signal
import sqlite3
import sys
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import NameOID
from sqlalchemy import JSON, Table, insert, select
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import Engine
from sqlmodel import Session, SQLModel

from fleet.cloud import jobs
from fleet.errors import FleetError, InvalidInput, RegistryError
from fleet.identifiers import validate_device_id, validate_label, validate_text_field
from fleet.pki import ca
from fleet.pki.bundles import CERT_FILE, CHAIN_FILE, KEY_FILE
from fleet.pki.profiles import Profile, load_profile
from fleet.registry import audit
from fleet.registry.db import read_session, write_session
from fleet.registry.models import UTCDateTime
from fleet.views import iso
from fleet.workspace import Passphrase, Workspace, require_passphrase

COLUMNS = ("id", "model", "serial", "labels", "profile", "csr")
FORMATS = ("csv", "jsonl")
MANIFEST_NAME = "manifest.csv"
LOCK_NAME = ".fleet-provision.lock"
MANIFEST_COLUMNS = ("id", "serial", "fingerprint_sha256", "not_after")
REPORT_COLUMNS = ("line", "id", "error")
# Rows per worker task and per registry transaction: large enough to amortise IPC and
# commits, small enough to keep transactions (and the SQLite write lock) short.
BATCH_SIZE = 500
ERRORS_KEPT = 20
# Test-only: "POINT:N" makes the process SIGKILL itself the Nth time it reaches POINT (one of
# FAULT_POINTS), so the crash tests can stop a real process in each window deterministically.
FAULT_ENV = "FLEET_FAULT_INJECT"
FAULT_POINTS = ("after-stage", "after-rename", "before-commit", "after-commit", "manifest")
_STAGING_RE = re.compile(r"^\.(?P<name>.+)\.tmp-(?P<pid>\d+)-[0-9a-f]+(?:-old)?$")

Progress = Callable[[int, int], None]
"""Called as ``progress(rows_done, rows_total)``; the total is counted before work starts."""


@dataclass(frozen=True)
class RowError:
    """A row that was not provisioned, and why."""

    line: int
    device_id: str
    error: str


@dataclass
class ProvisionSummary:
    """What a provisioning run did. ``errors`` holds the first few failed rows."""

    provisioned: int = 0
    skipped: int = 0
    failed: int = 0
    would_provision: int = 0
    rows: int = 0
    elapsed_seconds: float = 0.0
    dry_run: bool = False
    workers: int = 0
    out_dir: str = ""
    manifest: str | None = None
    report: str | None = None
    errors: list[RowError] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """The stable JSON summary ``fleet provision --json`` prints."""
        rate = self.provisioned / self.elapsed_seconds if self.elapsed_seconds else 0.0
        return {
            "provisioned": self.provisioned,
            "skipped": self.skipped,
            "failed": self.failed,
            "would_provision": self.would_provision,
            "rows": self.rows,
            "elapsed_seconds": round(self.elapsed_seconds, 3),
            "devices_per_second": round(rate, 1),
            "dry_run": self.dry_run,
            "workers": self.workers,
            "out_dir": self.out_dir,
            "manifest": self.manifest,
            "report": self.report,
            "errors": [{"line": e.line, "id": e.device_id, "error": e.error} for e in self.errors],
        }


@dataclass(frozen=True, slots=True)
class _Row:
    line: int
    device_id: str
    model: str | None
    serial: str | None
    labels: dict[str, str]
    profile: str
    csr: str | None

    def digest(self) -> str:
        """A short fingerprint of everything but the line, to tell identical duplicates."""
        text = repr((self.model, self.serial, sorted(self.labels.items()), self.profile, self.csr))
        return hashlib.blake2b(text.encode("utf-8"), digest_size=8).hexdigest()


# --- reading the file ---------------------------------------------------------------------


@dataclass(frozen=True)
class _Source:
    path: Path
    fmt: str
    total: int  # data rows (an upper bound for CSV with quoted line breaks)


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


def _open_source(path: Path, fmt: str | None) -> _Source:
    """Check the whole file before anything is written: readable, UTF-8, known columns."""
    chosen = detect_format(path, fmt)
    if not path.is_file():
        raise InvalidInput(f"cannot read {path}: no such file")
    allowed = ", ".join(COLUMNS)
    lines = 0
    decoder = codecs.getincrementaldecoder("utf-8")()
    unknown: set[str] = set()
    try:
        with path.open("rb") as handle:
            if chosen == "csv":
                for block in iter(lambda: handle.read(1 << 20), b""):
                    decoder.decode(block)
                    lines += block.count(b"\n")
                decoder.decode(b"", final=True)
            else:
                for raw in handle:
                    lines += 1
                    text = decoder.decode(raw)
                    if not text.strip():
                        continue
                    try:
                        value = json.loads(text)
                    except ValueError:
                        continue  # reported for its row
                    if isinstance(value, dict):
                        unknown.update(k for k in value if k not in COLUMNS)
                decoder.decode(b"", final=True)
    except UnicodeDecodeError as exc:
        raise InvalidInput(f"{path} is not UTF-8 text (byte offset {exc.start})") from exc
    except OSError as exc:
        raise InvalidInput(f"cannot read {path}: {exc.strerror}") from exc
    if chosen == "csv":
        header = _csv_header(path)
        unknown = {c for c in header if c not in COLUMNS}
        if len(set(header)) != len(header):
            raise InvalidInput(f"{path}: a column appears twice in the header")
        if not unknown and "id" not in header:
            raise InvalidInput(f"{path}: the header has no 'id' column (allowed: {allowed})")
        lines = max(lines - 1, 0)
    if unknown:
        shown = ", ".join(sorted(repr(c) for c in unknown))
        raise InvalidInput(f"{path}: unknown column(s) {shown}; allowed: {allowed}")
    return _Source(path, chosen, lines)


def _csv_header(path: Path) -> list[str]:
    with path.open(encoding="utf-8-sig", newline="") as handle:
        header = next(csv.reader(handle), None)
    if not header:
        raise InvalidInput(f"{path} is empty: expected a header row ({', '.join(COLUMNS)})")
    return [c.strip() for c in header]


def _iter_records(source: _Source) -> Iterator[tuple[int, _Row | RowError]]:
    if source.fmt == "csv":
        yield from _iter_csv(source.path)
    else:
        yield from _iter_jsonl(source.path)


def _iter_csv(path: Path) -> Iterator[tuple[int, _Row | RowError]]:
    with path.open(encoding="utf-8-sig", newline="") as handle:
        reader = csv.reader(handle)
        header = [c.strip() for c in next(reader)]
        last = reader.line_num
        for values in reader:
            line, last = last + 1, reader.line_num
            if not values or values == [""]:
                continue
            if len(values) != len(header):
                device_id = values[header.index("id")] if len(values) > header.index("id") else ""
                yield (
                    line,
                    RowError(
                        line,
                        device_id,
                        f"expected {len(header)} fields, found {len(values)}",
                    ),
                )
                continue
            fields: dict[str, Any] = {
                k: (v if v != "" else None) for k, v in zip(header, values, strict=True)
            }
            labels_text = fields.get("labels")
            try:
                fields["labels"] = _parse_label_list(labels_text) if labels_text else None
            except FleetError as exc:
                yield line, RowError(line, str(fields.get("id") or ""), str(exc))
                continue
            yield line, _make_row(line, fields)


def _parse_label_list(text: str) -> dict[str, str]:
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


def _iter_jsonl(path: Path) -> Iterator[tuple[int, _Row | RowError]]:
    with path.open(encoding="utf-8-sig") as handle:
        for line, text in enumerate(handle, start=1):
            if not text.strip():
                continue
            try:
                value = json.loads(text)
            except ValueError as exc:
                yield line, RowError(line, "", f"not valid JSON ({exc})")
                continue
            if not isinstance(value, dict):
                yield line, RowError(line, "", "each line must be a JSON object")
                continue
            yield line, _make_row(line, value)


def _make_row(line: int, fields: dict[str, Any]) -> _Row | RowError:
    raw_id = fields.get("id")
    shown_id = raw_id if isinstance(raw_id, str) else ("" if raw_id is None else str(raw_id))
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
        labels = fields.get("labels") or {}
        if not isinstance(labels, dict):
            raise InvalidInput("labels must be an object of strings")
        for key, value in labels.items():
            validate_label(key, value)
    except FleetError as exc:
        return RowError(line, shown_id, str(exc))
    return _Row(
        line,
        device_id,
        texts["model"],
        texts["serial"],
        dict(labels),
        texts["profile"] or "",
        texts["csr"],
    )


# --- duplicate detection without holding the file in memory ------------------------------


class _SeenIds:
    """Every ID of the file so far, in a private temporary SQLite database.

    An on-disk scratch database (deleted when closed, or by the OS after a crash) keeps
    memory flat however long the file is.
    """

    def __init__(self) -> None:
        self.db = sqlite3.connect("", isolation_level=None)
        self.db.execute("PRAGMA journal_mode=OFF")
        self.db.execute("PRAGMA synchronous=OFF")
        self.db.execute(
            "CREATE TABLE seen (id TEXT PRIMARY KEY, line INTEGER NOT NULL, "
            "digest TEXT NOT NULL, ok INTEGER NOT NULL DEFAULT 0, "
            "serial TEXT, fingerprint TEXT, not_after TEXT) WITHOUT ROWID"
        )

    def claim(self, rows: list[_Row]) -> list[tuple[_Row, tuple[int, str] | None]]:
        """Pair each row with the earlier occurrence of its ID (``(line, digest)``), if any."""
        ids = list({r.device_id for r in rows})
        marks = ",".join("?" * len(ids))
        earlier: dict[str, tuple[int, str]] = {
            i: (line, digest)
            for i, line, digest in self.db.execute(
                f"SELECT id, line, digest FROM seen WHERE id IN ({marks})", ids
            )
        }
        fresh: dict[str, tuple[int, str]] = {}
        paired: list[tuple[_Row, tuple[int, str] | None]] = []
        for row in rows:
            before = earlier.get(row.device_id) or fresh.get(row.device_id)
            if before is None:
                fresh[row.device_id] = (row.line, row.digest())
            paired.append((row, before))
        self.db.executemany(
            "INSERT INTO seen (id, line, digest) VALUES (?, ?, ?)",
            [(i, line, digest) for i, (line, digest) in fresh.items()],
        )
        return paired

    def mark_ok(self, ids: list[str]) -> None:
        """These IDs were provisioned earlier: they belong in the manifest."""
        self.db.executemany("UPDATE seen SET ok = 1 WHERE id = ?", [(i,) for i in ids])

    def mark_issued(self, issued: list[tuple[str, str, str, str]]) -> None:
        """``(serial, fingerprint, not_after, id)`` of certificates this run committed."""
        self.db.executemany(
            "UPDATE seen SET ok = 1, serial = ?, fingerprint = ?, not_after = ? WHERE id = ?",
            issued,
        )

    def ok_rows(self, page: int = 1000) -> Iterator[list[tuple[str, str | None, str, str]]]:
        """``(id, serial or None, fingerprint, not_after)`` of provisioned IDs in file order,
        a page at a time; ``None`` when an earlier run issued the certificate."""
        cursor = self.db.execute(
            "SELECT id, serial, fingerprint, not_after FROM seen WHERE ok = 1 ORDER BY line"
        )
        while rows := cursor.fetchmany(page):
            yield rows

    def close(self) -> None:
        self.db.close()


# --- fault injection (tests only) --------------------------------------------------------


class _Faults:
    def __init__(self) -> None:
        spec = os.environ.get(FAULT_ENV, "")
        point, _, count = spec.partition(":")
        self.point = point if point in FAULT_POINTS else None
        self.remaining = int(count) if count.isdigit() else 1

    def hit(self, point: str) -> None:
        """SIGKILL this process if ``point`` is the armed one and its count is reached."""
        if point != self.point:
            return
        self.remaining -= 1
        if self.remaining <= 0:
            sys.stderr.flush()
            os.kill(os.getpid(), signal.SIGKILL)


# --- the worker side ----------------------------------------------------------------------

_worker_issuer: ca.Issuer | None = None
_umask = 0o022


def _init_worker(key_der: bytes, cert_der: bytes, root_der: bytes, parent: int) -> None:
    """Pool initialiser: hold the issuing CA in memory; die with the parent process."""
    global _worker_issuer, _umask
    _umask = os.umask(0o022)
    os.umask(_umask)
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG: never outlive a killed parent
        if os.getppid() != parent:
            os._exit(1)
    key = serialization.load_der_private_key(key_der, password=None)
    if not isinstance(key, ca.PrivateKey):  # pragma: no cover - the CA key was just loaded
        raise TypeError("unsupported CA key")
    _worker_issuer = ca.Issuer(
        key, x509.load_der_x509_certificate(cert_der), x509.load_der_x509_certificate(root_der)
    )


# One row of a task: (device id, profile name, CSR bytes or None, CSR path for messages).
_TaskRow = tuple[str, str, bytes | None, str | None]
# A signed row: (staging folder name, cert PEM, serial, fingerprint, subject, not_before,
# not_after, key type, key origin). A failed row is its error message instead.
_Signed = tuple[str, str, str, str, str, datetime, datetime, str, str]


def _sign_chunk(
    rows: list[_TaskRow],
    profiles: dict[str, Profile],
    now: datetime,
    out_dir: str,
    token: str,
) -> list[_Signed | str]:
    """Worker task: make identities for ``rows`` and stage their bundles in ``out_dir``."""
    issuer = _worker_issuer
    assert issuer is not None, "worker not initialised"
    results: list[_Signed | str] = []
    for device_id, profile_name, csr_data, csr_path in rows:
        profile = profiles[profile_name]
        try:
            key_pem: bytes | None
            if csr_data is not None:
                request = ca.load_csr(csr_data, device_id, source=f"CSR {csr_path}")
                public_key = request.public_key()
                key_type, origin, key_pem = ca.key_type_of(public_key), "csr", None
            else:
                private_key = ca.generate_key(profile.key_type)
                public_key = private_key.public_key()
                key_type, origin = profile.key_type, "generated"
                key_pem = ca.private_key_pem(private_key)
            cert = ca.issue_device_certificate(issuer, device_id, public_key, profile, now=now)
            cert_pem = ca.cert_pem(cert)
            staging = f".{device_id}.tmp-{token}"
            _write_bundle(os.path.join(out_dir, staging), key_pem, cert_pem, issuer.chain_pem)
        except FleetError as exc:
            results.append(str(exc))
            continue
        except OSError as exc:
            results.append(f"cannot write the bundle in {out_dir}: {exc.strerror}")
            continue
        results.append(
            (
                staging,
                cert_pem.decode("ascii"),
                ca.serial_hex(cert.serial_number),
                ca.fingerprint_sha256(cert),
                cert.subject.rfc4514_string(),
                cert.not_valid_before_utc,
                cert.not_valid_after_utc,
                key_type,
                origin,
            )
        )
    return results


def _write_bundle(folder: str, key_pem: bytes | None, cert_pem: bytes, chain_pem: bytes) -> None:
    """Write a bundle into a new folder (a staging name, renamed into place later).

    Plain ``os`` calls: at thousands of bundles a second, file objects' overhead shows.
    """
    os.mkdir(folder, 0o755)
    if _umask & 0o755:
        os.chmod(folder, 0o755)  # same mode as `fleet device add`, whatever the umask
    for name, data, mode in (
        (KEY_FILE, key_pem, 0o600),
        (CERT_FILE, cert_pem, 0o666),
        (CHAIN_FILE, chain_pem, 0o666),
    ):
        if data is None:
            continue
        fd = os.open(os.path.join(folder, name), os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
        try:
            os.write(fd, data)
        finally:
            os.close(fd)


# --- the main process ---------------------------------------------------------------------


def _sqlite_datetime(value: datetime | None) -> str | None:
    # What UTCDateTime + SQLAlchemy's SQLite DATETIME store: naive UTC, microseconds.
    if value is None:
        return None
    text = _datetime_texts.get(value)
    if text is None:
        if len(_datetime_texts) > 64:  # a batch shares a handful of distinct times
            _datetime_texts.clear()
        text = f"{value.astimezone(UTC).replace(tzinfo=None):%Y-%m-%d %H:%M:%S.%f}"
        _datetime_texts[value] = text
    return text


_datetime_texts: dict[datetime, str] = {}


def _sqlite_json(value: Any) -> str | None:
    return None if value is None else json.dumps(value)  # SQLAlchemy's JSON serialiser


def _bulk_insert(session: Session, table: Table, rows: list[dict[str, Any]]) -> None:
    """Insert ``rows`` (every column given) in one executemany.

    On SQLite the values are converted here exactly as the column types would convert
    them and handed straight to the driver: SQLAlchemy's per-row parameter processing cost
    about 40 us a row per table. Other backends go through SQLAlchemy Core.
    """
    if not rows:
        return
    connection = session.connection()
    if connection.dialect.name != "sqlite":
        session.execute(insert(table), rows)
        return
    names = [column.name for column in table.columns]
    converters: list[Callable[[Any], Any] | None] = []
    for column in table.columns:
        if isinstance(column.type, UTCDateTime):
            converters.append(_sqlite_datetime)
        elif isinstance(column.type, JSON):
            converters.append(_sqlite_json)
        else:
            converters.append(None)
    pairs = list(zip(names, converters, strict=True))
    values = [
        tuple(row[name] if convert is None else convert(row[name]) for name, convert in pairs)
        for row in rows
    ]
    columns = ", ".join(f'"{name}"' for name in names)
    marks = ", ".join("?" * len(names))
    connection.exec_driver_sql(f'INSERT INTO "{table.name}" ({columns}) VALUES ({marks})', values)


def _table(name: str) -> Table:
    return SQLModel.metadata.tables[name]


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def default_workers() -> int:
    """Worker processes used when none are asked for: one per core."""
    return os.cpu_count() or 1


class _Report:
    """The ``--report`` CSV, written under a temporary name and renamed when complete."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self.kept: list[RowError] = []
        self.count = 0
        self._tmp: Path | None = None
        self._handle: TextIO | None = None
        self._writer: Any = None
        if path is not None:
            folder = path.parent if str(path.parent) else Path(".")
            if not folder.is_dir():
                raise InvalidInput(f"cannot write the report {path}: {folder} is not a folder")
            self._tmp = folder / f".{path.name}.tmp-{os.getpid()}"
            try:
                self._handle = self._tmp.open("w", encoding="utf-8", newline="")
            except OSError as exc:
                raise InvalidInput(f"cannot write the report {path}: {exc.strerror}") from exc
            self._writer = csv.writer(self._handle, lineterminator="\n")
            self._writer.writerow(REPORT_COLUMNS)

    def add(self, error: RowError) -> None:
        self.count += 1
        if len(self.kept) < ERRORS_KEPT:
            self.kept.append(error)
        if self._writer is not None:
            self._writer.writerow((error.line, error.device_id, error.error))

    def finish(self) -> None:
        if self._handle is not None and self._tmp is not None and self.path is not None:
            self._handle.close()
            os.replace(self._tmp, self.path)
            self._handle = None

    def abort(self) -> None:
        if self._handle is not None and self._tmp is not None:
            self._handle.close()
            self._tmp.unlink(missing_ok=True)
            self._handle = None


@dataclass
class _Batch:
    rows: list[_Row]
    now: datetime
    future: Future[list[_Signed | str]]


class _Provisioner:
    def __init__(
        self,
        ws: Workspace,
        engine: Engine,
        source: _Source,
        out_dir: Path,
        default_profile: Profile,
        issuing_cert: x509.Certificate,
        report: _Report,
        summary: ProvisionSummary,
        progress: Progress | None,
    ) -> None:
        self.ws = ws
        self.engine = engine
        self.source = source
        self.out_dir = out_dir
        self.out = str(out_dir)  # str joins: pathlib showed in profiles of the hot path
        self.default_profile = default_profile
        self.issuing_cert = issuing_cert
        self.report = report
        self.summary = summary
        self.progress = progress
        self.profiles: dict[str, Profile | str] = {default_profile.name: default_profile}
        self.seen = _SeenIds()
        self.faults = _Faults()
        self.token = f"{os.getpid()}-{secrets.token_hex(3)}"
        self.done = 0
        self._lock_fd: int | None = None
        self.clouds: list[str] = []

    # -- shared by dry runs and real runs

    def fail(self, error: RowError) -> None:
        self.summary.failed += 1
        self.done += 1
        self.report.add(error)

    def skip(self, count: int = 1) -> None:
        self.summary.skipped += count
        self.done += count

    def groups(self) -> Iterator[list[tuple[int, _Row | RowError]]]:
        group: list[tuple[int, _Row | RowError]] = []
        for record in _iter_records(self.source):
            group.append(record)
            if len(group) >= BATCH_SIZE:
                yield group
                group = []
        if group:
            yield group

    def prepare(self, group: list[tuple[int, _Row | RowError]], *, dry_run: bool) -> list[_Row]:
        """Validate a group of rows; return those that need an identity."""
        rows: list[_Row] = []
        for _line, item in group:
            self.summary.rows += 1
            if isinstance(item, _Row) and item.device_id == MANIFEST_NAME:
                item = RowError(item.line, item.device_id, "this ID would clash with the manifest")
            if isinstance(item, RowError):
                self.fail(item)
            else:
                rows.append(item)
        if not rows:
            return []
        unique: list[_Row] = []
        for row, earlier in self.seen.claim(rows):
            if earlier is None:
                unique.append(row)
            elif earlier[1] == row.digest():
                self.skip()  # the same row again: the first one stands for both
            else:
                self.fail(
                    RowError(
                        row.line,
                        row.device_id,
                        f"duplicate of line {earlier[0]} with different attributes",
                    )
                )
        wanted = self._against_registry(unique)
        ready: list[_Row] = []
        for row in wanted:
            error = self._check_profile(row)
            if error is None and dry_run:
                # A real run finds these when it renames the bundle into place (one stat less
                # per row); a dry run has to look.
                error = self._check_folder(row) or (self._check_csr(row) if row.csr else None)
            if error is not None:
                self.fail(RowError(row.line, row.device_id, error))
            else:
                ready.append(row)
        return ready

    def _against_registry(self, rows: list[_Row]) -> list[_Row]:
        if not rows:
            return []
        device, certificate = _table("device"), _table("certificate")
        ids = [r.device_id for r in rows]
        now = datetime.now(UTC)
        with read_session(self.engine) as session:
            status = dict(
                session.execute(
                    select(device.c.id, device.c.status).where(device.c.id.in_(ids))
                ).all()
            )
            active: set[str] = set()
            if status:
                active = set(
                    session.execute(
                        select(certificate.c.device_id).where(
                            certificate.c.device_id.in_(list(status)),
                            certificate.c.status == "active",
                            certificate.c.not_after > now,
                        )
                    ).scalars()
                )
        wanted: list[_Row] = []
        already: list[str] = []
        for row in rows:
            if row.device_id not in status:
                wanted.append(row)
            elif row.device_id in active:
                already.append(row.device_id)
            else:
                state = status[row.device_id]
                why = "is decommissioned" if state == "decommissioned" else "has no active cert"
                self.fail(
                    RowError(
                        row.line,
                        row.device_id,
                        f"device {row.device_id!r} already exists and {why}; "
                        "use `fleet cert renew` for an existing device",
                    )
                )
        self.seen.mark_ok(already)
        self.skip(len(already))
        return wanted

    def _profile(self, name: str) -> Profile | str:
        if name not in self.profiles:
            try:
                self.profiles[name] = load_profile(name, self.ws.home)
            except FleetError as exc:
                self.profiles[name] = str(exc)
        return self.profiles[name]

    def _check_profile(self, row: _Row) -> str | None:
        found = self._profile(row.profile or self.default_profile.name)
        return found if isinstance(found, str) else None

    def _check_folder(self, row: _Row) -> str | None:
        final = self.out_dir / row.device_id
        if not os.path.lexists(final) or self.is_orphan(final, row.device_id):
            return None
        return f"{final} already exists; move it away or choose another --out"

    def is_orphan(self, folder: Path, device_id: str) -> bool:
        """Whether ``folder`` is a bundle of an interrupted run: this CA signed it for
        ``device_id``, whose device the registry does not hold (the caller checked)."""
        try:
            cert = x509.load_pem_x509_certificate((folder / CERT_FILE).read_bytes())
        except (OSError, ValueError):
            return False
        names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
        if [n.value for n in names] != [device_id]:
            return False
        return ca.verify_issued_by(cert, self.issuing_cert)

    def csr_path(self, row: _Row) -> Path:
        assert row.csr is not None
        return self.source.path.parent / row.csr

    def _check_csr(self, row: _Row) -> str | None:
        try:
            data = self.csr_path(row).read_bytes()
            ca.load_csr(data, row.device_id, source=f"CSR {self.csr_path(row)}")
        except OSError as exc:
            return f"cannot read CSR {self.csr_path(row)}: {exc.strerror}"
        except FleetError as exc:
            return str(exc)
        return None

    def tick(self) -> None:
        if self.progress is not None:
            self.progress(self.done, max(self.source.total, self.done))

    # -- dry run

    def dry_run(self) -> None:
        self.tick()
        for group in self.groups():
            ready = self.prepare(group, dry_run=True)
            self.summary.would_provision += len(ready)
            self.done += len(ready)
            self.tick()

    # -- real run

    def run(self, issuer: ca.Issuer, workers: int) -> None:
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.remove_stale_staging()
        key_der = issuer.key.private_bytes(
            serialization.Encoding.DER,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        # fork: workers start without re-importing fleet and get the key through memory
        # (spawn would re-run ``python -m fleet``'s entry point and pickle the key instead).
        methods = multiprocessing.get_all_start_methods()
        context = multiprocessing.get_context("fork" if "fork" in methods else "spawn")
        pool = ProcessPoolExecutor(
            max_workers=workers,
            mp_context=context,
            initializer=_init_worker,
            initargs=(
                key_der,
                issuer.cert.public_bytes(serialization.Encoding.DER),
                issuer.root.public_bytes(serialization.Encoding.DER),
                os.getpid(),
            ),
        )
        del key_der
        inflight: deque[_Batch] = deque()
        try:
            pool.submit(int).result()  # start the workers now, before any other thread runs
            self.tick()
            for group in self.groups():
                ready = self.prepare(group, dry_run=False)
                batch = self._submit(pool, ready) if ready else None
                if batch is not None:
                    inflight.append(batch)
                while len(inflight) > 2 * workers:
                    self._finish(inflight.popleft())
                self.tick()
            while inflight:
                self._finish(inflight.popleft())
            self.write_manifest()
        except BaseException:
            for batch in inflight:
                batch.future.cancel()
            pool.shutdown(wait=True, cancel_futures=True)
            self.remove_own_staging()
            raise
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
            self.seen.close()
            self.close()

    def _submit(self, pool: ProcessPoolExecutor, rows: list[_Row]) -> _Batch | None:
        task: list[_TaskRow] = []
        sent: list[_Row] = []
        profiles: dict[str, Profile] = {}
        for row in rows:
            name = row.profile or self.default_profile.name
            found = self._profile(name)
            assert isinstance(found, Profile)
            profiles[name] = found
            csr_data: bytes | None = None
            csr_label: str | None = None
            if row.csr is not None:
                csr_label = str(self.csr_path(row))
                try:
                    csr_data = self.csr_path(row).read_bytes()
                except OSError as exc:
                    self.fail(
                        RowError(
                            row.line, row.device_id, f"cannot read CSR {csr_label}: {exc.strerror}"
                        )
                    )
                    continue
            task.append((row.device_id, name, csr_data, csr_label))
            sent.append(row)
        if not task:
            return None
        now = datetime.now(UTC)
        future = pool.submit(_sign_chunk, task, profiles, now, str(self.out_dir), self.token)
        return _Batch(sent, now, future)

    def _finish(self, batch: _Batch) -> None:
        results = batch.future.result()
        signed: list[tuple[_Row, _Signed]] = []
        for row, result in zip(batch.rows, results, strict=True):
            if isinstance(result, str):
                self.fail(RowError(row.line, row.device_id, result))
            else:
                signed.append((row, result))
        self.faults.hit("after-stage")
        if signed:
            self._commit_batch(signed, batch.now)
        self.tick()

    def _commit_batch(self, signed: list[tuple[_Row, _Signed]], now: datetime) -> None:
        """Make one batch durable: bundles into place, registry rows and audit events, in
        one transaction. (Anything else that must happen atomically with provisioning, e.g.
        queueing cloud registrations, belongs inside this transaction too.)"""
        with self._out_dir_lock():
            self._commit_attempts(signed, now)

    @contextlib.contextmanager
    def _out_dir_lock(self) -> Iterator[None]:
        """Hold ``OUT/.fleet-provision.lock`` while renaming and committing.

        The registry transaction orders database writes, not folder renames: two runs sharing
        an output folder (on PostgreSQL, where transactions overlap) could otherwise take one
        another's uncommitted bundles for orphans. The kernel drops the lock of a killed run.
        """
        if self._lock_fd is None:
            self._lock_fd = os.open(
                os.path.join(self.out, LOCK_NAME), os.O_WRONLY | os.O_CREAT, 0o644
            )
        fcntl.flock(self._lock_fd, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(self._lock_fd, fcntl.LOCK_UN)

    def close(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def _commit_attempts(self, signed: list[tuple[_Row, _Signed]], now: datetime) -> None:
        for attempt in range(3):
            try:
                self._try_commit(signed, now)
                return
            except (sa_exc.IntegrityError, sa_exc.OperationalError) as exc:
                # Another process registered one of these IDs between our check and our
                # insert (PostgreSQL; two runs inserting shared IDs in different orders can
                # also deadlock, and PostgreSQL then aborts one of them): the next attempt
                # sees the committed rows and skips them.
                retry = isinstance(exc, sa_exc.IntegrityError) or (
                    getattr(exc.orig, "sqlstate", None) == "40P01"
                )
                if not retry or attempt == 2:
                    self._discard([os.path.join(self.out, s[0]) for _, s in signed])
                    if not retry:
                        raise
                    raise RegistryError(f"cannot register the batch: {exc.orig}") from exc
            except BaseException:
                self._discard([os.path.join(self.out, s[0]) for _, s in signed])
                raise

    def _try_commit(self, signed: list[tuple[_Row, _Signed]], now: datetime) -> None:
        device, certificate = _table("device"), _table("certificate")
        # (staging, final, set-aside orphan or None) for every bundle renamed into place
        published: list[tuple[str, str, str | None]] = []
        failed: list[tuple[_Row, str, str]] = []
        present: list[tuple[_Row, str]] = []
        issued: list[tuple[str, str, str, str]] = []
        committed = False
        try:
            with write_session(self.engine) as session:
                ids = [row.device_id for row, _ in signed]
                taken = set(
                    session.execute(select(device.c.id).where(device.c.id.in_(ids))).scalars()
                )
                device_rows: list[dict[str, Any]] = []
                cert_rows: list[dict[str, Any]] = []
                events: list[audit.PendingEvent] = []
                for row, result in signed:
                    staging = os.path.join(self.out, result[0])
                    if row.device_id in taken:
                        present.append((row, staging))
                        continue
                    error = self._publish(staging, row.device_id, published)
                    if error is not None:
                        failed.append((row, staging, error))
                        continue
                    self._rows_for(row, result, now, device_rows, cert_rows, events)
                    issued.append((result[2], result[3], iso(result[6]) or "", row.device_id))
                self.faults.hit("after-rename")
                self._insert(session, device, device_rows, certificate, cert_rows)
                audit.append_many(
                    session, events, at=now, insert_rows=lambda t, r: _bulk_insert(session, t, r)
                )
                if self.clouds and device_rows:
                    jobs.enqueue_register(
                        session, [r["id"] for r in device_rows], self.clouds, now=now
                    )
                self.faults.hit("before-commit")
            committed = True
        finally:
            if not committed:
                for staging, final, aside in reversed(published):
                    os.rename(final, staging)
                    if aside is not None:
                        os.rename(aside, final)
        self.faults.hit("after-commit")
        for _staging, _final, aside in published:
            if aside is not None:
                shutil.rmtree(aside, ignore_errors=True)
        for row, staging, error in failed:
            shutil.rmtree(staging, ignore_errors=True)
            self.fail(RowError(row.line, row.device_id, error))
        for _row, staging in present:
            shutil.rmtree(staging, ignore_errors=True)
        self.skip(len(present))
        self.seen.mark_ok([row.device_id for row, _ in present])
        self.seen.mark_issued(issued)
        self.summary.provisioned += len(issued)
        self.done += len(issued)

    def _publish(
        self, staging: str, device_id: str, published: list[tuple[str, str, str | None]]
    ) -> str | None:
        final = os.path.join(self.out, device_id)
        try:
            os.rename(staging, final)
        except OSError as exc:
            if exc.errno not in (errno.EEXIST, errno.ENOTEMPTY, errno.ENOTDIR, errno.EISDIR):
                raise
            if not self.is_orphan(Path(final), device_id):
                return f"{final} already exists; move it away or choose another --out"
            aside = os.path.join(self.out, f".{device_id}.tmp-{self.token}-old")
            os.rename(final, aside)
            os.rename(staging, final)
            published.append((staging, final, aside))
            return None
        published.append((staging, final, None))
        return None

    def _rows_for(
        self,
        row: _Row,
        result: _Signed,
        now: datetime,
        device_rows: list[dict[str, Any]],
        cert_rows: list[dict[str, Any]],
        events: list[audit.PendingEvent],
    ) -> None:
        _staging, pem, serial, fingerprint, subject, not_before, not_after, key_type, origin = (
            result
        )
        profile = row.profile or self.default_profile.name
        device_rows.append(
            {
                "id": row.device_id,
                "model": row.model,
                "serial": row.serial,
                "labels": row.labels,
                "status": "active",
                "created_at": now,
                "updated_at": now,
                "decommissioned_at": None,
                "decommission_reason": None,
            }
        )
        cert_rows.append(
            {
                "serial": serial,
                "device_id": row.device_id,
                "fingerprint_sha256": fingerprint,
                "subject": subject,
                "not_before": not_before,
                "not_after": not_after,
                "status": "active",
                "revoked_at": None,
                "revocation_reason": None,
                "profile": profile,
                "key_type": key_type,
                "key_origin": origin,
                "issued_at": now,
                "pem": pem,
            }
        )
        # Exactly what `fleet device add` records (devices.device_details and
        # devices.certificate_details), so history rebuilt from the trail sees no difference.
        events.append(
            audit.PendingEvent(
                "device.add",
                row.device_id,
                {
                    "model": row.model,
                    "serial": row.serial,
                    "labels": dict(row.labels),
                    "status": "active",
                    "certificate": {
                        "serial": serial,
                        "fingerprint_sha256": fingerprint,
                        "not_before": not_before.isoformat(),
                        "not_after": not_after.isoformat(),
                        "profile": profile,
                        "key_type": key_type,
                        "key_origin": origin,
                    },
                },
            )
        )

    @staticmethod
    def _insert(
        session: Session,
        device: Table,
        device_rows: list[dict[str, Any]],
        certificate: Table,
        cert_rows: list[dict[str, Any]],
    ) -> None:
        _bulk_insert(session, device, device_rows)
        _bulk_insert(session, certificate, cert_rows)

    def _discard(self, folders: list[str]) -> None:
        for folder in folders:
            shutil.rmtree(folder, ignore_errors=True)

    def remove_stale_staging(self) -> None:
        """Delete staging folders (and half-written manifests) of processes that are gone."""
        with os.scandir(self.out_dir) as entries:
            for entry in entries:
                if not entry.name.startswith("."):
                    continue
                match = _STAGING_RE.match(entry.name)
                if match is None or _pid_alive(int(match.group("pid"))):
                    continue
                if entry.is_dir(follow_symlinks=False):
                    shutil.rmtree(entry.path, ignore_errors=True)
                else:
                    with contextlib.suppress(OSError):
                        os.unlink(entry.path)

    def remove_own_staging(self) -> None:
        """After an error: delete whatever this run staged but did not commit."""
        suffix = f".tmp-{self.token}"
        with contextlib.suppress(OSError), os.scandir(self.out_dir) as entries:
            for entry in entries:
                if entry.name.startswith(".") and (
                    entry.name.endswith(suffix) or entry.name.endswith(suffix + "-old")
                ):
                    if entry.is_dir(follow_symlinks=False):
                        shutil.rmtree(entry.path, ignore_errors=True)
                    else:
                        with contextlib.suppress(OSError):
                            os.unlink(entry.path)

    def write_manifest(self) -> None:
        """Rebuild ``manifest.csv`` for every provisioned row of the file, in file order:
        certificates this run committed from its own record, the others from the registry."""
        certificate = _table("certificate")
        final = self.out_dir / MANIFEST_NAME
        tmp = self.out_dir / f".{MANIFEST_NAME}.tmp-{self.token}"
        written = 0
        with tmp.open("w", encoding="utf-8", newline="") as handle:
            writer = csv.writer(handle, lineterminator="\n")
            writer.writerow(MANIFEST_COLUMNS)
            for page in self.seen.ok_rows():
                earlier = [device_id for device_id, serial, _, _ in page if serial is None]
                newest: dict[str, tuple[str, str, str, datetime]] = {}
                if earlier:
                    with read_session(self.engine) as session:
                        query = select(
                            certificate.c.device_id,
                            certificate.c.serial,
                            certificate.c.fingerprint_sha256,
                            certificate.c.not_after,
                            certificate.c.issued_at,
                        ).where(
                            certificate.c.device_id.in_(earlier),
                            certificate.c.status == "active",
                        )
                        for cert in session.execute(query):
                            kept = newest.get(cert.device_id)
                            if kept is None or cert.issued_at > kept[3]:
                                newest[cert.device_id] = (
                                    cert.serial,
                                    cert.fingerprint_sha256,
                                    iso(cert.not_after) or "",
                                    cert.issued_at,
                                )
                for device_id, serial, fingerprint, not_after in page:
                    if serial is None:
                        if device_id not in newest:
                            continue  # revoked meanwhile by someone else
                        serial, fingerprint, not_after, _ = newest[device_id]
                    writer.writerow((device_id, serial, fingerprint, not_after))
                    written += 1
                    if written == 1:
                        handle.flush()
                        self.faults.hit("manifest")
        os.replace(tmp, final)
        self.summary.manifest = str(final)


def provision(
    ws: Workspace,
    path: Path,
    *,
    out_dir: Path,
    fmt: str | None = None,
    workers: int | None = None,
    profile: str = "default",
    dry_run: bool = False,
    report: Path | None = None,
    passphrase: Passphrase | None = None,
    progress: Progress | None = None,
    clouds: Sequence[str] = (),
) -> ProvisionSummary:
    """Provision every device listed in ``path`` (CSV or JSON Lines); see the module docstring.

    ``clouds``: queue each provisioned device's registration on these clouds, in the
    transaction of the batch that creates it (pushed by ``fleet cloud sync``).

    Rows already provisioned are skipped; rows that cannot be provisioned are listed in
    ``report`` (CSV ``line,id,error``) and counted as failed while the others go ahead.
    Problems with the whole request (unreadable file, unknown columns, unknown profile, wrong
    passphrase) raise before anything is written. Example::

        provision(Workspace(Path("~/fleet")), Path("batch-7.csv"), out_dir=Path("ids"))
    """
    started = time.monotonic()
    source = _open_source(path, fmt)
    chosen_workers = default_workers() if workers is None else workers
    if chosen_workers < 1:
        raise InvalidInput("--workers must be at least 1")
    default_profile = load_profile(profile, ws.home)
    if out_dir.exists() and not out_dir.is_dir():
        raise InvalidInput(f"--out {out_dir} is not a folder")
    engine = ws.open_registry()
    if clouds:
        with read_session(engine) as session:
            clouds = jobs.validate_clouds_exist(session, clouds)
    issuing_cert, _root = ca.load_ca_certificates(ws.home)
    issuer = None if dry_run else ca.load_issuer(ws.home, require_passphrase(passphrase))
    summary = ProvisionSummary(
        dry_run=dry_run,
        workers=0 if dry_run else chosen_workers,
        out_dir=str(out_dir),
        report=str(report) if report is not None else None,
    )
    sink = _Report(report)
    worker = _Provisioner(
        ws, engine, source, out_dir, default_profile, issuing_cert, sink, summary, progress
    )
    worker.clouds = list(clouds)
    try:
        if issuer is None:
            worker.dry_run()
            worker.seen.close()
        else:
            worker.run(issuer, chosen_workers)
        sink.finish()
    except BaseException:
        sink.abort()
        raise
    summary.errors = list(sink.kept)
    summary.elapsed_seconds = time.monotonic() - started
    return summary
