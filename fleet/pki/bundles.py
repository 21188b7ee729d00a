"""Device identity bundles on disk: ``DIR/ID/{key,cert,chain}.pem``, written all-or-nothing.

Every certificate is recorded before it reaches the disk. An issuing command:

1. stages the bundle in a hidden folder ``DIR/.ID.tmp-PID-XXXXXX``: the private key (0600)
   and ``serial.pending`` (the serial of the certificate about to be recorded) -- no
   certificate yet;
2. commits the registry row and audit event;
3. :meth:`StagedBundle.complete`: writes ``cert.pem`` and ``chain.pem`` into the staging
   folder and drops the marker;
   (with the PKCS#12 format, :class:`BundleFormat`: ``bundle.p12``, 0600, in place of
   ``key.pem``);
4. :meth:`StagedBundle.publish`: renames it to ``DIR/ID`` (a bundle already there, the one a
   renewal replaces, is first set aside as ``DIR/.ID.old-PID-XXXXXX`` and removed once the
   new one is in place).

A process killed anywhere leaves at most: a staging folder whose serial the registry does
not know (it holds no certificate, only a key nothing vouches for: removed), a staging
folder whose serial it knows (completed from the registry's copy of the certificate and
published), or a set-aside bundle (removed once ``DIR/ID`` holds the new bundle, put back
otherwise). :func:`recover` does that; the issuing commands run it for their device on
their next run, ``fleet doctor --fix`` for a whole folder. Folders of live processes are
left alone (their PID is in the name).
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import re
import secrets
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from sqlalchemy.engine import Engine

from fleet import faults
from fleet.errors import Conflict, InvalidInput
from fleet.files import folder_mode, write_new_file
from fleet.pki import ca
from fleet.pki.keys import cert_pem, serial_hex
from fleet.registry.db import read_session
from fleet.registry.models import Certificate

KEY_FILE, CERT_FILE, CHAIN_FILE = "key.pem", "cert.pem", "chain.pem"
PENDING_FILE = "serial.pending"
P12_FILE = "bundle.p12"
BUNDLE_FORMATS = ("pem", "p12")
P12_KDF_ROUNDS = 100_000
STAGING_RE = re.compile(r"^\.(?P<name>.+)\.tmp-(?P<pid>\d+)-[0-9a-f]+(?:-old)?$")
ASIDE_RE = re.compile(r"^\.(?P<name>.+)\.old-(?:(?P<pid>\d+)-)?[0-9A-Za-z_]+$")

# What the registry holds for a serial: the certificate's PEM, or None if unknown.
Lookup = Callable[[str], str | None]


def staging_name(device_id: str, token: str) -> str:
    """The hidden name a bundle is written under until its certificate is recorded."""
    return f".{device_id}.tmp-{token}"


def process_token() -> str:
    """What marks this process's staging names: its PID (so a later run can tell whether it
    is gone) and a few random bytes."""
    return f"{os.getpid()}-{secrets.token_hex(3)}"


P12Password = str | bytes | Callable[[], str]
"""A PKCS#12 password, or a function asking for it (called once the request is valid)."""


@dataclass(frozen=True)
class BundleFormat:
    """How a bundle holds the identity: ``pem`` (``key.pem``, ``cert.pem``, ``chain.pem``) or
    ``p12`` (``bundle.p12``: key, certificate and chain under ``password``, AES-256-CBC with
    PBKDF2-SHA-256, and ``cert.pem`` and ``chain.pem`` beside it; no ``key.pem``).

    The password is never stored, printed or logged (it is left out of ``repr``).
    """

    kind: str = "pem"
    password: P12Password | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if self.kind not in BUNDLE_FORMATS:
            raise InvalidInput(f"bundle format must be one of {', '.join(BUNDLE_FORMATS)}")
        if self.kind == "p12" and self.password is None:
            raise InvalidInput("the p12 bundle format needs a password")

    def ready(self) -> BundleFormat:
        """This format with its password asked for (if it is a prompt) and checked."""
        if self.kind != "p12":
            return self
        value = self.password() if callable(self.password) else self.password
        data = value.encode("utf-8") if isinstance(value, str) else value
        if not data:
            raise InvalidInput("the p12 password must not be empty")
        return BundleFormat("p12", data)

    def password_bytes(self) -> bytes | None:
        """The password of a :meth:`ready` p12 format; ``None`` for PEM."""
        if self.kind != "p12":
            return None
        ready = self.ready()
        assert isinstance(ready.password, bytes)
        return ready.password


PEM = BundleFormat()


