"""fleet's certificate authority: a root CA, an issuing CA it signs, and what they issue.

Files under ``<home>/ca/`` (directory 0700; keys 0600, PKCS#8, encrypted with the CA
passphrase)::

    root.key.pem  root.cert.pem  issuing.key.pem  issuing.cert.pem

Only the issuing CA signs device certificates and CRLs; the root key is needed again only to
rotate the issuing CA.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import cast

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.types import (
    CertificatePublicKeyTypes,
)
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from fleet.errors import AuthError, Conflict, InvalidInput, RegistryError
from fleet.files import write_private_file
from fleet.pki.profiles import Profile

CA_KEY_TYPES = ("ec-p256", "ec-p384", "rsa-3072")
ROOT_VALIDITY = timedelta(days=20 * 365)
ISSUING_VALIDITY = timedelta(days=10 * 365)
CRL_VALIDITY = timedelta(days=7)

PrivateKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey

_CURVES: dict[str, ec.EllipticCurve] = {
    "ec-p256": ec.SECP256R1(),
    "ec-p384": ec.SECP384R1(),
    "ec-p521": ec.SECP521R1(),
}
_EKU_OIDS = {
    "client_auth": ExtendedKeyUsageOID.CLIENT_AUTH,
    "server_auth": ExtendedKeyUsageOID.SERVER_AUTH,
    "code_signing": ExtendedKeyUsageOID.CODE_SIGNING,
    "email_protection": ExtendedKeyUsageOID.EMAIL_PROTECTION,
}
_SUBJECT_OIDS = {
    "organization": NameOID.ORGANIZATION_NAME,
    "organizational_unit": NameOID.ORGANIZATIONAL_UNIT_NAME,
    "country": NameOID.COUNTRY_NAME,
    "state": NameOID.STATE_OR_PROVINCE_NAME,
    "locality": NameOID.LOCALITY_NAME,
}
# RFC 5280 §5.3.1 reason names, as the CLI accepts them.
REVOCATION_REASONS: dict[str, x509.ReasonFlags] = {
    "unspecified": x509.ReasonFlags.unspecified,
    "keyCompromise": x509.ReasonFlags.key_compromise,
    "cACompromise": x509.ReasonFlags.ca_compromise,
    "affiliationChanged": x509.ReasonFlags.affiliation_changed,
    "superseded": x509.ReasonFlags.superseded,
    "cessationOfOperation": x509.ReasonFlags.cessation_of_operation,
    "certificateHold": x509.ReasonFlags.certificate_hold,
    "privilegeWithdrawn": x509.ReasonFlags.privilege_withdrawn,
    "aACompromise": x509.ReasonFlags.aa_compromise,
}


def normalize_reason(reason: str) -> str:
    """Map ``key-compromise``, ``KEY_COMPROMISE``, ``keyCompromise``... to the RFC name."""
    folded = reason.replace("-", "").replace("_", "").lower()
    for name in REVOCATION_REASONS:
        if name.lower() == folded:
            return name
    raise InvalidInput(
        f"unknown revocation reason {reason!r}; use one of {', '.join(REVOCATION_REASONS)}"
    )


# --- keys -------------------------------------------------------------------------------


def generate_key(key_type: str) -> PrivateKey:
    """A new private key of ``key_type`` (see :data:`fleet.pki.profiles.KEY_TYPES`)."""
    if key_type in _CURVES:
        return ec.generate_private_key(_CURVES[key_type])
    if key_type.startswith("rsa-"):
        return rsa.generate_private_key(public_exponent=65537, key_size=int(key_type[4:]))
    raise InvalidInput(f"unknown key type {key_type!r}")


def key_type_of(key: CertificatePublicKeyTypes | PrivateKey) -> str:
    """The fleet key-type name of a key, or raise :class:`InvalidInput` if fleet refuses it."""
    if isinstance(key, ec.EllipticCurvePublicKey | ec.EllipticCurvePrivateKey):
        for name, curve in _CURVES.items():
            if key.curve.name == curve.name:
                return name
        raise InvalidInput(f"unsupported elliptic curve {key.curve.name} (use P-256, P-384, P-521)")
    if isinstance(key, rsa.RSAPublicKey | rsa.RSAPrivateKey):
        if key.key_size < 2048:
            raise InvalidInput(f"RSA key of {key.key_size} bits is too small (minimum 2048)")
        if key.key_size > 8192:
            raise InvalidInput(f"RSA key of {key.key_size} bits is too large (maximum 8192)")
        return f"rsa-{key.key_size}"
    raise InvalidInput(f"unsupported key algorithm {type(key).__name__} (use EC or RSA)")


def signature_hash(key: PrivateKey) -> hashes.SHA256 | hashes.SHA384 | hashes.SHA512:
    """The digest paired with a signing key: SHA-384 for P-384, SHA-512 for P-521."""
    if isinstance(key, ec.EllipticCurvePrivateKey):
        if key.curve.key_size >= 521:
            return hashes.SHA512()
        if key.curve.key_size >= 384:
            return hashes.SHA384()
    return hashes.SHA256()


def private_key_pem(key: PrivateKey, passphrase: bytes | None = None) -> bytes:
    """PKCS#8 PEM, encrypted when a passphrase is given."""
    encryption: serialization.KeySerializationEncryption = (
        serialization.BestAvailableEncryption(passphrase)
        if passphrase
        else serialization.NoEncryption()
    )
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption
    )


