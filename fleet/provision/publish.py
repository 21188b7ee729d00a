"""The output folder: staging names, renames into place, orphans, clean-up, the lock.

Workers write each bundle under a hidden staging name (``OUT/.ID.tmp-PID-XXXXXX``); a batch's
bundles are renamed to ``OUT/ID`` inside its registry transaction and renamed back if that
transaction does not commit. A bundle left in place by a run killed between rename and
commit is an *orphan*: recognised (this CA signed it for that ID) and replaced.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path

from cryptography import x509
from cryptography.x509.oid import NameOID

from fleet.pki.bundles import CERT_FILE
from fleet.pki.keys import verify_issued_by

LOCK_NAME = ".fleet-provision.lock"
_STAGING_RE = re.compile(r"^\.(?P<name>.+)\.tmp-(?P<pid>\d+)-[0-9a-f]+(?:-old)?$")
# What rename() says when the target is a folder (or file) already there.
_TARGET_EXISTS = (errno.EEXIST, errno.ENOTEMPTY, errno.ENOTDIR, errno.EISDIR)


def staging_name(device_id: str, token: str) -> str:
    """The hidden name a bundle is written under until its batch commits."""
    return f".{device_id}.tmp-{token}"


def _folder_taken(final: str | Path) -> str:
    return f"{final} already exists; move it away or choose another --out"


class OutDir:
    """One run's view of the output folder. ``token`` (``PID-XXXXXX``) marks its staging
    names, so a later run can tell whose process is gone."""

    def __init__(self, path: Path, token: str, issuing_cert: x509.Certificate) -> None:
        self.path = path
        self.text = str(path)  # str joins: pathlib showed in profiles of the hot path
        self.token = token
        self.issuing_cert = issuing_cert
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
        """Why ``OUT/ID`` could not take the bundle, if it could not (for dry runs; a real
        run finds out when it renames the bundle into place)."""
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
        """Delete staging folders (and half-written manifests) of processes that are gone."""
        with os.scandir(self.path) as entries:
            for entry in entries:
                if not entry.name.startswith("."):
                    continue
                match = _STAGING_RE.match(entry.name)
                if match is None or _pid_alive(int(match.group("pid"))):
                    continue
                _remove(entry)

    def remove_own_staging(self) -> None:
        """After an error: delete whatever this run staged but did not commit."""
        suffix = f".tmp-{self.token}"
        with contextlib.suppress(OSError), os.scandir(self.path) as entries:
            for entry in entries:
                if entry.name.startswith(".") and (
                    entry.name.endswith(suffix) or entry.name.endswith(suffix + "-old")
                ):
                    _remove(entry)


class Renames:
    """The bundles one attempt at a batch renamed into place, to undo if it does not commit."""

    def __init__(self, out: OutDir) -> None:
        self.out = out
        # (staging, final, set-aside orphan or None) for every bundle renamed into place
        self.done: list[tuple[str, str, str | None]] = []

    def publish(self, device_id: str) -> str | None:
        """Rename ``device_id``'s staged bundle to ``OUT/ID``, setting an orphan there aside;
        or say why not (``OUT/ID`` is something else)."""
        staging, final = self.out.staging(device_id), self.out.final(device_id)
        try:
            os.rename(staging, final)
        except OSError as exc:
            if exc.errno not in _TARGET_EXISTS:
                raise
            if not self.out.is_orphan(Path(final), device_id):
                return _folder_taken(final)
            aside = staging + "-old"
            os.rename(final, aside)
            os.rename(staging, final)
            self.done.append((staging, final, aside))
            return None
        self.done.append((staging, final, None))
        return None

    def undo(self) -> None:
        """Put everything back as it was before :meth:`publish` (newest first)."""
        for staging, final, aside in reversed(self.done):
            os.rename(final, staging)
            if aside is not None:
                os.rename(aside, final)

    def drop_set_aside(self) -> None:
        """After the commit: delete the orphans the new bundles replaced."""
        for _staging, _final, aside in self.done:
            if aside is not None:
                shutil.rmtree(aside, ignore_errors=True)


def _remove(entry: os.DirEntry[str]) -> None:
    if entry.is_dir(follow_symlinks=False):
        shutil.rmtree(entry.path, ignore_errors=True)
    else:
        with contextlib.suppress(OSError):
            os.unlink(entry.path)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
