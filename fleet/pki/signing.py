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

Content is digested in chunks (signing a multi-gigabyte export takes no more memory than a
small one) and asn1crypto encodes and parses the CMS structures; cryptography does the
signing, verification and certificate work.

:func:`verify_detached` checks the same things without OpenSSL: the content digest, the
signature over the signed attributes, and the chain signer -> issuing CA -> the given root.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import cast

from asn1crypto import algos, cms
from asn1crypto import pem as asn1_pem
from asn1crypto import x509 as asn1_x509
from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa

from fleet.errors import AuthError, InvalidInput, RegistryError
from fleet.files import write_private_file
from fleet.pki import ca
from fleet.pki.profiles import Profile
from fleet.registry import audit
from fleet.registry.db import write_session
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

    The content is digested in 1 MiB chunks, so signing a multi-gigabyte export needs no more
    memory than a small one (cryptography's ``PKCS7SignatureBuilder`` wants the whole content
    in memory); asn1crypto encodes the RFC 5652 structure: detached id-data, signed attributes
    contentType, signingTime and messageDigest, as ``openssl cms -sign -binary`` makes them.
    """
    algorithm = ca.signature_hash(signer.key)
    signed_attrs = cms.CMSAttributes(
        [
            cms.CMSAttribute({"type": "content_type", "values": ["data"]}),
            cms.CMSAttribute(
                {"type": "signing_time", "values": [cms.Time({"utc_time": datetime.now(UTC)})]}
            ),
            cms.CMSAttribute({"type": "message_digest", "values": [_digest(data, algorithm)]}),
        ]
    )
    to_sign = signed_attrs.dump()
    if isinstance(signer.key, ec.EllipticCurvePrivateKey):
        signature = signer.key.sign(to_sign, ec.ECDSA(algorithm))
        signature_algorithm = f"{algorithm.name}_ecdsa"
    else:
        signature = signer.key.sign(to_sign, padding.PKCS1v15(), algorithm)
        signature_algorithm = f"{algorithm.name}_rsa"
    signer_cert = asn1_x509.Certificate.load(signer.cert.public_bytes(serialization.Encoding.DER))
    digest_algorithm = algos.DigestAlgorithm({"algorithm": algorithm.name})
    signer_info = cms.SignerInfo(
        {
            "version": "v1",
            "sid": cms.SignerIdentifier(
                {
                    "issuer_and_serial_number": cms.IssuerAndSerialNumber(
                        {"issuer": signer_cert.issuer, "serial_number": signer_cert.serial_number}
                    )
                }
            ),
            "digest_algorithm": digest_algorithm,
            "signed_attrs": signed_attrs,
            "signature_algorithm": algos.SignedDigestAlgorithm({"algorithm": signature_algorithm}),
            "signature": signature,
        }
    )
    issuing_cert = asn1_x509.Certificate.load(
        signer.issuing.public_bytes(serialization.Encoding.DER)
    )
    signed_data = cms.SignedData(
        {
            "version": "v1",
            "digest_algorithms": [digest_algorithm],
            "encap_content_info": {"content_type": "data"},
            "certificates": [signer_cert, issuing_cert],
            "signer_infos": [signer_info],
        }
    )
    content_info = cms.ContentInfo({"content_type": "signed_data", "content": signed_data})
    armored: bytes = asn1_pem.armor("PKCS7", content_info.dump())
    return armored


# --- verification -----------------------------------------------------------------------

_DIGESTS: dict[str, type[hashes.SHA256 | hashes.SHA384 | hashes.SHA512]] = {
    "sha256": hashes.SHA256,
    "sha384": hashes.SHA384,
    "sha512": hashes.SHA512,
}


class SignatureError(Exception):
    """A detached signature does not verify; ``check`` is ``signature`` or ``chain``."""

    def __init__(self, check: str, message: str) -> None:
        super().__init__(message)
        self.check = check


@dataclass(frozen=True)
class SignedInfo:
    """What a verified detached signature says: who signed, when, with which chain."""

    signer: x509.Certificate
    signing_time: datetime | None


def verify_detached(
    signature_pem: bytes, content: bytes | Path, root: x509.Certificate
) -> SignedInfo:
    """Check a detached CMS signature over ``content`` (bytes, or a file read in chunks) and
    its chain up to ``root``.

    Raises :class:`SignatureError` naming the failed check (``signature`` or ``chain``).
    """
    try:
        _, _, der = asn1_pem.unarmor(signature_pem)
        info = cms.ContentInfo.load(der)
        if info["content_type"].native != "signed_data":
            raise ValueError("not a CMS SignedData")
        signed_data = info["content"]
        certs = [
            x509.load_der_x509_certificate(choice.chosen.dump())
            for choice in signed_data["certificates"]
            if choice.name == "certificate"
        ]
        signer_infos = signed_data["signer_infos"]
        if len(signer_infos) != 1:
            raise ValueError(f"expected one signer, found {len(signer_infos)}")
        signer_info = signer_infos[0]
        sid = signer_info["sid"]
        if sid.name != "issuer_and_serial_number":
            raise ValueError("signer identified by key id, not issuer and serial")
        issuer_der = sid.chosen["issuer"].dump()
        serial = sid.chosen["serial_number"].native
        algorithm = _DIGESTS[signer_info["digest_algorithm"]["algorithm"].native]()
        signed_attrs = signer_info["signed_attrs"]
        if not len(signed_attrs):
            raise ValueError("signature has no signed attributes")
        message_digest, signing_time = b"", None
        for attribute in signed_attrs:
            if attribute["type"].native == "message_digest":
                message_digest = attribute["values"][0].native
            elif attribute["type"].native == "signing_time":
                signing_time = attribute["values"][0].native
        # The signature covers the attributes as received, re-tagged from [0] to SET.
        to_verify = signed_attrs.untag().dump()
        signature_bytes = signer_info["signature"].native
    except (ValueError, TypeError, KeyError, IndexError) as exc:
        raise SignatureError("signature", f"unreadable CMS signature ({exc})") from exc

    signer = next(
        (c for c in certs if c.issuer.public_bytes() == issuer_der and c.serial_number == serial),
        None,
    )
    if signer is None:
        raise SignatureError("signature", "the signer's certificate is not in the signature")
    if _digest(content, algorithm) != message_digest:
        raise SignatureError("signature", "content does not match the signed digest")
    try:
        public_key = signer.public_key()
        if isinstance(public_key, ec.EllipticCurvePublicKey):
            public_key.verify(signature_bytes, to_verify, ec.ECDSA(algorithm))
        elif isinstance(public_key, rsa.RSAPublicKey):
            public_key.verify(signature_bytes, to_verify, padding.PKCS1v15(), algorithm)
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