def key_usage(usages: set[str]) -> x509.KeyUsage:
    """A KeyUsage extension with exactly the named bits set (``digital_signature``...)."""
    names = (
        "digital_signature", "content_commitment", "key_encipherment", "data_encipherment",
        "key_agreement", "key_cert_sign", "crl_sign",
    )  # fmt: skip
    return x509.KeyUsage(
        **{name: name in usages for name in names}, encipher_only=False, decipher_only=False
    )


def fingerprint_sha256(cert: x509.Certificate) -> str:
    """Lowercase hex SHA-256 of the certificate's DER encoding."""
    return cert.fingerprint(hashes.SHA256()).hex()


def serial_hex(serial: int) -> str:
    """A serial number as fleet shows it: lowercase hex, no leading zeros."""
    return format(serial, "x")


def cert_pem(cert: x509.Certificate) -> bytes:
    """PEM encoding of a certificate."""
    return cert.public_bytes(serialization.Encoding.PEM)


# --- the CA on disk ---------------------------------------------------------------------


@dataclass
class Issuer:
    """The loaded issuing CA: everything needed to sign device certificates and CRLs."""

    key: PrivateKey
    cert: x509.Certificate
    root: x509.Certificate
    aki: x509.AuthorityKeyIdentifier = field(init=False)
    chain_pem: bytes = field(init=False)

    def __post_init__(self) -> None:
        ski = self.cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
        self.aki = x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski)
        self.chain_pem = cert_pem(self.cert) + cert_pem(self.root)


def ca_dir(home: Path) -> Path:
    """Where a workspace keeps its CA."""
    return home / "ca"


def is_initialised(home: Path) -> bool:
    """Whether ``home`` already holds a CA."""
    return (ca_dir(home) / "issuing.cert.pem").is_file()


def _encode(passphrase: str | bytes) -> bytes:
    data = passphrase.encode("utf-8") if isinstance(passphrase, str) else passphrase
    if not data:
        raise AuthError("the CA passphrase must not be empty")
    return data


def create_ca(
    home: Path,
    name: str,
    key_type: str,
    passphrase: str | bytes,
    *,
    now: datetime | None = None,
) -> Issuer:
    """Create the root and issuing CA under ``home/ca`` atomically (all files or none)."""
    if key_type not in CA_KEY_TYPES:
        raise InvalidInput(f"CA key type must be one of {', '.join(CA_KEY_TYPES)}")
    if not name.strip() or len(name) > 64:
        raise InvalidInput("CA name must be 1 to 64 characters")
    secret = _encode(passphrase)
    target = ca_dir(home)
    if target.exists():
        raise Conflict(f"{target} already exists: this workspace is initialised")
    now = now or datetime.now(UTC)
    root_key, issuing_key = generate_key(key_type), generate_key(key_type)
    root_name = _ca_name(name, "Root CA")
    root = _ca_cert(
        root_name, root_name, root_key, root_key, now, now + ROOT_VALIDITY, path_length=None
    )
    issuing = _ca_cert(
        _ca_name(name, "Issuing CA"),
        root_name,
        issuing_key,
        root_key,
        now,
        now + ISSUING_VALIDITY,
        path_length=0,
        issuer_cert=root,
    )
    home.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".ca-", dir=home))  # mkdtemp makes it 0700
    try:
        write_private_file(staging / "root.key.pem", private_key_pem(root_key, secret))
        write_private_file(staging / "issuing.key.pem", private_key_pem(issuing_key, secret))
        (staging / "root.cert.pem").write_bytes(cert_pem(root))
        (staging / "issuing.cert.pem").write_bytes(cert_pem(issuing))
        os.rename(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return Issuer(issuing_key, issuing, root)


def remove_ca(home: Path) -> None:
    """Delete a CA that :func:`create_ca` just made (used to undo a failed ``init``)."""
    shutil.rmtree(ca_dir(home), ignore_errors=True)


def _ca_name(name: str, role: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, name),
            x509.NameAttribute(NameOID.COMMON_NAME, f"{name} {role}"[:64]),
        ]
    )


