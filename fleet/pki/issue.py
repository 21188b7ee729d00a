"""Issuing certificates: the one path every identity fleet signs goes through.

:func:`issue_certificate` makes an identity from a profile: it generates the key (or takes a
checked CSR's public key), builds the leaf (:func:`sign_leaf`), has the :class:`Issuer` sign
it and returns an :class:`IssuedCertificate`. ``fleet device add``, ``fleet cert renew``,
bulk provisioning and the export-signing certificate all call it. The registry row and the
audit details of an issued certificate are made here too (:func:`certificate_values`,
:func:`certificate_row`, :func:`certificate_details`, :func:`device_details`), so every
writer records the same thing.

The one certificate that is not an identity, the short-lived proof of possession a cloud
asks for (:func:`verification_certificate`), keeps its own minimal shape; it is still
signed through :meth:`Issuer.sign_certificate`, like everything the CA signs.

For provisioning workers (one process each, thousands of certificates a second)::

    # pool initialiser, in each worker:
    issuer = factory()                     # factory = issuer.for_workers(), made in the parent
    # per row, in the worker:
    csr = load_csr(data, device_id, source=...) if data else None   # fleet.pki.csr
    issued = issue_certificate(issuer, device_id, profile, csr=csr, now=now)
    # write issued.key_pem (None for a CSR), issued.cert_pem and issuer.chain_pem to the
    # bundle's staging folder, then return issued.without_key() to the parent, which calls
    # certificate_values(device_id, issued, profile.name, now) for the row, and
    # device_details(device_values) and certificate_details(values) for the audit event.

:class:`IssuedCertificate` is picklable, small, and ``without_key()`` leaves no private key
in what crosses the process boundary.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta
from ipaddress import IPv4Address, IPv6Address
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.types import CertificatePublicKeyTypes
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from sqlmodel import SQLModel

from fleet import clock
from fleet.errors import InvalidInput
from fleet.pki.issuer import Issuer
from fleet.pki.keys import (
    authority_key_identifier,
    cert_pem,
    fingerprint_sha256,
    generate_key,
    key_type_of,
    key_usage,
    private_key_pem,
    serial_hex,
)
from fleet.pki.names import dns_name_problem
from fleet.pki.profiles import Profile
from fleet.registry.models import Certificate, Device
from fleet.statuses import CertStatus, KeyOrigin

_EKU_OIDS = {
    "client_auth": ExtendedKeyUsageOID.CLIENT_AUTH,
    "server_auth": ExtendedKeyUsageOID.SERVER_AUTH,
    "code_signing": ExtendedKeyUsageOID.CODE_SIGNING,
    "email_protection": ExtendedKeyUsageOID.EMAIL_PROTECTION,
}
_SUBJECT_OIDS = {
    "country": NameOID.COUNTRY_NAME,
    "state": NameOID.STATE_OR_PROVINCE_NAME,
    "locality": NameOID.LOCALITY_NAME,
    "organization": NameOID.ORGANIZATION_NAME,
    "organizational_unit": NameOID.ORGANIZATIONAL_UNIT_NAME,
}  # in the order they appear in a subject, before the CN
# The columns audit events record about a certificate and a device, in this order.
_CERTIFICATE_DETAILS = (
    "serial", "fingerprint_sha256", "not_before", "not_after", "profile", "key_type", "key_origin",
)  # fmt: skip
_DEVICE_DETAILS = ("model", "serial", "labels", "status")
IPAddress = IPv4Address | IPv6Address


@dataclasses.dataclass(frozen=True, slots=True)
class IssuedCertificate:
    """A certificate fleet just signed, with what the registry records about it.

    ``key_pem`` is the unencrypted PKCS#8 private key when fleet generated it (``None`` for
    a CSR): write it to the bundle, then drop it with :meth:`without_key`.
    """

    cert_pem: str
    serial: str  # lowercase hex
    fingerprint_sha256: str
    subject: str  # RFC 4514
    not_before: datetime
    not_after: datetime
    key_type: str
    key_origin: KeyOrigin
    key_pem: bytes | None = dataclasses.field(default=None, repr=False)

    def __reduce__(self) -> tuple[type[IssuedCertificate], tuple[Any, ...]]:
        # Pickled as the constructor's arguments: a worker returns thousands a second, and
        # the slotted dataclass default (__getstate__/__setstate__ in Python) costs the
        # parent four times as much to load.
        return (IssuedCertificate, tuple(getattr(self, name) for name in self.__slots__))

    def without_key(self) -> IssuedCertificate:
        """The same certificate without the private key (what a worker sends back)."""
        return self if self.key_pem is None else dataclasses.replace(self, key_pem=None)

    def certificate(self) -> x509.Certificate:
        """The certificate, parsed."""
        return x509.load_pem_x509_certificate(self.cert_pem.encode("ascii"))


def issue_certificate(
    issuer: Issuer,
    common_name: str,
    profile: Profile,
    *,
    key_type: str | None = None,
    csr: x509.CertificateSigningRequest | None = None,
    now: datetime | None = None,
    dns_names: Sequence[str] = (),
    ip_addresses: Sequence[IPAddress] = (),
) -> IssuedCertificate:
    """Sign an identity for ``common_name`` (a device ID) following ``profile``.

    With ``csr`` (already checked, see :mod:`fleet.pki.csr`) its public key is certified and
    no private key is returned; without, a key of ``key_type`` (default: the profile's) is
    generated and returned in ``key_pem``. A key that cannot have the profile's key usages,
    or a device ID that makes no DNS name in the profile's ``san_dns``, is refused
    (:class:`~fleet.errors.InvalidInput`) before anything is signed. ``dns_names`` and
    ``ip_addresses`` are subjectAltNames given at issue time (a server's names, e.g. from
    ``fleet broker mosquitto --hostname/--ip``), after the profile's own.
    """
    check_issuable(profile, common_name, key_type=key_type, csr=csr, dns_names=dns_names)
    key_pem: bytes | None = None
    if csr is not None:
        public_key = csr.public_key()
        chosen, origin = key_type_of(public_key), KeyOrigin.CSR
    else:
        chosen, origin = key_type or profile.key_type, KeyOrigin.GENERATED
        key = generate_key(chosen)
        public_key, key_pem = key.public_key(), private_key_pem(key)
    cert = sign_leaf(
        issuer,
        common_name,
        public_key,
        profile,
        now=now,
        dns_names=dns_names,
        ip_addresses=ip_addresses,
    )
    return IssuedCertificate(
        cert_pem=cert_pem(cert).decode("ascii"),
        serial=serial_hex(cert.serial_number),
        fingerprint_sha256=fingerprint_sha256(cert),
        subject=cert.subject.rfc4514_string(),
        not_before=cert.not_valid_before_utc,
        not_after=cert.not_valid_after_utc,
        key_type=chosen,
        key_origin=origin,
        key_pem=key_pem,
    )


def check_issuable(
    profile: Profile,
    common_name: str,
    *,
    key_type: str | None = None,
    csr: x509.CertificateSigningRequest | None = None,
    dns_names: Sequence[str] = (),
) -> None:
    """Refuse (:class:`~fleet.errors.InvalidInput`) what :func:`issue_certificate` would
    refuse for these arguments: a key that cannot have the profile's key usages, a device ID
    that makes no DNS name in its ``san_dns``, a given DNS name that is none. Callers that ask
    for the CA passphrase call it first, so nobody is asked for a request that cannot
    succeed."""
    chosen = key_type_of(csr.public_key()) if csr is not None else key_type or profile.key_type
    profile.check_key_type(chosen)
    profile.dns_names(common_name)
    for name in dns_names:
        if problem := dns_name_problem(name):
            raise InvalidInput(f"DNS name {name!r} {problem}")


def sign_leaf(
    issuer: Issuer,
    common_name: str,
    public_key: CertificatePublicKeyTypes,
    profile: Profile,
    *,
    now: datetime | None = None,
    dns_names: Sequence[str] = (),
    ip_addresses: Sequence[IPAddress] = (),
) -> x509.Certificate:
    """Sign an end-entity certificate for ``public_key`` following ``profile``.

    Subject: the profile's fields then CN = ``common_name``; ``{id}`` in the profile's DNS
    names becomes ``common_name`` too (:meth:`~fleet.pki.profiles.Profile.dns_names`). The
    subjectAltName lists those names, then ``dns_names``, then ``ip_addresses`` (each once).
    """
    names = list(dict.fromkeys([*profile.dns_names(common_name), *dns_names]))
    addresses = list(dict.fromkeys(ip_addresses))
    now = now or clock.now()
    not_before = now - timedelta(seconds=profile.backdate_seconds)
    # A leaf must not outlive the CA that vouches for it.
    not_after = min(now + timedelta(days=profile.validity_days), issuer.cert.not_valid_after_utc)
    attributes = [
        x509.NameAttribute(oid, value)
        for field, oid in _SUBJECT_OIDS.items()
        if (value := profile.subject.get(field))
    ]
    attributes.append(x509.NameAttribute(NameOID.COMMON_NAME, common_name))
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
        .add_extension(authority_key_identifier(issuer.cert), critical=False)
    )
    if profile.extended_key_usage:
        builder = builder.add_extension(
            x509.ExtendedKeyUsage([_EKU_OIDS[u] for u in profile.extended_key_usage]),
            critical=False,
        )
    if names or addresses:
        general: list[x509.GeneralName] = [x509.DNSName(name) for name in names]
        general += [x509.IPAddress(address) for address in addresses]
        builder = builder.add_extension(x509.SubjectAlternativeName(general), critical=False)
    return issuer.sign_certificate(builder)


def verification_certificate(issuer: Issuer, common_name: str, public_key_pem: bytes) -> str:
    """A short-lived certificate (PEM) with CN ``common_name`` for ``public_key_pem``.

    Proves possession of the issuing CA's key to a platform, e.g. AWS IoT's
    RegisterCACertificate, whose registration code goes in the CN. No extensions, valid
    for a day: it is checked once and never recorded.
    """
    public_key = serialization.load_pem_public_key(public_key_pem)
    now = clock.now()
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
        .issuer_name(issuer.cert.subject)
        .public_key(public_key)  # type: ignore[arg-type]
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=1))
    )
    return cert_pem(issuer.sign_certificate(builder)).decode("ascii")


# --- what the registry and the audit trail record -------------------------------------


def certificate_values(
    device_id: str, issued: IssuedCertificate, profile_name: str, issued_at: datetime
) -> dict[str, Any]:
    """Every column of the registry row for ``issued`` (bulk inserts take this as is)."""
    return {
        "serial": issued.serial,
        "device_id": device_id,
        "fingerprint_sha256": issued.fingerprint_sha256,
        "subject": issued.subject,
        "not_before": issued.not_before,
        "not_after": issued.not_after,
        "status": CertStatus.ACTIVE,
        "revoked_at": None,
        "revocation_reason": None,
        "profile": profile_name,
        "key_type": issued.key_type,
        "key_origin": issued.key_origin,
        "issued_at": issued_at,
        "pem": issued.cert_pem,
    }


def certificate_row(
    device_id: str, issued: IssuedCertificate, profile_name: str, issued_at: datetime
) -> Certificate:
    """The registry row for ``issued``."""
    return Certificate(**certificate_values(device_id, issued, profile_name, issued_at))


def certificate_details(row: Certificate | Mapping[str, Any]) -> dict[str, Any]:
    """What the audit trail records about an issued certificate, from its row or its
    :func:`certificate_values`."""
    details = _columns(row, _CERTIFICATE_DETAILS)
    details["not_before"] = details["not_before"].isoformat()
    details["not_after"] = details["not_after"].isoformat()
    return details


def device_details(device: Device | Mapping[str, Any]) -> dict[str, Any]:
    """What the audit trail records about a device's attributes, from its row or its column
    values."""
    details = _columns(device, _DEVICE_DETAILS)
    details["labels"] = dict(details["labels"])
    return details


def _columns(row: SQLModel | Mapping[str, Any], names: tuple[str, ...]) -> dict[str, Any]:
    if isinstance(row, Mapping):
        return {name: row[name] for name in names}
    return {name: getattr(row, name) for name in names}
