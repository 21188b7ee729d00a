"""Detached CMS signatures for exports, made with a dedicated export-signing certificate.

The issuing CA issues the export-signing certificate on first use (an audit event
``ca.export_signer`` records it). It is an end-entity certificate with keyUsage
digitalSignature only, so it can never sign devices or CRLs. Files, beside the CA's::

    <home>/ca/export-signing.key.pem   (0600, PKCS#8, encrypted with the CA passphrase)
    <home>/ca/export-signing.cert.pem

Signatures are PEM CMS SignedData (detached, binary content, signer and issuing CA
certificates included), so an auditor holding only the root certificate runs::

    openssl cms -verify -binary -inform PEM -in FILE.p7s -content FILE \\
        -CAfile root.pem -purpose any -out /dev/null

Small content (manifests) is signed with cryptography's ``PKCS7SignatureBuilder``; export files
are digested in chunks and encoded in the same shape by :func:`_sign_file`, so signing a
multi-gigabyte export needs no more memory than a small one.

:func:`verify_detached` checks the same things without OpenSSL: the content digest, the
signature over the signed attributes, and the chain signer -> issuing CA -> the given root.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import os
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import cast

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.serialization import pkcs7

from fleet import audit, ca
from fleet.db import write_session
from fleet.errors import AuthError, InvalidInput, RegistryError
from fleet.files import write_private_file
from fleet.profiles import Profile
from fleet.workspace import Passphrase, Workspace, require_passphrase

SIGNER_KEY_FILE = "export-signing.key.pem"
SIGNER_CERT_FILE = "export-signing.cert.pem"
SIGNER_VALIDITY = timedelta(days=3 * 365)
# Re-issue a signer this close to expiry, so a fresh signature stays verifiable for a while.
SIGNER_RENEW_BEFORE = timedelta(days=30)
SIGNER_PROFILE = Profile(
    name="export-signing",
    description="fleet export signing (digitalSignature only)",
    key_type="ec-p256",
    validity_days=SIGNER_VALIDITY.days,
    backdate_seconds=60,
    key_usage=("digital_signature",),
    extended_key_usage=(),
)


@dataclass(frozen=True)
class Signer:
    """The export-signing key with its certificate and the CA certificates above it."""

    key: ca.PrivateKey
    cert: x509.Certificate
    issuing: x509.Certificate
    root: x509.Certificate

    def summary(self) -> dict[str, str]:
        """Subject, serial and fingerprint, as recorded in manifests."""
        return {
            "subject": self.cert.subject.rfc4514_string(),
            "serial": ca.serial_hex(self.cert.serial_number),
            "fingerprint_sha256": ca.fingerprint_sha256(self.cert),
        }


def load_signer(ws: Workspace, passphrase: Passphrase | None = None) -> Signer:
    """The workspace's export signer, issued by the issuing CA (and audited) if missing,
    expired, expiring within 30 days, or issued by a previous issuing CA."""
    secret = require_passphrase(passphrase)
    folder = ca.ca_dir(ws.home)
    issuing, root = ca.load_ca_certificates(ws.home)
    now = datetime.now(UTC)
    key_path, cert_path = folder / SIGNER_KEY_FILE, folder / SIGNER_CERT_FILE
    if key_path.is_file() and cert_path.is_file():
        try:
            cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
            key_pem = key_path.read_bytes()
        except (OSError, ValueError) as exc:
            raise RegistryError(f"cannot read the export signer in {folder}: {exc}") from exc
        try:
            key = serialization.load_pem_private_key(key_pem, password=_encode(secret))
        except (ValueError, TypeError) as exc:
            raise AuthError("wrong CA passphrase (cannot decrypt the export-signing key)") from exc
        fresh = cert.not_valid_after_utc - SIGNER_RENEW_BEFORE > now
        if fresh and ca.verify_issued_by(cert, issuing):
            return Signer(cast(ca.PrivateKey, key), cert, issuing, root)
    return _issue_signer(ws, secret, now)


def _encode(secret: str | bytes) -> bytes:
    return secret.encode("utf-8") if isinstance(secret, str) else secret


def _issue_signer(ws: Workspace, secret: str | bytes, now: datetime) -> Signer:
    issuer = ca.load_issuer(ws.home, secret)
    org = issuer.cert.subject.get_attributes_for_oid(x509.oid.NameOID.ORGANIZATION_NAME)
    name = str(org[0].value) if org else "fleet"
    profile = dataclasses.replace(SIGNER_PROFILE, subject={"organization": name})
    key = ca.generate_key(profile.key_type)
    cert = ca.issue_device_certificate(
        issuer, f"{name} Export Signing"[:64], key.public_key(), profile, now=now
    )
    folder = ca.ca_dir(ws.home)
    key_path, cert_path = folder / SIGNER_KEY_FILE, folder / SIGNER_CERT_FILE
    key_tmp, cert_tmp = folder / f".{SIGNER_KEY_FILE}.tmp", folder / f".{SIGNER_CERT_FILE}.tmp"
    try:
        key_tmp.unlink(missing_ok=True)
        write_private_file(key_tmp, ca.private_key_pem(key, _encode(secret)))
        cert_tmp.write_bytes(ca.cert_pem(cert))
        with write_session(ws.open_registry()) as session:
            audit.append(
                session, "ca.export_signer", "export-signing", ca.cert_summary(cert), at=now
            )
            # Renamed inside the transaction: if the commit fails, the files are removed below
            # and the audit trail never mentions a signer that does not exist (or vice versa).
            os.replace(key_tmp, key_path)
            os.replace(cert_tmp, cert_path)
    except BaseException:
        for path in (key_tmp, cert_tmp):
            path.unlink(missing_ok=True)
        raise
    return Signer(key, cert, issuer.cert, issuer.root)


def sign_detached(signer: Signer, data: bytes | Path) -> bytes:
    """A detached CMS SignedData (PEM) over ``data`` or a file's content, carrying the
    signer and issuing CA certificates.

    Bytes go through cryptography's ``PKCS7SignatureBuilder``. That builder needs the whole
    content in memory, so files (exports of any size) are digested in chunks and the same
    structure is encoded by :func:`_sign_file`; both verify with ``openssl cms -verify``.
    """
    if isinstance(data, Path):
        return _sign_file(signer, data)
    digest = ca.signature_hash(signer.key)
    builder = (
        pkcs7.PKCS7SignatureBuilder()
        .set_data(data)
        .add_signer(signer.cert, signer.key, digest)
        .add_certificate(signer.issuing)
    )
    return builder.sign(
        serialization.Encoding.PEM,
        [pkcs7.PKCS7Options.DetachedSignature, pkcs7.PKCS7Options.Binary],
    )


_OID_DATA = "1.2.840.113549.1.7.1"
_OID_CONTENT_TYPE = "1.2.840.113549.1.9.3"
_ECDSA_WITH = {
    "sha256": "1.2.840.10045.4.3.2",
    "sha384": "1.2.840.10045.4.3.3",
    "sha512": "1.2.840.10045.4.3.4",
}
_DIGEST_OIDS = {
    "sha256": "2.16.840.1.101.3.4.2.1",
    "sha384": "2.16.840.1.101.3.4.2.2",
    "sha512": "2.16.840.1.101.3.4.2.3",
}


def _der(tag: int, body: bytes) -> bytes:
    return bytes([tag]) + _der_length(len(body)) + body


def _der_oid(dotted: str) -> bytes:
    arcs = [int(a) for a in dotted.split(".")]
    body = bytearray()
    for arc in [40 * arcs[0] + arcs[1], *arcs[2:]]:
        chunk = [arc & 0x7F]
        arc >>= 7
        while arc:
            chunk.append(0x80 | (arc & 0x7F))
            arc >>= 7
        body.extend(reversed(chunk))
    return _der(0x06, bytes(body))


def _sign_file(signer: Signer, path: Path) -> bytes:
    """RFC 5652 SignedData over a file's content, digested in 1 MiB chunks (flat memory),
    shaped like ``PKCS7SignatureBuilder``'s output: detached id-data content, signed
    attributes contentType, signingTime and messageDigest, ECDSA signature."""
    if not isinstance(signer.key, ec.EllipticCurvePrivateKey):
        # fleet generates EC signers; anything else takes the in-memory path
        return sign_detached(signer, path.read_bytes())
    algorithm = ca.signature_hash(signer.key)
    digest_algorithm = _der(0x30, _der_oid(_DIGEST_OIDS[algorithm.name]) + b"\x05\x00")
    signing_time = datetime.now(UTC).strftime("%y%m%d%H%M%SZ").encode("ascii")
    attributes = sorted(  # DER: a SET OF is sorted by the members' encodings
        [
            _der(0x30, _der_oid(_OID_CONTENT_TYPE) + _der(0x31, _der_oid(_OID_DATA))),
            _der(0x30, _der_oid(_OID_SIGNING_TIME) + _der(0x31, _der(0x17, signing_time))),
            _der(
                0x30,
                _der_oid(_OID_MESSAGE_DIGEST) + _der(0x31, _der(0x04, _digest(path, algorithm))),
            ),
        ]
    )
    signed_attributes = _der(0x31, b"".join(attributes))
    signature = signer.key.sign(signed_attributes, ec.ECDSA(algorithm))
    signer_info = _der(
        0x30,
        _der_integer(1)
        + _der(0x30, signer.cert.issuer.public_bytes() + _der_integer(signer.cert.serial_number))
        + digest_algorithm
        + b"\xa0"  # [0] IMPLICIT: the same SET, retagged
        + signed_attributes[1:]
        + _der(0x30, _der_oid(_ECDSA_WITH[algorithm.name]))
        + _der(0x04, signature),
    )
    certificates = b"".join(
        c.public_bytes(serialization.Encoding.DER) for c in (signer.cert, signer.issuing)
    )
    signed_data = _der(
        0x30,
        _der_integer(1)
        + _der(0x31, digest_algorithm)
        + _der(0x30, _der_oid(_OID_DATA))
        + _der(0xA0, certificates)
        + _der(0x31, signer_info),
    )
    content_info = _der(0x30, _der_oid(_OID_SIGNED_DATA) + _der(0xA0, signed_data))
    encoded = base64.encodebytes(content_info).decode("ascii").replace("\n", "")
    lines = [encoded[i : i + 64] for i in range(0, len(encoded), 64)]
    return ("-----BEGIN PKCS7-----\n" + "\n".join(lines) + "\n-----END PKCS7-----\n").encode()


# --- verification -----------------------------------------------------------------------
#
# cryptography can build CMS signatures but not check them, so a minimal DER reader walks the
# SignedData structure (RFC 5652 §5) that PKCS7SignatureBuilder writes.

_OID_SIGNED_DATA = "1.2.840.113549.1.7.2"
_OID_MESSAGE_DIGEST = "1.2.840.113549.1.9.4"
_OID_SIGNING_TIME = "1.2.840.113549.1.9.5"
_DIGESTS: dict[str, type[hashes.HashAlgorithm]] = {
    "2.16.840.1.101.3.4.2.1": hashes.SHA256,
    "2.16.840.1.101.3.4.2.2": hashes.SHA384,
    "2.16.840.1.101.3.4.2.3": hashes.SHA512,
}


class SignatureError(Exception):
    """A detached signature does not verify; ``check`` is ``signature`` or ``chain``."""

    def __init__(self, check: str, message: str) -> None:
        super().__init__(message)
        self.check = check


@dataclass(frozen=True)
class _Tlv:
    tag: int
    start: int  # offset of the tag byte
    body: int  # offset of the contents
    end: int  # offset after the contents


def _read_tlv(data: bytes, pos: int) -> _Tlv:
    if pos + 2 > len(data):
        raise ValueError("truncated DER")
    tag, length = data[pos], data[pos + 1]
    body = pos + 2
    if tag & 0x1F == 0x1F:
        raise ValueError("multi-byte DER tags are not used in CMS SignedData")
    if length & 0x80:
        count = length & 0x7F
        if count == 0 or count > 4:
            raise ValueError("unsupported DER length")
        length = int.from_bytes(data[body : body + count], "big")
        body += count
    end = body + length
    if end > len(data):
        raise ValueError("truncated DER")
    return _Tlv(tag, pos, body, end)


def _children(data: bytes, parent: _Tlv) -> list[_Tlv]:
    items, pos = [], parent.body
    while pos < parent.end:
        item = _read_tlv(data, pos)
        items.append(item)
        pos = item.end
    return items


def _oid(data: bytes, tlv: _Tlv) -> str:
    if tlv.tag != 0x06:
        raise ValueError("expected an OBJECT IDENTIFIER")
    raw = data[tlv.body : tlv.end]
    arcs, value = [], 0
    for byte in raw:
        value = (value << 7) | (byte & 0x7F)
        if not byte & 0x80:
            arcs.append(value)
            value = 0
    first = min(arcs[0] // 40, 2)
    return ".".join(str(a) for a in [first, arcs[0] - 40 * first, *arcs[1:]])


@dataclass(frozen=True)
class SignedInfo:
    """What a verified detached signature says: who signed, when, with which chain."""

    signer: x509.Certificate
    signing_time: datetime | None


def pem_to_der(pem: bytes) -> bytes:
    """The DER inside a ``-----BEGIN PKCS7-----`` (or CMS) PEM block."""
    lines = [
        line.strip()
        for line in pem.decode("ascii", errors="replace").splitlines()
        if line.strip() and not line.startswith("-----")
    ]
    return base64.b64decode("".join(lines), validate=True)


def verify_detached(
    signature_pem: bytes, content: bytes | Path, root: x509.Certificate
) -> SignedInfo:
    """Check a detached CMS signature over ``content`` (bytes, or a file read in chunks) and
    its chain up to ``root``.

    Raises :class:`SignatureError` naming the failed check (``signature`` or ``chain``).
    """
    try:
        der = pem_to_der(signature_pem)
        top = _read_tlv(der, 0)
        content_type, wrapped = _children(der, top)[:2]
        if _oid(der, content_type) != _OID_SIGNED_DATA:
            raise ValueError("not a CMS SignedData")
        signed_data = _children(der, _children(der, wrapped)[0])
        certs = [
            x509.load_der_x509_certificate(der[c.start : c.end])
            for item in signed_data
            if item.tag == 0xA0
            for c in _children(der, item)
        ]
        signer_infos = _children(der, signed_data[-1])
        if len(signer_infos) != 1:
            raise ValueError(f"expected one signer, found {len(signer_infos)}")
        parts = _children(der, signer_infos[0])
        sid, digest_alg, attrs, _sig_alg, signature = parts[1:6]
        if attrs.tag != 0xA0:
            raise ValueError("signature has no signed attributes")
        issuer_der, serial_tlv = (der[t.start : t.end] for t in _children(der, sid)[:2])
        digest_oid = _oid(der, _children(der, digest_alg)[0])
        algorithm = _DIGESTS[digest_oid]()
        message_digest, signing_time = b"", None
        for attribute in _children(der, attrs):
            attr_type, values = _children(der, attribute)
            value = _children(der, values)[0]
            if _oid(der, attr_type) == _OID_MESSAGE_DIGEST:
                message_digest = der[value.body : value.end]
            elif _oid(der, attr_type) == _OID_SIGNING_TIME:
                signing_time = _parse_time(der[value.body : value.end], value.tag)
        # The signature covers the attributes DER-encoded as a SET (tag 0x31), not [0].
        signed_attrs = b"\x31" + der[attrs.start + 1 : attrs.end]
        signature_bytes = der[signature.body : signature.end]
    except (ValueError, IndexError, KeyError) as exc:
        raise SignatureError("signature", f"unreadable CMS signature ({exc})") from exc

    signer = next(
        (
            c
            for c in certs
            if c.issuer.public_bytes() == issuer_der and _der_integer(c.serial_number) == serial_tlv
        ),
        None,
    )
    if signer is None:
        raise SignatureError("signature", "the signer's certificate is not in the signature")
    if _digest(content, algorithm) != message_digest:
        raise SignatureError("signature", "content does not match the signed digest")
    try:
        public_key = signer.public_key()
        if isinstance(public_key, ec.EllipticCurvePublicKey):
            public_key.verify(signature_bytes, signed_attrs, ec.ECDSA(algorithm))
        elif isinstance(public_key, rsa.RSAPublicKey):
            public_key.verify(signature_bytes, signed_attrs, padding.PKCS1v15(), algorithm)
        else:
            raise SignatureError("signature", "unsupported signer key type")
    except (InvalidSignature, UnsupportedAlgorithm) as exc:
        raise SignatureError("signature", "the signature does not verify") from exc
    _check_chain(signer, certs, root, signing_time or datetime.now(UTC))
    return SignedInfo(signer, signing_time)


def _digest(content: bytes | Path, algorithm: hashes.HashAlgorithm) -> bytes:
    hasher = hashes.Hash(algorithm)
    if isinstance(content, bytes):
        hasher.update(content)
    else:
        with content.open("rb") as handle:
            while chunk := handle.read(1 << 20):
                hasher.update(chunk)
    return hasher.finalize()


def _der_integer(value: int) -> bytes:
    body = value.to_bytes(value.bit_length() // 8 + 1, "big", signed=True)
    return b"\x02" + _der_length(len(body)) + body


def _der_length(length: int) -> bytes:
    if length < 0x80:
        return bytes([length])
    raw = length.to_bytes((length.bit_length() + 7) // 8, "big")
    return bytes([0x80 | len(raw)]) + raw


def _parse_time(raw: bytes, tag: int) -> datetime:
    text = raw.decode("ascii")
    fmt = "%y%m%d%H%M%SZ" if tag == 0x17 else "%Y%m%d%H%M%SZ"
    return datetime.strptime(text, fmt).replace(tzinfo=UTC)


def _check_chain(
    signer: x509.Certificate,
    bag: list[x509.Certificate],
    root: x509.Certificate,
    at: datetime,
) -> None:
    """signer -> (an issuing CA from the bag) -> root, each valid at ``at``."""
    usage = _key_usage(signer)
    if usage is None or not usage.digital_signature or _is_ca(signer):
        raise SignatureError("chain", "the signer certificate is not a signing end entity")
    path = [signer]
    current = signer
    for _ in range(4):
        if ca.verify_issued_by(current, root):
            path.append(root)
            break
        parent = next(
            (c for c in bag if c is not current and _is_ca(c) and ca.verify_issued_by(current, c)),
            None,
        )
        if parent is None:
            raise SignatureError(
                "chain",
                f"{current.subject.rfc4514_string()} does not chain to the root "
                f"{root.subject.rfc4514_string()} (sha256 {ca.fingerprint_sha256(root)[:16]}…)",
            )
        path.append(parent)
        current = parent
    else:
        raise SignatureError("chain", "certificate chain too long")
    for cert in path:
        if not cert.not_valid_before_utc <= at <= cert.not_valid_after_utc:
            raise SignatureError(
                "chain",
                f"{cert.subject.rfc4514_string()} was not valid at signing time {at:%Y-%m-%d}",
            )


def _key_usage(cert: x509.Certificate) -> x509.KeyUsage | None:
    try:
        return cert.extensions.get_extension_for_class(x509.KeyUsage).value
    except x509.ExtensionNotFound:
        return None


def _is_ca(cert: x509.Certificate) -> bool:
    try:
        return cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    except x509.ExtensionNotFound:
        return False


def load_root(path: Path) -> x509.Certificate:
    """A trusted root certificate (PEM or DER) given by an auditor."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise InvalidInput(f"cannot read {path}: {exc.strerror}") from exc
    try:
        if b"-----BEGIN" in data:
            return x509.load_pem_x509_certificate(data)
        return x509.load_der_x509_certificate(data)
    except ValueError as exc:
        raise InvalidInput(f"{path} is not a certificate") from exc


def sha256_file(path: Path) -> tuple[str, int]:
    """SHA-256 hex and size of a file, read in chunks."""
    hasher = hashlib.sha256()
    size = 0
    with path.open("rb") as handle:
        while chunk := handle.read(1 << 20):
            hasher.update(chunk)
            size += len(chunk)
    return hasher.hexdigest(), size