def _ca_cert(
    subject: x509.Name,
    issuer: x509.Name,
    public_of: PrivateKey,
    signing_key: PrivateKey,
    not_before: datetime,
    not_after: datetime,
    *,
    path_length: int | None,
    issuer_cert: x509.Certificate | None = None,
) -> x509.Certificate:
    public_key = public_of.public_key()
    ski = x509.SubjectKeyIdentifier.from_public_key(public_key)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=True, path_length=path_length), critical=True)
        .add_extension(key_usage({"key_cert_sign", "crl_sign"}), critical=True)
        .add_extension(ski, critical=False)
    )
    # The root carries an AKI too (its own key): pkilint's chain lint wants one everywhere.
    if issuer_cert is None:
        aki = x509.AuthorityKeyIdentifier.from_issuer_public_key(signing_key.public_key())
    else:
        issuer_ski = issuer_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier)
        aki = x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(issuer_ski.value)
    builder = builder.add_extension(aki, critical=False)
    return builder.sign(signing_key, signature_hash(signing_key))


def load_issuer(home: Path, passphrase: str | bytes) -> Issuer:
    """Load the issuing CA, decrypting its key; wrong passphrases raise :class:`AuthError`."""
    folder = ca_dir(home)
    if not is_initialised(home):
        raise RegistryError(f"no CA in {folder}: run `fleet init` first")
    try:
        key_pem = (folder / "issuing.key.pem").read_bytes()
        issuing = x509.load_pem_x509_certificate((folder / "issuing.cert.pem").read_bytes())
        root = x509.load_pem_x509_certificate((folder / "root.cert.pem").read_bytes())
    except OSError as exc:
        raise RegistryError(f"cannot read the CA in {folder}: {exc.strerror}") from exc
    try:
        key = serialization.load_pem_private_key(key_pem, password=_encode(passphrase))
    except (ValueError, TypeError) as exc:
        raise AuthError("wrong CA passphrase (cannot decrypt the issuing CA key)") from exc
    except UnsupportedAlgorithm as exc:  # pragma: no cover - corrupt key file
        raise RegistryError(f"cannot load the issuing CA key: {exc}") from exc
    return Issuer(cast(PrivateKey, key), issuing, root)


def load_ca_certificates(home: Path) -> tuple[x509.Certificate, x509.Certificate]:
    """``(issuing, root)`` certificates; needs no passphrase."""
    folder = ca_dir(home)
    if not is_initialised(home):
        raise RegistryError(f"no CA in {folder}: run `fleet init` first")
    issuing = x509.load_pem_x509_certificate((folder / "issuing.cert.pem").read_bytes())
    root = x509.load_pem_x509_certificate((folder / "root.cert.pem").read_bytes())
    return issuing, root


# --- device certificates ----------------------------------------------------------------


def issue_device_certificate(
    issuer: Issuer,
    device_id: str,
    public_key: CertificatePublicKeyTypes,
    profile: Profile,
    *,
    now: datetime | None = None,
) -> x509.Certificate:
    """Sign a device certificate for ``public_key`` following ``profile``; CN = device ID."""
    now = now or datetime.now(UTC)
    not_before = now - timedelta(seconds=profile.backdate_seconds)
    # A leaf must not outlive the CA that vouches for it.
    not_after = min(now + timedelta(days=profile.validity_days), issuer.cert.not_valid_after_utc)
    attributes = [
        x509.NameAttribute(_SUBJECT_OIDS[k], v)
        for k in ("country", "state", "locality", "organization", "organizational_unit")
        if (v := profile.subject.get(k))
    ]
    attributes.append(x509.NameAttribute(NameOID.COMMON_NAME, device_id))
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name(attributes))
        .issuer_name(issuer.cert.subject)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(key_usage(set(profile.key_usage)), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
        .add_extension(issuer.aki, critical=False)
    )
    if profile.extended_key_usage:
        builder = builder.add_extension(
            x509.ExtendedKeyUsage([_EKU_OIDS[u] for u in profile.extended_key_usage]),
            critical=False,
        )
    if profile.san_dns:
        names = [x509.DNSName(t.replace("{id}", device_id)) for t in profile.san_dns]
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    return builder.sign(issuer.key, signature_hash(issuer.key))


