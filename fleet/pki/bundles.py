"""Device identity bundles on disk: ``DIR/ID/{key,cert,chain}.pem``, written all-or-nothing.

A bundle is written into a hidden staging folder next to its final place, then renamed into
place just before the registry transaction commits; if the commit fails the rename is undone.
A reader therefore never sees a half-written bundle.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from fleet.errors import Conflict, InvalidInput
from fleet.files import folder_mode, write_new_file

KEY_FILE, CERT_FILE, CHAIN_FILE = "key.pem", "cert.pem", "chain.pem"


@dataclass
class StagedBundle:
    """A bundle written to ``staging`` and waiting to become ``final``."""

    staging: Path
    final: Path
    created_parent: bool
    _backup: Path | None = None
    _published: bool = False

    def publish(self, *, replace: bool = False) -> None:
        """Rename into place; with ``replace`` an existing bundle is set aside, not deleted."""
        if os.path.lexists(self.final):  # a dangling symlink too
            if not replace:
                raise Conflict(f"{self.final} already exists; move it away or choose another --out")
            self._backup = Path(
                tempfile.mkdtemp(prefix=f".{self.final.name}.old-", dir=self.final.parent)
            )
            os.rename(self.final, self._backup / "bundle")
        os.rename(self.staging, self.final)
        self._published = True

    def commit(self) -> None:
        """The registry committed: drop the replaced bundle, if any."""
        if self._backup is not None:
            shutil.rmtree(self._backup, ignore_errors=True)
            self._backup = None

    def rollback(self) -> None:
        """Undo everything: remove the new bundle, restore any replaced one."""
        if self._published:
            shutil.rmtree(self.final, ignore_errors=True)
            if self._backup is not None:
                os.rename(self._backup / "bundle", self.final)
        shutil.rmtree(self.staging, ignore_errors=True)
        if self._backup is not None:
            shutil.rmtree(self._backup, ignore_errors=True)
        if self.created_parent:
            with contextlib.suppress(OSError):  # not empty: something else lives there
                self.final.parent.rmdir()


def stage_bundle(
    out_dir: Path,
    device_id: str,
    *,
    key_pem: bytes | None,
    cert_pem: bytes,
    chain_pem: bytes,
) -> StagedBundle:
    """Write a bundle to a staging folder inside ``out_dir`` (created if missing)."""
    created_parent = not out_dir.exists()
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{device_id}.tmp-", dir=out_dir))
    except OSError as exc:
        raise InvalidInput(f"cannot write to {out_dir}: {exc.strerror}") from exc
    try:
        os.chmod(staging, folder_mode())
        if key_pem is not None:
            write_new_file(staging / KEY_FILE, key_pem, private=True)
        write_new_file(staging / CERT_FILE, cert_pem)
        write_new_file(staging / CHAIN_FILE, chain_pem)
    except OSError as exc:
        shutil.rmtree(staging, ignore_errors=True)
        raise InvalidInput(f"cannot write the bundle in {out_dir}: {exc.strerror}") from exc
    return StagedBundle(staging, out_dir / device_id, created_parent)
