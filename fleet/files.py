"""Every file fleet writes goes through here: all or nothing, never through a planted symlink.

* :class:`PendingFile` (and :func:`atomic_write` on top of it) creates a temporary file
  beside the target with ``O_CREAT | O_EXCL | O_NOFOLLOW`` under a random name, fsyncs it,
  sets its mode and renames it over the target. The rename replaces whatever is at the
  final name, a symlink included, without following it: a link planted there is replaced,
  its target left alone. The folder is taken as the caller names it (following symlinks in
  the path to it, as any program does); only the last component is guarded.
* :func:`write_new_file` creates a file that must not exist yet (a fresh staging folder).

Modes: secrets are 0600 (folders 0700) whatever the umask; public files get ``0o666`` less
the umask (:func:`public_mode`), like any file a program creates.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path
from types import TracebackType
from typing import BinaryIO

from fleet.errors import InvalidInput

PRIVATE_MODE = 0o600
_CREATE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


def current_umask() -> int:
    """The process's umask (read by setting it and putting it back)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def public_mode() -> int:
    """The mode of a public file fleet creates: ``0o666`` less the umask."""
    return 0o666 & ~current_umask()


def folder_mode() -> int:
    """The mode of a public folder fleet creates: ``0o777`` less the umask."""
    return 0o777 & ~current_umask()


def _folder_of(path: Path) -> Path:
    return path.parent if str(path.parent) else Path(".")


def write_new_file(path: Path | str, data: bytes, *, private: bool = False) -> None:
    """Create ``path``, which must not exist (nor be a symlink), holding ``data``: 0600 from
    the start when ``private``, else ``0o666`` less the umask. ``OSError`` on failure."""
    fd = os.open(path, _CREATE_FLAGS, PRIVATE_MODE if private else 0o666)
    try:
        if private:
            os.fchmod(fd, PRIVATE_MODE)  # whatever the umask left
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
    finally:
        os.close(fd)


class PendingFile:
    """A file being written under a temporary name beside ``path``; :meth:`commit` puts it in
    place, :meth:`discard` (or leaving the ``with`` block without committing) removes it.

    Created at once, so an unwritable target is found before any other work. ``temp_name``
    overrides the random temporary name (still created exclusively, never followed).
    """

    def __init__(self, path: Path, *, private: bool = False, temp_name: str | None = None) -> None:
        self.path = path
        self.private = private
        if path.is_dir():
            raise InvalidInput(f"cannot write {path}: it is a directory")
        name = temp_name or f".{path.name}.{secrets.token_hex(6)}.tmp"
        self.temp = _folder_of(path) / name
        try:
            fd = os.open(self.temp, _CREATE_FLAGS, PRIVATE_MODE)
        except OSError as exc:
            raise InvalidInput(f"cannot write {path}: {exc.strerror}") from exc
        self.handle: BinaryIO = os.fdopen(fd, "wb")
        self._done = False

    def write(self, data: bytes) -> None:
        """Append ``data``."""
        try:
            self.handle.write(data)
        except OSError as exc:
            self.discard()
            raise InvalidInput(f"cannot write {self.path}: {exc.strerror}") from exc

    def commit(self) -> None:
        """Flush, fsync, set the mode and rename over ``path``."""
        if self._done:
            return
        try:
            self.handle.flush()
            os.fsync(self.handle.fileno())
            os.fchmod(self.handle.fileno(), PRIVATE_MODE if self.private else public_mode())
            self.handle.close()
            os.replace(self.temp, self.path)
        except OSError as exc:
            self.discard()
            raise InvalidInput(f"cannot write {self.path}: {exc.strerror or exc}") from exc
        self._done = True

    def discard(self) -> None:
        """Remove the temporary file (idempotent; nothing once committed)."""
        if self._done:
            return
        self._done = True
        self.handle.close()
        self.temp.unlink(missing_ok=True)

    def __enter__(self) -> PendingFile:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.discard()


def atomic_write(path: Path, data: bytes, *, private: bool = False) -> None:
    """Write ``data`` to ``path`` all or nothing (see :class:`PendingFile`)."""
    with PendingFile(path, private=private) as pending:
        pending.write(data)
        pending.commit()