def sign_verification_certificate(issuer: Issuer, common_name: str, public_key_pem: bytes) -> str:
    """A short-lived certificate (PEM) with CN ``common_name`` for ``public_key_pem``.

    Proves possession of the issuing CA's key to a platform, e.g. AWS IoT's
    RegisterCACertificate, whose registration code goes in the CN.
    """
    public_key = serialization.load_pem_public_key(public_key_pem)
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
        .issuer_name(issuer.cert.subject)
        .public_key(public_key)  # type: ignore[arg-type]
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=1))
        .sign(issuer.key, signature_hash(issuer.key))
    )
    return cert_pem(cert).decode("ascii")


def load_csr(data: bytes, device_id: str, *, source: str = "CSR") -> x509.CertificateSigningRequest:
    """Parse and check a device's CSR (PEM or DER).

    Refused: unparseable data, a signature that does not verify, keys fleet does not accept
    (RSA under 2048 bits, curves other than P-256/384/521, other algorithms), and a subject
    CN that differs from ``device_id``. Only the CSR's public key is used; its requested
    extensions are ignored in favour of the profile.
    """
    try:
        if b"-----BEGIN" in data:
            csr = x509.load_pem_x509_csr(data)
        else:
            csr = x509.load_der_x509_csr(data)
    except ValueError as exc:
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
    common_names = csr.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    for attribute in common_names:
        if attribute.value != device_id:
            raise InvalidInput(
                f"{source}: subject CN {attribute.value!r} does not match device ID {device_id!r}"
            )
    return csr


def verify_issued_by(cert: x509.Certificate, issuer: x509.Certificate) -> bool:
    """Whether ``issuer`` signed ``cert`` (signature and name chaining)."""
    try:
        cert.verify_directly_issued_by(issuer)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        return False
    except Exception:  # InvalidSignature
        return False
    return True


# --- revocation -------------------------------------------------------------------------


@dataclass(frozen=True)
class RevokedEntry:
    """One line of a CRL."""

    serial: str
    revoked_at: datetime
    reason: str | None


def build_crl(
    issuer: Issuer,
    revoked: list[RevokedEntry],
    number: int,
    *,
    now: datetime | None = None,
) -> x509.CertificateRevocationList:
    """A CRL signed by the issuing CA listing ``revoked``, with CRL number and AKI."""
    now = now or datetime.now(UTC)
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(issuer.cert.subject)
        .last_update(now)
        .next_update(now + CRL_VALIDITY)
        .add_extension(x509.CRLNumber(number), critical=False)
        .add_extension(issuer.aki, critical=False)
    )
    for entry in revoked:
        item = x509.RevokedCertificateBuilder().serial_number(int(entry.serial, 16))
        item = item.revocation_date(entry.revoked_at)
        # RFC 5280 5.3.1: the reason code "unspecified" SHOULD be absent.
        if entry.reason and entry.reason != "unspecified":
            item = item.add_extension(
                x509.CRLReason(REVOCATION_REASONS[entry.reason]), critical=False
            )
        builder = builder.add_revoked_certificate(item.build())
    return builder.sign(issuer.key, signature_hash(issuer.key))


def crl_pem(crl: x509.CertificateRevocationList) -> bytes:
    """PEM encoding of a CRL."""
    return crl.public_bytes(serialization.Encoding.PEM)


def cert_summary(cert: x509.Certificate) -> dict[str, str]:
    """Subject, serial, SHA-256 fingerprint and validity of a CA certificate, for display."""
    return {
        "subject": cert.subject.rfc4514_string(),
        "issuer": cert.issuer.rfc4514_string(),
        "serial": serial_hex(cert.serial_number),
        "fingerprint_sha256": fingerprint_sha256(cert),
        "not_before": cert.not_valid_before_utc.isoformat().replace("+00:00", "Z"),
        "not_after": cert.not_valid_after_utc.isoformat().replace("+00:00", "Z"),
        "key_type": key_type_of(cert.public_key()),
    }


def sha256_hex(data: bytes) -> str:
    """Lowercase hex SHA-256 of ``data``."""
    return hashlib.sha256(data).hexdigest()
