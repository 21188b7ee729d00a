"""Certificate signing requests from devices that keep their own keys: read and check them.

Only a CSR's public key is used; its requested extensions are ignored in favour of the
profile.
"""

from __future__ import annotations

from pathlib import Path

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.x509.oid import NameOID

from fleet.errors import InvalidInput
from fleet.pki.keys import key_type_of

CSR_MAX_BYTES = 64 * 1024  # a CSR is a few KiB; this bounds what `--csr /dev/urandom` reads


def read_csr_bytes(path: Path) -> bytes:
    """A CSR file's bytes, at most :data:`CSR_MAX_BYTES` (:class:`InvalidInput` otherwise,
    or when it cannot be read)."""
    try:
        with path.open("rb") as handle:
            data = handle.read(CSR_MAX_BYTES + 1)
    except OSError as exc:
        raise InvalidInput(f"cannot read CSR {path}: {exc.strerror}") from exc
    if len(data) > CSR_MAX_BYTES:
        raise InvalidInput(f"CSR {path} is larger than {CSR_MAX_BYTES // 1024} KiB")
    return data


def read_csr_file(path: Path, device_id: str) -> x509.CertificateSigningRequest:
    """Read and check a CSR file for ``device_id`` (see :func:`load_csr`)."""
    return load_csr(read_csr_bytes(path), device_id, source=f"CSR {path}")


def load_csr(data: bytes, device_id: str, *, source: str = "CSR") -> x509.CertificateSigningRequest:
    """Parse and check a device's CSR (PEM or DER).

    Refused: unparseable data, a signature that does not verify, keys fleet does not accept
    (RSA under 2048 bits, curves other than P-256/384/521, other algorithms), and a subject
    CN that differs from ``device_id``.
    """
    try:
        if b"-----BEGIN" in data:
            csr = x509.load_pem_x509_csr(data)
        else:
            csr = x509.load_der_x509_csr(data)
    except (ValueError, x509.InvalidVersion) as exc:
        raise InvalidInput(f"{source} is not a valid certificate signing request") from exc
    return check_csr(csr, device_id, source=source)


def check_csr(
    csr: x509.CertificateSigningRequest, device_id: str, *, source: str = "CSR"
) -> x509.CertificateSigningRequest:
    """Check a parsed CSR's key, signature and CN (see :func:`load_csr`)."""
    try:
        public_key = csr.public_key()
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise InvalidInput(f"{source}: unsupported public key ({exc})") from exc
    try:
        key_type_of(public_key)
    except InvalidInput as exc:
        raise InvalidInput(f"{source}: {exc}") from exc
    try:
        signature_ok = csr.is_signature_valid
    except UnsupportedAlgorithm as exc:
        raise InvalidInput(f"{source}: unsupported signature algorithm") from exc
    if not signature_ok:
        raise InvalidInput(f"{source}: signature does not verify (corrupt or tampered CSR)")
    try:
        common_names = csr.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    except (ValueError, KeyError, TypeError) as exc:
        # cryptography parses the subject on first use; a malformed one (a bad encoding, an
        # unknown string type, a misplaced BIT STRING) raises any of these.
        raise InvalidInput(f"{source}: malformed subject name") from exc
    for attribute in common_names:
        if attribute.value != device_id:
            raise InvalidInput(
                f"{source}: subject CN {attribute.value!r} does not match device ID {device_id!r}"
            )
    return csr


def request_for(
    csr: Path | x509.CertificateSigningRequest | None, device_id: str
) -> x509.CertificateSigningRequest | None:
    """A CSR given to ``device add`` or ``cert renew`` (a file or parsed), checked for
    ``device_id``; ``None`` when the device gets a generated key."""
    if isinstance(csr, Path):
        return read_csr_file(csr, device_id)
    return None if csr is None else check_csr(csr, device_id)
