"""What a run leaves beside the bundles: ``OUT/manifest.csv`` and the ``--report`` CSV."""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any, TextIO

from sqlalchemy import select
from sqlalchemy.engine import Engine

from fleet.errors import InvalidInput
from fleet.faults import Faults
from fleet.files import PendingFile
from fleet.provision.seen import ManifestRow, SeenIds
from fleet.provision.source import RowError
from fleet.registry.db import read_session
from fleet.registry.models import Certificate
from fleet.statuses import CertStatus
from fleet.views import iso

MANIFEST_NAME = "manifest.csv"
MANIFEST_COLUMNS = ("id", "serial", "fingerprint_sha256", "not_after")
REPORT_COLUMNS = ("line", "id", "error")
ERRORS_KEPT = 20

_Entry = tuple[str, str, str]  # serial, fingerprint, not_after


class Report:
    """The ``--report`` CSV, written under a temporary name and renamed when complete;
    ``kept`` holds the first few errors (for the summary) with or without a file."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self.kept: list[RowError] = []
        self.count = 0
        self._pending: PendingFile | None = None
        self._handle: TextIO | None = None
        self._writer: Any = None
        if path is not None:
            folder = path.parent if str(path.parent) else Path(".")
            if not folder.is_dir():
                raise InvalidInput(f"cannot write the report {path}: {folder} is not a folder")
            self._pending = PendingFile(path)
            self._handle = _text(self._pending)
            self._writer = csv.writer(self._handle, lineterminator="\n")
            self._writer.writerow(REPORT_COLUMNS)

    def add(self, error: RowError) -> None:
        """List a failed row."""
        self.count += 1
        if len(self.kept) < ERRORS_KEPT:
            self.kept.append(error)
        if self._writer is not None:
            self._writer.writerow((error.line, error.device_id, error.error))

    def finish(self) -> None:
        """Put the complete report in place."""
        if self._handle is not None and self._pending is not None:
            self._handle.flush()
            self._pending.commit()
            self._handle = None

    def abort(self) -> None:
        """Drop the half-written report."""
        if self._handle is not None and self._pending is not None:
            self._pending.discard()
            self._handle = None


def _text(pending: PendingFile) -> TextIO:
    """A UTF-8 text writer over ``pending`` (left open: the pending file closes it)."""
    return io.TextIOWrapper(pending.handle, encoding="utf-8", newline="", write_through=True)


def write_manifest(
    out_dir: Path, token: str, engine: Engine, seen: SeenIds, faults: Faults
) -> Path:
    """Rebuild ``manifest.csv``: first the rows an earlier file's run left there for devices
    this file does not list (every batch run into one folder stays listed), then every
    provisioned row of the file, in file order: certificates this run committed from its
    own record, the others from the registry. Re-running a file rewrites its own rows, never
    twice. Written under a staging name (``token``) and renamed into place; returns its
    path."""
    final = out_dir / MANIFEST_NAME
    written = 0
    with PendingFile(final, temp_name=f".{MANIFEST_NAME}.tmp-{token}") as pending:
        handle = _text(pending)
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(MANIFEST_COLUMNS)
        for rows in _earlier_rows(final, seen):
            writer.writerows(rows)
        for page in seen.ok_rows():
            for entry in _filled_in(engine, page):
                writer.writerow(entry)
                written += 1
                if written == 1:
                    handle.flush()
                    faults.hit("manifest")
        handle.flush()
        pending.commit()
    return final


def _earlier_rows(manifest: Path, seen: SeenIds, page: int = 1000) -> Iterator[list[list[str]]]:
    """The rows of the manifest already at ``manifest`` whose device this file does not list,
    a page at a time (none when there is no manifest, or not one of fleet's)."""
    try:
        handle = manifest.open(encoding="utf-8", newline="")
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
        return
    with handle:
        reader = csv.reader(handle)
        if next(reader, None) != list(MANIFEST_COLUMNS):
            return
        while True:
            rows = [row for _, row in zip(range(page), reader, strict=False) if row]
            if not rows:
                return
            listed = seen.contains([row[0] for row in rows])
            yield [row for row in rows if row[0] not in listed]


def _filled_in(engine: Engine, page: list[ManifestRow]) -> Iterator[tuple[str, str, str, str]]:
    """The page's rows; those of earlier runs completed from their active certificate, or
    left out if they have none any more (revoked meanwhile by someone else)."""
    earlier = [device_id for device_id, serial, _, _ in page if serial is None]
    newest = _newest_active(engine, earlier) if earlier else {}
    for device_id, serial, fingerprint, not_after in page:
        if serial is None:
            if device_id not in newest:
                continue
            serial, fingerprint, not_after = newest[device_id]
        yield device_id, serial, fingerprint, not_after


def _newest_active(engine: Engine, device_ids: list[str]) -> dict[str, _Entry]:
    """Each device's newest active certificate (by issue time) as a manifest entry."""
    table = Certificate.__table__  # type: ignore[attr-defined]
    query = select(
        table.c.device_id,
        table.c.serial,
        table.c.fingerprint_sha256,
        table.c.not_after,
        table.c.issued_at,
    ).where(table.c.device_id.in_(device_ids), table.c.status == CertStatus.ACTIVE)
    newest: dict[str, tuple[_Entry, datetime]] = {}
    with read_session(engine) as session:
        for cert in session.execute(query):
            kept = newest.get(cert.device_id)
            if kept is None or cert.issued_at > kept[1]:
                entry = (cert.serial, cert.fingerprint_sha256, iso(cert.not_after) or "")
                newest[cert.device_id] = (entry, cert.issued_at)
    return {device_id: entry for device_id, (entry, _) in newest.items()}