def pkcs12_bundle(
    name: str, key_pem: bytes | None, cert_pem: bytes, chain_pem: bytes, password: bytes
) -> bytes:
    """A PKCS#12 file: the key (if any), the certificate and the chain, encrypted with
    AES-256-CBC under a PBKDF2-SHA-256 key from ``password``, MAC'd with HMAC-SHA-256."""
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.serialization import pkcs12

    key = None if key_pem is None else serialization.load_pem_private_key(key_pem, None)
    encryption = (
        serialization.PrivateFormat.PKCS12.encryption_builder()
        .kdf_rounds(P12_KDF_ROUNDS)
        .key_cert_algorithm(pkcs12.PBES.PBESv2SHA256AndAES256CBC)
        .hmac_hash(hashes.SHA256())
        .build(password)
    )
    return pkcs12.serialize_key_and_certificates(
        name.encode("utf-8"),
        key,  # type: ignore[arg-type]  # a key type PKCS#12 takes: what fleet generates
        x509.load_pem_x509_certificate(cert_pem),
        x509.load_pem_x509_certificates(chain_pem),
        encryption,
    )


@dataclass
class StagedBundle:
    """A bundle staged in ``staging`` (key and pending serial), waiting to become ``final``."""

    staging: Path
    final: Path
    created_parent: bool

    def complete(
        self, cert_pem: bytes, chain_pem: bytes, bundle_format: BundleFormat = PEM
    ) -> None:
        """The certificate is recorded: write it and the chain (and, for ``p12``, the
        PKCS#12 file in place of the key), drop the pending marker."""
        # The marker goes last: until then a re-run rewrites both files (a kill mid-write).
        for name, data in ((CERT_FILE, cert_pem), (CHAIN_FILE, chain_pem)):
            flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW
            fd = os.open(self.staging / name, flags, 0o666)
            try:
                os.write(fd, data)
            finally:
                os.close(fd)
        password = bundle_format.password_bytes()
        if password is not None:
            self._write_p12(cert_pem, chain_pem, password)
        (self.staging / PENDING_FILE).unlink(missing_ok=True)
        faults.hit("after-complete")

    def _write_p12(self, cert_pem: bytes, chain_pem: bytes, password: bytes) -> None:
        """``bundle.p12`` (0600) from the staged key, then the PEM key goes. A run killed
        before this is published by recovery as PEM (the password is not kept anywhere)."""
        key_path = self.staging / KEY_FILE
        if not key_path.exists() and (self.staging / P12_FILE).exists():
            return  # written (from the key) before a kill: keep it
        key_pem = key_path.read_bytes() if key_path.exists() else None
        data = pkcs12_bundle(self.final.name, key_pem, cert_pem, chain_pem, password)
        (self.staging / P12_FILE).unlink(missing_ok=True)
        write_new_file(self.staging / P12_FILE, data, private=True)
        key_path.unlink(missing_ok=True)
        faults.hit("after-p12")

    def publish(self, *, replace: bool = False) -> None:
        """Rename into place; with ``replace`` a bundle already there is set aside, then
        removed (without, it is a :class:`Conflict` and the staged bundle stays for a re-run)."""
        aside: Path | None = None
        if os.path.lexists(self.final):
            if not replace:
                raise Conflict(
                    f"{self.final} appeared meanwhile; the certificate is recorded and its "
                    f"bundle waits in {self.staging}: move {self.final} away and run again"
                )
            aside = self.final.parent / f".{self.final.name}.old-{process_token()}"
            os.rename(self.final, aside)
            faults.hit("after-set-aside")
        os.rename(self.staging, self.final)
        faults.hit("after-publish")
        if aside is not None:
            _remove(aside)

    def discard(self) -> None:
        """Nothing was recorded: remove the staging folder (and the folder it made)."""
        shutil.rmtree(self.staging, ignore_errors=True)
        if self.created_parent:
            with contextlib.suppress(OSError):  # not empty: something else lives there
                self.final.parent.rmdir()


def stage_bundle(
    out_dir: Path, device_id: str, *, key_pem: bytes | None, serial: str
) -> StagedBundle:
    """Stage ``device_id``'s new key (if generated) and pending serial in ``out_dir``
    (created if missing); see the module's docstring for the steps that follow."""
    created_parent = not out_dir.exists()
    staging = out_dir / staging_name(device_id, process_token())
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        staging.mkdir(0o755)
    except OSError as exc:
        raise InvalidInput(f"cannot write to {out_dir}: {exc.strerror}") from exc
    try:
        os.chmod(staging, folder_mode())
        write_staging(str(staging), key_pem, serial)
    except OSError as exc:
        shutil.rmtree(staging, ignore_errors=True)
        raise InvalidInput(f"cannot write the bundle in {out_dir}: {exc.strerror}") from exc
    staged = StagedBundle(staging, out_dir / device_id, created_parent)
    faults.hit("after-stage")
    return staged


