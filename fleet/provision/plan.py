"""Deciding what each row needs: validation against the file, the registry, profiles, the
output folder and CSR files. Rows that fail or are already done are settled here."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.engine import Engine

from fleet import clock
from fleet.errors import FleetError, InvalidInput
from fleet.pki.csr import load_csr, read_csr_bytes
from fleet.pki.profiles import Profile, load_profile
from fleet.provision.manifest import MANIFEST_NAME
from fleet.provision.publish import OutDir
from fleet.provision.seen import SeenIds
from fleet.provision.source import Record, Row, RowError
from fleet.provision.summary import Tally
from fleet.provision.worker import TaskRow
from fleet.registry.db import read_session
from fleet.registry.models import Certificate, Device
from fleet.statuses import CertStatus, DeviceStatus


@dataclass
class Task:
    """Rows to send to a worker, with the profiles they name."""

    rows: list[Row] = field(default_factory=list)
    task_rows: list[TaskRow] = field(default_factory=list)
    profiles: dict[str, Profile] = field(default_factory=dict)


class Planner:
    """Validates the file's rows a group at a time; remembers every ID in ``seen``."""

    def __init__(
        self,
        home: Path,
        engine: Engine,
        source_path: Path,
        out: OutDir,
        default_profile: Profile,
        tally: Tally,
    ) -> None:
        self.home = home
        self.engine = engine
        self.csr_folder = source_path.parent
        self.out = out
        self.default_profile = default_profile
        self.tally = tally
        self.seen = SeenIds()
        # loaded profiles by name, or why one cannot be loaded
        self.profiles: dict[str, Profile | str] = {default_profile.name: default_profile}

    def prepare(self, group: list[Record], *, dry_run: bool) -> list[Row]:
        """Validate a group of rows; return those that need an identity."""
        rows = self._valid(group)
        if not rows:
            return []
        wanted = self._against_registry(self._first_of_each_id(rows))
        ready: list[Row] = []
        for row in wanted:
            error = self._check_profile(row)
            if error is None and dry_run:
                # A real run finds these when it renames the bundle into place (one stat less
                # per row); a dry run has to look.
                error = self.out.check_free(row.device_id) or (
                    self._check_csr(row) if row.csr else None
                )
            if error is not None:
                self.tally.fail_row(row, error)
            else:
                ready.append(row)
        return ready

    def task(self, rows: list[Row]) -> Task:
        """What a worker needs to sign ``rows``; a row whose CSR cannot be read fails."""
        task = Task()
        for row in rows:
            name = self.profile_name(row)
            found = self._profile(name)
            assert isinstance(found, Profile)
            task.profiles[name] = found
            csr_data: bytes | None = None
            csr_label: str | None = None
            if row.csr is not None:
                try:
                    csr_label = str(self._csr_path(row))
                    csr_data = read_csr_bytes(self._csr_path(row))
                except FleetError as exc:
                    self.tally.fail_row(row, str(exc))
                    continue
            task.task_rows.append(TaskRow(row.device_id, name, csr_data, csr_label))
            task.rows.append(row)
        return task

    def profile_name(self, row: Row) -> str:
        """The profile ``row`` is signed with."""
        return row.profile or self.default_profile.name

    def close(self) -> None:
        """Drop the record of IDs seen."""
        self.seen.close()

    def _valid(self, group: list[Record]) -> list[Row]:
        rows: list[Row] = []
        for _line, item in group:
            self.tally.row_read()
            if isinstance(item, Row) and item.device_id == MANIFEST_NAME:
                item = RowError(item.line, item.device_id, "this ID would clash with the manifest")
            if isinstance(item, RowError):
                self.tally.fail(item)
            else:
                rows.append(item)
        return rows

    def _first_of_each_id(self, rows: list[Row]) -> list[Row]:
        """Drop rows whose ID came earlier in the file: the same row again is skipped (the
        first one stands for both), a different one fails."""
        unique: list[Row] = []
        for row, earlier in self.seen.claim(rows):
            if earlier is None:
                unique.append(row)
            elif earlier[1] == row.digest():
                self.tally.skip()
            else:
                self.tally.fail_row(
                    row, f"duplicate of line {earlier[0]} with different attributes"
                )
        return unique

    def _against_registry(self, rows: list[Row]) -> list[Row]:
        """Rows whose device the registry does not hold; provisioned ones are skipped,
        devices without an active certificate fail."""
        if not rows:
            return []
        status, active = self._registry_states([r.device_id for r in rows])
        wanted: list[Row] = []
        already: list[str] = []
        for row in rows:
            if row.device_id not in status:
                wanted.append(row)
            elif row.device_id in active:
                already.append(row.device_id)
            else:
                decommissioned = status[row.device_id] == DeviceStatus.DECOMMISSIONED
                why = "is decommissioned" if decommissioned else "has no active cert"
                self.tally.fail_row(
                    row,
                    f"device {row.device_id!r} already exists and {why}; "
                    "use `fleet cert renew` for an existing device",
                )
        self.seen.mark_ok(already)
        self.tally.skip(len(already))
        return wanted

    def _registry_states(self, ids: list[str]) -> tuple[dict[str, str], set[str]]:
        """``(status of each registered device, devices with a valid active certificate)``."""
        device = Device.__table__  # type: ignore[attr-defined]
        certificate = Certificate.__table__  # type: ignore[attr-defined]
        now = clock.now()
        with read_session(self.engine) as session:
            status = dict(
                session.execute(
                    select(device.c.id, device.c.status).where(device.c.id.in_(ids))
                ).all()
            )
            if not status:
                return status, set()
            active = set(
                session.execute(
                    select(certificate.c.device_id).where(
                        certificate.c.device_id.in_(list(status)),
                        certificate.c.status == CertStatus.ACTIVE,
                        certificate.c.not_after > now,
                    )
                ).scalars()
            )
        return status, active

    def _profile(self, name: str) -> Profile | str:
        if name not in self.profiles:
            try:
                self.profiles[name] = load_profile(name, self.home)
            except FleetError as exc:
                self.profiles[name] = str(exc)
        return self.profiles[name]

    def _check_profile(self, row: Row) -> str | None:
        found = self._profile(self.profile_name(row))
        return found if isinstance(found, str) else None

    def _csr_path(self, row: Row) -> Path:
        """The row's CSR file, inside the provisioning file's folder: an absolute path or
        one climbing out with ``..`` is refused (the file must not read arbitrary files)."""
        assert row.csr is not None
        relative = Path(row.csr)
        if relative.is_absolute() or ".." in relative.parts:
            raise InvalidInput(
                f"CSR {row.csr!r} must be a path inside the file's folder {self.csr_folder}"
            )
        return self.csr_folder / relative

    def _check_csr(self, row: Row) -> str | None:
        try:
            path = self._csr_path(row)
            load_csr(read_csr_bytes(path), row.device_id, source=f"CSR {path}")
        except FleetError as exc:
            return str(exc)
        return None
