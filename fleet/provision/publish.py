"""The output folder: staging names, publishing, orphans, clean-up, the lock.

Workers stage each bundle's key and pending serial under a hidden name
(``OUT/.ID.tmp-PID-XXXXXX``, :mod:`fleet.pki.bundles`); once a batch's registry transaction
commits, each certificate is written into its staging folder and the folder renamed to
``OUT/ID``. A bundle in place whose device the registry does not hold (left by an older
fleet, killed between rename and commit) is an *orphan*: recognised (this CA signed it for
that ID) and replaced.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

from cryptography import x509
from cryptography.x509.oid import NameOID

from fleet.pki.bundles import (
    CERT_FILE,
    PEM,
    STAGING_RE,
    BundleFormat,
    Lookup,
    StagedBundle,
    pid_alive,
    staged_serial,
    staging_name,
)
from fleet.pki.keys import verify_issued_by

LOCK_NAME = ".fleet-provision.lock"


def _folder_taken(final: str | Path) -> str:
    return f"{final} already exists; move it away or choose another --out"


class OutDir:
    """One run's view of the output folder. ``token`` (``PID-XXXXXX``) marks its staging
    names, so a later run can tell whose process is gone."""

    def __init__(
        self,
        path: Path,
        token: str,
        issuing_cert: x509.Certificate,
        chain_pem: bytes,
        bundle_format: BundleFormat = PEM,
    ) -> None:
        self.path = path
        self.bundle_format = bundle_format  # ready (its password asked) when p12
        self.text = str(path)  # str joins: pathlib showed in profiles of the hot path
        self.token = token
        self.issuing_cert = issuing_cert
        self.chain_pem = chain_pem
        self._lock_fd: int | None = None

    def staging(self, device_id: str) -> str:
        """The path of ``device_id``'s staged bundle."""
        return os.path.join(self.text, staging_name(device_id, self.token))

    def final(self, device_id: str) -> str:
        """The path of ``device_id``'s bundle once in place."""
        return os.path.join(self.text, device_id)

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
        return verify_issued_by(cert, self.issuing_cert)

    def check_free(self, device_id: str) -> str | None:
        """Why ``OUT/ID`` could not take the bundle, if it could not (something other than
        an orphan is there)."""
        final = self.path / device_id
        if not os.path.lexists(final) or self.is_orphan(final, device_id):
            return None
        return _folder_taken(final)

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """Hold ``OUT/.fleet-provision.lock`` while renaming and committing.

        The registry transaction orders database writes, not folder renames: two runs sharing
        an output folder (on PostgreSQL, where transactions overlap) could otherwise take one
        another's uncommitted bundles for orphans. The kernel drops the lock of a killed run.
        """
        if self._lock_fd is None:
            self._lock_fd = os.open(
                os.path.join(self.text, LOCK_NAME), os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW, 0o666
            )
        fcntl.flock(self._lock_fd, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(self._lock_fd, fcntl.LOCK_UN)

    def close(self) -> None:
        """Let go of the lock file."""
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def discard(self, device_ids: list[str]) -> None:
        """Delete these devices' staged bundles."""
        for device_id in device_ids:
            shutil.rmtree(self.staging(device_id), ignore_errors=True)

    def remove_stale_staging(self) -> None:
        """Delete half-written files (manifests, reports) of processes that are gone; staged
        bundles are :func:`fleet.pki.bundles.recover`'s."""
        with os.scandir(self.path) as entries:
            for entry in entries:
                if not entry.name.startswith(".") or entry.is_dir(follow_symlinks=False):
                    continue
                match = STAGING_RE.match(entry.name)
                if match is None or pid_alive(int(match.group("pid"))):
                    continue
                _remove(entry)

    def remove_own_staging(self, lookup: Lookup) -> None:
        """After an error: delete whatever this run staged whose certificate is not recorded
        (a recorded one stays for the next run to publish)."""
        suffix = f".tmp-{self.token}"
        with contextlib.suppress(OSError), os.scandir(self.path) as entries:
            for entry in entries:
                if not (entry.name.startswith(".") and entry.name.endswith(suffix)):
                    continue
                serial = staged_serial(Path(entry.path))
                if serial is None or lookup(serial) is None:
                    _remove(entry)

    def publish(self, device_id: str, cert_pem: str) -> None:
        """After the commit: complete ``device_id``'s staged bundle and rename it into place
        (replacing the orphan the caller found there, under the lock)."""
        staged = StagedBundle(Path(self.staging(device_id)), self.path / device_id, False)
        staged.complete(cert_pem.encode("ascii"), self.chain_pem, self.bundle_format)
        staged.publish(replace=True)


def _remove(entry: os.DirEntry[str]) -> None:
    if entry.is_dir(follow_symlinks=False):
        shutil.rmtree(entry.path, ignore_errors=True)
    else:
        with contextlib.suppress(OSError):
            os.unlink(entry.path)
