"""fleet's CA on disk: a root CA and an issuing CA it signs, and the file-backed issuer.

Files under ``<home>/ca/`` (directory 0700; keys 0600, PKCS#8, encrypted with the CA
passphrase)::

    root.key.pem  root.cert.pem  issuing.key.pem  issuing.cert.pem

Only the issuing CA signs device certificates and CRLs; the root key is needed again only to
rotate the issuing CA.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import NameOID

from fleet import clock
from fleet.errors import Conflict, InvalidInput, RegistryError
from fleet.files import write_new_file
from fleet.identifiers import validate_text_field
from fleet.pki.issuer import Issuer
from fleet.pki.keys import (
    PrivateKey,
    authority_key_identifier,
    cert_pem,
    generate_key,
    key_usage,
    load_private_key_pem,
    passphrase_bytes,
    private_key_pem,
    signature_hash,
)

CA_KEY_TYPES = ("ec-p256", "ec-p384", "rsa-3072")
ROOT_VALIDITY = timedelta(days=20 * 365)
ISSUING_VALIDITY = timedelta(days=10 * 365)


# --- the file-backed issuer -------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class FileIssuer:
    """The issuing CA with its key decrypted from disk: a :class:`fleet.pki.issuer.Issuer`.

    ``key`` belongs to this class and to ``pki/``; code above holds an ``Issuer`` and signs
    through :meth:`sign_certificate` and :meth:`sign_crl`.
    """

    key: PrivateKey = field(repr=False)
    cert: x509.Certificate
    root: x509.Certificate
    chain_pem: bytes = field(init=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "chain_pem", cert_pem(self.cert) + cert_pem(self.root))

    def sign_certificate(self, builder: x509.CertificateBuilder) -> x509.Certificate:
        """Sign with the issuing key and its digest (SHA-384 for P-384...)."""
        return builder.sign(self.key, signature_hash(self.key))

    def sign_crl(
        self, builder: x509.CertificateRevocationListBuilder
    ) -> x509.CertificateRevocationList:
        """Sign with the issuing key and its digest."""
        return builder.sign(self.key, signature_hash(self.key))

    def for_workers(self) -> FileIssuerFactory:
        """A factory carrying this issuer's key and certificates as DER (see the class)."""
        return FileIssuerFactory(
            self.key.private_bytes(
                serialization.Encoding.DER,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            ),
            self.cert.public_bytes(serialization.Encoding.DER),
            self.root.public_bytes(serialization.Encoding.DER),
        )


@dataclass(frozen=True)
class FileIssuerFactory:
    """Rebuilds a :class:`FileIssuer` in a worker process.

    It carries the issuing key unencrypted (PKCS#8 DER) in memory, so workers never read the
    key file or need the passphrase: a forked worker inherits it, a spawned one receives it
    pickled over the pool's pipe. It is never written anywhere.
    """

    key_der: bytes = field(repr=False)
    cert_der: bytes = field(repr=False)
    root_der: bytes = field(repr=False)

    def __call__(self) -> FileIssuer:
        """The issuer, in this process."""
        key = serialization.load_der_private_key(self.key_der, password=None)
        if not isinstance(key, PrivateKey):  # pragma: no cover - it was a CA key
            raise TypeError("unsupported CA key")
        cert = x509.load_der_x509_certificate(self.cert_der)
        return FileIssuer(key, cert, x509.load_der_x509_certificate(self.root_der))


# --- the CA on disk ---------------------------------------------------------------------


def ca_dir(home: Path) -> Path:
    """Where a workspace keeps its CA."""
    return home / "ca"


def is_initialised(home: Path) -> bool:
    """Whether ``home`` already holds a CA."""
    return (ca_dir(home) / "issuing.cert.pem").is_file()


def check_ca_request(name: str, key_type: str) -> None:
    """Refuse (:class:`InvalidInput`) a CA name or key type :func:`create_ca` cannot use."""
    if key_type not in CA_KEY_TYPES:
        raise InvalidInput(f"CA key type must be one of {', '.join(CA_KEY_TYPES)}")
    if not name.strip() or validate_text_field("CA name", name, limit=64) is None:
        raise InvalidInput("CA name must be 1 to 64 printable characters")


def create_ca(
    home: Path,
    name: str,
    key_type: str,
    passphrase: str | bytes,
    *,
    now: datetime | None = None,
) -> FileIssuer:
    """Create the root and issuing CA under ``home/ca`` atomically (all files or none)."""
    check_ca_request(name, key_type)
    secret = passphrase_bytes(passphrase)
    target = ca_dir(home)
    if target.exists():
        raise Conflict(f"{target} already exists: this workspace is initialised")
    now = now or clock.now()
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
        write_new_file(staging / "root.key.pem", private_key_pem(root_key, secret), private=True)
        write_new_file(
            staging / "issuing.key.pem", private_key_pem(issuing_key, secret), private=True
        )
        write_new_file(staging / "root.cert.pem", cert_pem(root))
        write_new_file(staging / "issuing.cert.pem", cert_pem(issuing))
        os.rename(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return FileIssuer(issuing_key, issuing, root)


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
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
    )
    # The root carries an AKI too (its own key): pkilint's chain lint wants one everywhere.
    if issuer_cert is None:
        aki = x509.AuthorityKeyIdentifier.from_issuer_public_key(signing_key.public_key())
    else:
        aki = authority_key_identifier(issuer_cert)
    builder = builder.add_extension(aki, critical=False)
    return builder.sign(signing_key, signature_hash(signing_key))


def load_issuer(home: Path, passphrase: str | bytes) -> Issuer:
    """Load the issuing CA, decrypting its key; wrong passphrases raise :class:`AuthError`."""
    folder = ca_dir(home)
    if not is_initialised(home):
        raise RegistryError(f"no CA in {folder}: run `fleet init` first")
    try:
        key_pem = (folder / "issuing.key.pem").read_bytes()
    except OSError as exc:
        raise RegistryError(f"cannot read the CA in {folder}: {exc.strerror}") from exc
    issuing, root = load_ca_certificates(home)
    secret = passphrase_bytes(passphrase)
    try:
        key = load_private_key_pem(key_pem, secret, what="the issuing CA key")
    except UnsupportedAlgorithm as exc:  # pragma: no cover - corrupt key file
        raise RegistryError(f"cannot load the issuing CA key: {exc}") from exc
    return FileIssuer(key, issuing, root)


def load_ca_certificates(home: Path) -> tuple[x509.Certificate, x509.Certificate]:
    """``(issuing, root)`` certificates; needs no passphrase."""
    folder = ca_dir(home)
    if not is_initialised(home):
        raise RegistryError(f"no CA in {folder}: run `fleet init` first")
    return _read_ca_cert(folder / "issuing.cert.pem"), _read_ca_cert(folder / "root.cert.pem")


def _read_ca_cert(path: Path) -> x509.Certificate:
    """A CA certificate file; :class:`RegistryError` when it is missing or not a certificate."""
    try:
        return x509.load_pem_x509_certificate(path.read_bytes())
    except OSError as exc:
        raise RegistryError(f"cannot read the CA certificate {path}: {exc.strerror}") from exc
    except ValueError as exc:
        raise RegistryError(f"the CA certificate {path} is not a PEM certificate") from exc
