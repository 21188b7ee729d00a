"""Detached CMS signatures (RFC 5652): made with a :class:`Signer`, checked against a root.

Signatures are PEM CMS SignedData (detached, binary content, signer and issuing CA
certificates included), so an auditor holding only the root certificate runs::

    openssl cms -verify -binary -inform PEM -in FILE.p7s -content FILE \\
        -CAfile root.pem -purpose any -out /dev/null

Content is digested in chunks (signing a multi-gigabyte export takes no more memory than a
small one) and asn1crypto encodes and parses the CMS structures; cryptography does the
signing, verification and certificate work.

:func:`verify_detached` checks the same things without OpenSSL: the content digest, the
signature over the signed attributes, and the chain signer -> issuing CA -> the given root.

Nothing here touches the registry: which key signs exports, and how it is issued, is
:mod:`fleet.pki.signers`.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from asn1crypto import algos, cms
from asn1crypto import pem as asn1_pem
from asn1crypto import x509 as asn1_x509
from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa

from fleet import clock
from fleet.errors import InvalidInput
from fleet.pki.keys import (
    PrivateKey,
    SignatureHash,
    fingerprint_sha256,
    serial_hex,
    signature_hash,
    verify_issued_by,
)


@dataclass(frozen=True)
class Signer:
    """A signing key with its certificate and the CA certificates above it."""

    key: PrivateKey
    cert: x509.Certificate
    issuing: x509.Certificate
    root: x509.Certificate

    def summary(self) -> dict[str, str]:
        """Subject, serial and fingerprint, as recorded in manifests."""
        return {
            "subject": self.cert.subject.rfc4514_string(),
            "serial": serial_hex(self.cert.serial_number),
            "fingerprint_sha256": fingerprint_sha256(self.cert),
        }


def sign_detached(signer: Signer, data: bytes | Path) -> bytes:
    """A detached CMS SignedData (PEM) over ``data`` or a file's content, carrying the
    signer and issuing CA certificates.

    The content is digested in 1 MiB chunks, so signing a multi-gigabyte export needs no more
    memory than a small one (cryptography's ``PKCS7SignatureBuilder`` wants the whole content
    in memory); asn1crypto encodes the RFC 5652 structure: detached id-data, signed attributes
    contentType, signingTime and messageDigest, as ``openssl cms -sign -binary`` makes them.
    """
    algorithm = signature_hash(signer.key)
    signed_attrs = cms.CMSAttributes(
        [
            cms.CMSAttribute({"type": "content_type", "values": ["data"]}),
            cms.CMSAttribute(
                {"type": "signing_time", "values": [cms.Time({"utc_time": clock.now()})]}
            ),
            cms.CMSAttribute({"type": "message_digest", "values": [_digest(data, algorithm)]}),
        ]
    )
    signer_cert = _asn1_certificate(signer.cert)
    digest_algorithm = algos.DigestAlgorithm({"algorithm": algorithm.name})
    signature, signature_algorithm = _sign(signer.key, signed_attrs.dump(), algorithm)
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
    signed_data = cms.SignedData(
        {
            "version": "v1",
            "digest_algorithms": [digest_algorithm],
            "encap_content_info": {"content_type": "data"},
            "certificates": [signer_cert, _asn1_certificate(signer.issuing)],
            "signer_infos": [signer_info],
        }
    )
    content_info = cms.ContentInfo({"content_type": "signed_data", "content": signed_data})
    armored: bytes = asn1_pem.armor("PKCS7", content_info.dump())
    return armored


def _sign(key: PrivateKey, data: bytes, algorithm: SignatureHash) -> tuple[bytes, str]:
    """The signature over ``data`` and its CMS algorithm name (``sha256_ecdsa``...)."""
    if isinstance(key, ec.EllipticCurvePrivateKey):
        return key.sign(data, ec.ECDSA(algorithm)), f"{algorithm.name}_ecdsa"
    return key.sign(data, padding.PKCS1v15(), algorithm), f"{algorithm.name}_rsa"


def _asn1_certificate(cert: x509.Certificate) -> asn1_x509.Certificate:
    return asn1_x509.Certificate.load(cert.public_bytes(serialization.Encoding.DER))


# --- verification -----------------------------------------------------------------------

_DIGESTS: dict[str, type[SignatureHash]] = {
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


@dataclass(frozen=True)
class _Parsed:
    """The parts of a CMS SignedData that verification looks at."""

    certs: list[x509.Certificate]
    issuer_der: bytes  # the signer's issuer and serial, as the SignerInfo names them
    serial: int
    algorithm: SignatureHash
    message_digest: bytes
    signing_time: datetime | None
    signed_bytes: bytes  # what the signature covers
    signature: bytes


def verify_detached(
    signature_pem: bytes, content: bytes | Path, root: x509.Certificate
) -> SignedInfo:
    """Check a detached CMS signature over ``content`` (bytes, or a file read in chunks) and
    its chain up to ``root``.

    Raises :class:`SignatureError` naming the failed check (``signature`` or ``chain``).
    """
    try:
        parsed = _parse(signature_pem)
    except (ValueError, TypeError, KeyError, IndexError) as exc:
        raise SignatureError("signature", f"unreadable CMS signature ({exc})") from exc
    signer = next(
        (
            c
            for c in parsed.certs
            if c.issuer.public_bytes() == parsed.issuer_der and c.serial_number == parsed.serial
        ),
        None,
    )
    if signer is None:
        raise SignatureError("signature", "the signer's certificate is not in the signature")
    if _digest(content, parsed.algorithm) != parsed.message_digest:
        raise SignatureError("signature", "content does not match the signed digest")
    try:
        public_key = signer.public_key()
        if isinstance(public_key, ec.EllipticCurvePublicKey):
            public_key.verify(parsed.signature, parsed.signed_bytes, ec.ECDSA(parsed.algorithm))
        elif isinstance(public_key, rsa.RSAPublicKey):
            public_key.verify(
                parsed.signature, parsed.signed_bytes, padding.PKCS1v15(), parsed.algorithm
            )
        else:
            raise SignatureError("signature", "unsupported signer key type")
    except (InvalidSignature, UnsupportedAlgorithm) as exc:
        raise SignatureError("signature", "the signature does not verify") from exc
    _check_chain(signer, parsed.certs, root, parsed.signing_time or clock.now())
    return SignedInfo(signer, parsed.signing_time)


def _parse(signature_pem: bytes) -> _Parsed:
    """Read a PEM CMS SignedData with exactly one signer; malformed input raises
    ``ValueError``, ``TypeError``, ``KeyError`` or ``IndexError``."""
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
    signed_attrs = signer_info["signed_attrs"]
    if not len(signed_attrs):
        raise ValueError("signature has no signed attributes")
    message_digest, signing_time = b"", None
    for attribute in signed_attrs:
        if attribute["type"].native == "message_digest":
            message_digest = attribute["values"][0].native
        elif attribute["type"].native == "signing_time":
            signing_time = attribute["values"][0].native
    return _Parsed(
        certs=certs,
        issuer_der=sid.chosen["issuer"].dump(),
        serial=sid.chosen["serial_number"].native,
        algorithm=_DIGESTS[signer_info["digest_algorithm"]["algorithm"].native](),
        message_digest=message_digest,
        signing_time=signing_time,
        # The signature covers the attributes as received, re-tagged from [0] to SET.
        signed_bytes=signed_attrs.untag().dump(),
        signature=signer_info["signature"].native,
    )


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
        if verify_issued_by(current, root):
            path.append(root)
            break
        parent = next(
            (c for c in bag if c is not current and _is_ca(c) and verify_issued_by(current, c)),
            None,
        )
        if parent is None:
            raise SignatureError(
                "chain",
                f"{current.subject.rfc4514_string()} does not chain to the root "
                f"{root.subject.rfc4514_string()} (sha256 {fingerprint_sha256(root)[:16]}…)",
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
