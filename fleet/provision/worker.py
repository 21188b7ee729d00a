"""The process-pool side: workers hold the issuing CA in memory, sign, and stage bundles.

Everything that signs, and everything that turns a signed certificate into registry values,
is here, behind two functions: :func:`sign_row` (what a worker does per row) and
:func:`certificate_row` (what the parent makes of the result).
"""

from __future__ import annotations

import contextlib
import ctypes
import multiprocessing
import os
import signal
import sys
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from typing import Any, NamedTuple

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from fleet.errors import FleetError
from fleet.pki import ca
from fleet.pki.bundles import CERT_FILE, CHAIN_FILE, KEY_FILE
from fleet.pki.profiles import Profile
from fleet.provision.publish import staging_name
from fleet.statuses import CertStatus, KeyOrigin

_worker_issuer: ca.Issuer | None = None
_umask = 0o022


class TaskRow(NamedTuple):
    """One row of a worker task."""

    device_id: str
    profile: str  # a key of the task's profiles
    csr: bytes | None  # the CSR file's content; None: generate a key
    csr_label: str | None  # the CSR file's path, for messages


@dataclass(frozen=True, slots=True)
class SignedCertificate:
    """A certificate a worker signed (its bundle staged): what the registry records of it."""

    pem: str
    serial: str
    fingerprint_sha256: str
    subject: str
    not_before: datetime
    not_after: datetime
    key_type: str
    key_origin: KeyOrigin

    def __reduce__(self) -> tuple[type[SignedCertificate], tuple[Any, ...]]:
        # Every result crosses from a worker to the parent: a constructor call unpickles
        # about 3x faster than the slotted dataclass's default state protocol.
        return (type(self), tuple(getattr(self, name) for name in self.__slots__))


def start_pool(issuer: ca.Issuer, workers: int) -> ProcessPoolExecutor:
    """A pool of ``workers`` processes, each holding ``issuer`` in memory (started lazily)."""
    key_der = issuer.key.private_bytes(
        serialization.Encoding.DER,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    # fork: workers start without re-importing fleet and get the key through memory
    # (spawn would re-run ``python -m fleet``'s entry point and pickle the key instead).
    methods = multiprocessing.get_all_start_methods()
    context = multiprocessing.get_context("fork" if "fork" in methods else "spawn")
    return ProcessPoolExecutor(
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


def sign_chunk(
    rows: list[TaskRow],
    profiles: dict[str, Profile],
    now: datetime,
    out_dir: str,
    token: str,
) -> list[SignedCertificate | str]:
    """Worker task: make identities for ``rows`` and stage their bundles in ``out_dir``
    (under :func:`~fleet.provision.publish.staging_name`). A row that fails is its error
    message instead."""
    issuer = _worker_issuer
    assert issuer is not None, "worker not initialised"
    results: list[SignedCertificate | str] = []
    for task in rows:
        profile = profiles[task.profile]
        try:
            signed, key_pem = sign_row(issuer, task, profile, now)
            folder = os.path.join(out_dir, staging_name(task.device_id, token))
            _write_bundle(folder, key_pem, signed.pem.encode("ascii"), issuer.chain_pem)
        except FleetError as exc:
            results.append(str(exc))
            continue
        except OSError as exc:
            results.append(f"cannot write the bundle in {out_dir}: {exc.strerror}")
            continue
        results.append(signed)
    return results


def sign_row(
    issuer: ca.Issuer, task: TaskRow, profile: Profile, now: datetime
) -> tuple[SignedCertificate, bytes | None]:
    """What a worker does per row: take the CSR's public key or generate a key pair, and
    sign the certificate. Returns it with the private key's PEM (``None`` for a CSR)."""
    key_pem: bytes | None
    if task.csr is not None:
        request = ca.load_csr(task.csr, task.device_id, source=f"CSR {task.csr_label}")
        public_key = request.public_key()
        key_type, origin, key_pem = ca.key_type_of(public_key), KeyOrigin.CSR, None
    else:
        private_key = ca.generate_key(profile.key_type)
        public_key = private_key.public_key()
        key_type, origin = profile.key_type, KeyOrigin.GENERATED
        key_pem = ca.private_key_pem(private_key)
    cert = ca.issue_device_certificate(issuer, task.device_id, public_key, profile, now=now)
    signed = SignedCertificate(
        pem=ca.cert_pem(cert).decode("ascii"),
        serial=ca.serial_hex(cert.serial_number),
        fingerprint_sha256=ca.fingerprint_sha256(cert),
        subject=cert.subject.rfc4514_string(),
        not_before=cert.not_valid_before_utc,
        not_after=cert.not_valid_after_utc,
        key_type=key_type,
        key_origin=origin,
    )
    return signed, key_pem


def certificate_row(
    signed: SignedCertificate, device_id: str, profile: str, now: datetime
) -> dict[str, Any]:
    """What the parent makes of a result: the certificate's registry row (every column)."""
    return {
        "serial": signed.serial,
        "device_id": device_id,
        "fingerprint_sha256": signed.fingerprint_sha256,
        "subject": signed.subject,
        "not_before": signed.not_before,
        "not_after": signed.not_after,
        "status": CertStatus.ACTIVE,
        "revoked_at": None,
        "revocation_reason": None,
        "profile": profile,
        "key_type": signed.key_type,
        "key_origin": signed.key_origin,
        "issued_at": now,
        "pem": signed.pem,
    }


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