def write_staging(folder: str, key_pem: bytes | None, serial: str) -> None:
    """Write a key (0600, if any) and the pending serial into an existing staging folder.

    Plain ``os`` calls: provisioning workers stage thousands of bundles a second.
    """
    for name, data, mode in ((KEY_FILE, key_pem, 0o600), (PENDING_FILE, serial.encode(), 0o644)):
        if data is None:
            continue
        fd = os.open(os.path.join(folder, name), os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
        try:
            os.write(fd, data)
        finally:
            os.close(fd)


# --- recovery ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Leftover:
    """Something an interrupted run left in an output folder, and what recovery does."""

    kind: str  # "unpublished", "unrecorded-staging", "set-aside"
    path: str
    device_id: str
    serial: str | None
    action: str  # "publish", "remove", "restore"; "blocked": OUT/ID is something else

    def to_dict(self) -> dict[str, str | None]:
        """The JSON shape (``fleet doctor --json``)."""
        return {
            "kind": self.kind,
            "path": self.path,
            "device_id": self.device_id,
            "serial": self.serial,
            "action": self.action,
        }


def find_leftovers(out_dir: Path, lookup: Lookup, device_id: str | None = None) -> list[Leftover]:
    """Staging and set-aside folders of processes that are gone (``device_id``'s only, if
    given), staging folders first, each with what :func:`recover` does with it."""
    staged: list[Leftover] = []
    aside: list[Leftover] = []
    try:
        entries = sorted(os.scandir(out_dir), key=lambda e: e.name)
    except OSError:  # no folder (yet), or not one fleet can read: nothing to recover
        return []
    for entry in entries:
        match = STAGING_RE.match(entry.name) or ASIDE_RE.match(entry.name)
        if match is None or (device_id is not None and match["name"] != device_id):
            continue
        if not entry.is_dir(follow_symlinks=False):
            continue
        if match["pid"] is not None and pid_alive(int(match["pid"])):
            continue
        if match.re is ASIDE_RE:
            action = "remove" if os.path.lexists(out_dir / match["name"]) else "restore"
            aside.append(Leftover("set-aside", entry.path, match["name"], None, action))
            continue
        serial = staged_serial(Path(entry.path))
        if serial is not None and lookup(serial) is not None:
            staged.append(Leftover("unpublished", entry.path, match["name"], serial, "publish"))
        else:
            kind = "unrecorded-staging"
            staged.append(Leftover(kind, entry.path, match["name"], serial, "remove"))
    return staged + aside


def recover(
    out_dir: Path,
    lookup: Lookup,
    chain_pem: bytes,
    device_id: str | None = None,
    bundle_format: BundleFormat = PEM,
) -> list[Leftover]:
    """Finish what interrupted runs left in ``out_dir`` (see the module's docstring); return
    what was found and done. Staged bundles are published in ``bundle_format`` (its password
    asked only if there is one to publish)."""
    done: list[Leftover] = []
    for item in find_leftovers(out_dir, lookup, device_id):
        path = Path(item.path)
        final = out_dir / item.device_id
        if item.kind == "set-aside":  # decided now: a staged bundle may have been published
            item = dataclasses.replace(
                item, action="remove" if os.path.lexists(final) else "restore"
            )
        done.append(item)
        if item.action == "publish":
            # Only a recorded bundle in the way is replaced (a renewal's previous one).
            if os.path.lexists(final) and not _recorded(final, lookup):
                done[-1] = dataclasses.replace(item, action="blocked")
                continue
            pem = lookup(item.serial or "")
            assert pem is not None
            staged = StagedBundle(path, final, created_parent=False)
            staged.complete(pem.encode("ascii"), chain_pem, bundle_format)
            staged.publish(replace=True)
        elif item.action == "restore":
            source = path / "bundle" if (path / "bundle").is_dir() else path  # older layout
            os.rename(source, final)
            _remove(path)
        else:
            _remove(path)
    return done


def registry_lookup(engine: Engine) -> Lookup:
    """A :data:`Lookup` reading the registry behind ``engine``."""

    def lookup(serial: str) -> str | None:
        with read_session(engine) as session:
            row = session.get(Certificate, serial)
            return None if row is None else row.pem

    return lookup


def recover_in(
    home: Path,
    engine: Engine,
    out_dir: Path,
    device_id: str | None = None,
    bundle_format: BundleFormat = PEM,
) -> list[Leftover]:
    """:func:`recover` against the workspace's registry and CA chain."""
    issuing, root = ca.load_ca_certificates(home)
    chain = cert_pem(issuing) + cert_pem(root)
    return recover(out_dir, registry_lookup(engine), chain, device_id, bundle_format)


def staged_serial(folder: Path) -> str | None:
    """The serial of a staged bundle's certificate: its pending marker, else its cert.pem."""
    with contextlib.suppress(OSError, ValueError):
        text = (folder / PENDING_FILE).read_text("ascii").strip()
        if text:
            return text.lower()
    with contextlib.suppress(OSError, ValueError):
        cert = x509.load_pem_x509_certificate((folder / CERT_FILE).read_bytes())
        return serial_hex(cert.serial_number)
    return None


def _recorded(folder: Path, lookup: Lookup) -> bool:
    serial = staged_serial(folder)
    return serial is not None and lookup(serial) is not None


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` still runs (this process counts as running)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _remove(path: Path | str) -> None:
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(OSError):
            os.unlink(path)
