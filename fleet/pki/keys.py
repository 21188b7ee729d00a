"""Keys and certificate encodings: the vocabulary every other pki module speaks.

Key types are named as profiles and the CLI name them (``ec-p256``, ``rsa-3072``...); serials
and fingerprints are shown as lowercase hex.
"""

from __future__ import annotations

import functools
from typing import cast

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.types import CertificatePublicKeyTypes

from fleet.errors import AuthError, InvalidInput

PrivateKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey
SignatureHash = hashes.SHA256 | hashes.SHA384 | hashes.SHA512

_CURVES: dict[str, ec.EllipticCurve] = {
    "ec-p256": ec.SECP256R1(),
    "ec-p384": ec.SECP384R1(),
    "ec-p521": ec.SECP521R1(),
}
_KEY_USAGE_BITS = (
    "digital_signature", "content_commitment", "key_encipherment", "data_encipherment",
    "key_agreement", "key_cert_sign", "crl_sign",
)  # fmt: skip


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


def signature_hash(key: PrivateKey) -> SignatureHash:
    """The digest paired with a signing key: SHA-384 for P-384, SHA-512 for P-521."""
    if isinstance(key, ec.EllipticCurvePrivateKey):
        if key.curve.key_size >= 521:
            return hashes.SHA512()
        if key.curve.key_size >= 384:
            return hashes.SHA384()
    return hashes.SHA256()


def passphrase_bytes(passphrase: str | bytes) -> bytes:
    """A CA passphrase as the bytes that encrypt keys; an empty one is refused."""
    data = passphrase.encode("utf-8") if isinstance(passphrase, str) else passphrase
    if not data:
        raise AuthError("the CA passphrase must not be empty")
    return data


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


def load_private_key_pem(data: bytes, passphrase: bytes | None, *, what: str) -> PrivateKey:
    """Decrypt a PKCS#8 PEM key; a wrong passphrase raises :class:`AuthError` naming ``what``."""
    try:
        key = serialization.load_pem_private_key(data, password=passphrase)
    except (ValueError, TypeError) as exc:
        raise AuthError(f"wrong CA passphrase (cannot decrypt {what})") from exc
    return cast(PrivateKey, key)


def key_usage(usages: set[str]) -> x509.KeyUsage:
    """A KeyUsage extension with exactly the named bits set (``digital_signature``...)."""
    return x509.KeyUsage(
        **{name: name in usages for name in _KEY_USAGE_BITS},
        encipher_only=False,
        decipher_only=False,
    )


@functools.lru_cache(maxsize=8)
def authority_key_identifier(issuer_cert: x509.Certificate) -> x509.AuthorityKeyIdentifier:
    """The AKI of everything ``issuer_cert`` signs: its subject key identifier.

    Cached: a provisioning worker asks for it once per certificate it signs.
    """
    ski = issuer_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    return x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski)


def fingerprint_sha256(cert: x509.Certificate) -> str:
    """Lowercase hex SHA-256 of the certificate's DER encoding."""
    return cert.fingerprint(hashes.SHA256()).hex()


def serial_hex(serial: int) -> str:
    """A serial number as fleet shows it: lowercase hex, no leading zeros."""
    return format(serial, "x")


def cert_pem(cert: x509.Certificate) -> bytes:
    """PEM encoding of a certificate."""
    return cert.public_bytes(serialization.Encoding.PEM)


def verify_issued_by(cert: x509.Certificate, issuer: x509.Certificate) -> bool:
    """Whether ``issuer`` signed ``cert`` (signature and name chaining)."""
    try:
        cert.verify_directly_issued_by(issuer)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        return False
    except Exception:  # InvalidSignature
        return False
    return True
