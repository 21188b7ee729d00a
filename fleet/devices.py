"""Devices: add (with an identity), update, list, show, decommission.

Each mutation writes the registry rows, its audit events and (for ``add``) the identity
bundle as one unit: the bundle is renamed into place inside the transaction and removed
again if the commit fails.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cryptography import x509
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col, select

from fleet.cloud import jobs
from fleet.errors import Conflict, InvalidInput, NotFound
from fleet.identifiers import validate_device_id, validate_label, validate_text_field
from fleet.pki import ca
from fleet.pki.bundles import StagedBundle, stage_bundle
from fleet.pki.crl import revoke_rows
from fleet.pki.profiles import KEY_TYPES, Profile, load_profile
from fleet.registry import audit
from fleet.registry.db import read_session, write_session
from fleet.registry.models import Certificate, Device
from fleet.views import device_to_dict
from fleet.workspace import Passphrase, Workspace, require_passphrase

DEVICE_STATUSES = ("active", "decommissioned")


@dataclass(frozen=True)
class Identity:
    """A freshly signed device certificate and, when fleet generated it, the private key."""

    cert: x509.Certificate
    key_pem: bytes | None
    key_type: str
    key_origin: str  # "generated" or "csr"


def make_identity(
    issuer: ca.Issuer,
    device_id: str,
    profile: Profile,
    *,
    key_type: str | None = None,
    csr: x509.CertificateSigningRequest | None = None,
    now: datetime | None = None,
) -> Identity:
    """Generate a key (or take the CSR's public key) and sign a certificate for it."""
    if csr is not None:
        public_key = csr.public_key()
        cert = ca.issue_device_certificate(issuer, device_id, public_key, profile, now=now)
        return Identity(cert, None, ca.key_type_of(public_key), "csr")
    chosen = key_type or profile.key_type
    key = ca.generate_key(chosen)
    cert = ca.issue_device_certificate(issuer, device_id, key.public_key(), profile, now=now)
    return Identity(cert, ca.private_key_pem(key), chosen, "generated")


def stage_identity(
    out_dir: Path, device_id: str, identity: Identity, issuer: ca.Issuer
) -> StagedBundle:
    """Write an identity's bundle (key if generated, cert, chain) to a staging folder."""
    return stage_bundle(
        out_dir,
        device_id,
        key_pem=identity.key_pem,
        cert_pem=ca.cert_pem(identity.cert),
        chain_pem=issuer.chain_pem,
    )


def certificate_row(
    device_id: str, identity: Identity, profile_name: str, now: datetime
) -> Certificate:
    """The registry row for an identity's certificate."""
    cert = identity.cert
    return Certificate(
        serial=ca.serial_hex(cert.serial_number),
        device_id=device_id,
        fingerprint_sha256=ca.fingerprint_sha256(cert),
        subject=cert.subject.rfc4514_string(),
        not_before=cert.not_valid_before_utc,
        not_after=cert.not_valid_after_utc,
        status="active",
        profile=profile_name,
        key_type=identity.key_type,
        key_origin=identity.key_origin,
        issued_at=now,
        pem=ca.cert_pem(cert).decode("ascii"),
    )


def certificate_details(row: Certificate) -> dict[str, Any]:
    """What the audit trail records about an issued certificate."""
    return {
        "serial": row.serial,
        "fingerprint_sha256": row.fingerprint_sha256,
        "not_before": row.not_before.isoformat(),
        "not_after": row.not_after.isoformat(),
        "profile": row.profile,
        "key_type": row.key_type,
        "key_origin": row.key_origin,
    }


def device_details(device: Device) -> dict[str, Any]:
    """What the audit trail records about a device's attributes."""
    return {
        "model": device.model,
        "serial": device.serial,
        "labels": dict(device.labels),
        "status": device.status,
    }


def validate_key_type(key_type: str | None) -> str | None:
    """Check a ``--key-type`` value."""
    if key_type is not None and key_type not in KEY_TYPES:
        raise InvalidInput(f"key type must be one of {', '.join(KEY_TYPES)}")
    return key_type


def read_csr_file(path: Path, device_id: str) -> x509.CertificateSigningRequest:
    """Read and check a CSR file for ``device_id`` (see :func:`fleet.pki.ca.load_csr`)."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise InvalidInput(f"cannot read CSR {path}: {exc.strerror}") from exc
    return ca.load_csr(data, device_id, source=f"CSR {path}")


def add_device(
    ws: Workspace,
    device_id: str,
    *,
    model: str | None = None,
    serial: str | None = None,
    labels: dict[str, str] | None = None,
    profile: str = "default",
    key_type: str | None = None,
    csr: Path | x509.CertificateSigningRequest | None = None,
    out_dir: Path | None = None,
    passphrase: Passphrase | None = None,
    clouds: Sequence[str] = (),
) -> dict[str, Any]:
    """Register a device and issue its identity in one transaction; return its JSON view.

    ``clouds``: queue its registration on these clouds in the same transaction (pushed by
    ``fleet cloud sync``); unknown names are refused before anything is written.

    Without ``csr`` a key is generated and ``out_dir/ID/key.pem`` (0600), ``cert.pem`` and
    ``chain.pem`` are written; with ``csr`` (a path or parsed CSR) no key file is written.
    Example::

        add_device(Workspace(Path("~/fleet")), "pump-0042", model="p200", out_dir=Path("ids"))
    """
    validate_device_id(device_id)
    validate_text_field("model", model)
    validate_text_field("serial", serial)
    for key, value in (labels or {}).items():
        validate_label(key, value)
    validate_key_type(key_type)
    chosen_profile = load_profile(profile, ws.home)
    request = read_csr_file(csr, device_id) if isinstance(csr, Path) else csr
    if request is not None:
        ca.check_csr(request, device_id)
    out = (out_dir or Path.cwd()) / device_id
    engine = ws.open_registry()
    with read_session(engine) as session:
        if session.get(Device, device_id) is not None:
            raise Conflict(f"device {device_id!r} already exists")
        if clouds:
            jobs.validate_clouds_exist(session, clouds)
    if out.exists():
        raise Conflict(f"{out} already exists; move it away or choose another --out")
    issuer = ca.load_issuer(ws.home, require_passphrase(passphrase))

    now = datetime.now(UTC)
    identity = make_identity(
        issuer, device_id, chosen_profile, key_type=key_type, csr=request, now=now
    )
    device = Device(
        id=device_id,
        model=model,
        serial=serial,
        labels=dict(labels or {}),
        status="active",
        created_at=now,
        updated_at=now,
    )
    cert_row = certificate_row(device_id, identity, chosen_profile.name, now)
    staged = stage_identity(out.parent, device_id, identity, issuer)
    try:
        with write_session(engine) as session:
            session.add(device)
            session.flush()
            session.add(cert_row)
            audit.append(
                session,
                "device.add",
                device_id,
                {**device_details(device), "certificate": certificate_details(cert_row)},
                at=now,
            )
            if clouds:
                jobs.enqueue_register(session, [device_id], clouds, now=now)
            staged.publish()
        staged.commit()
    except IntegrityError as exc:
        staged.rollback()
        raise Conflict(f"device {device_id!r} already exists") from exc
    except BaseException:
        staged.rollback()
        raise
    return device_to_dict(device, [cert_row], now)


def get_device_row(session: Session, device_id: str) -> Device:
    """The device row, or :class:`NotFound`."""
    device = session.get(Device, device_id)
    if device is None:
        raise NotFound(f"no device {device_id!r} in the registry")
    return device


def device_certificates(session: Session, device_id: str) -> list[Certificate]:
    """All certificates ever issued to a device."""
    query = select(Certificate).where(Certificate.device_id == device_id)
    return list(session.exec(query).all())


def show_device(ws: Workspace, device_id: str) -> dict[str, Any]:
    """A device with all its certificates, as JSON-ready data."""
    with read_session(ws.open_registry()) as session:
        device = get_device_row(session, device_id)
        return device_to_dict(device, device_certificates(session, device_id))


def iter_devices(
    ws: Workspace,
    *,
    model: str | None = None,
    labels: dict[str, str] | None = None,
    status: str | None = None,
    batch_size: int = 1000,
) -> Iterator[dict[str, Any]]:
    """Devices matching every filter, ordered by ID, streamed in batches with certificates."""
    if status is not None and status not in DEVICE_STATUSES:
        raise InvalidInput(f"device status must be one of {', '.join(DEVICE_STATUSES)}")
    for key, value in (labels or {}).items():
        validate_label(key, value)
    engine = ws.open_registry()
    now = datetime.now(UTC)
    last_id = ""
    while True:
        with read_session(engine) as session:
            query = select(Device).where(Device.id > last_id)
            if model is not None:
                query = query.where(Device.model == model)
            if status is not None:
                query = query.where(Device.status == status)
            labels_column = Device.__table__.c.labels  # type: ignore[attr-defined]
            for key, value in (labels or {}).items():
                query = query.where(labels_column[key].as_string() == value)
            rows = list(session.exec(query.order_by(Device.id).limit(batch_size)).all())
            if not rows:
                return
            ids = [d.id for d in rows]
            cert_query = select(Certificate).where(col(Certificate.device_id).in_(ids))
            by_device: dict[str, list[Certificate]] = {i: [] for i in ids}
            for cert in session.exec(cert_query):
                by_device[cert.device_id].append(cert)
            batch = [device_to_dict(d, by_device[d.id], now) for d in rows]
        yield from batch
        last_id = rows[-1].id


def list_devices(
    ws: Workspace,
    *,
    model: str | None = None,
    labels: dict[str, str] | None = None,
    status: str | None = None,
) -> list[dict[str, Any]]:
    """All devices matching the filters (see :func:`iter_devices` to stream)."""
    return list(iter_devices(ws, model=model, labels=labels, status=status))


def update_device(
    ws: Workspace,
    device_id: str,
    *,
    model: str | None = None,
    serial: str | None = None,
    set_labels: dict[str, str] | None = None,
    remove_labels: Sequence[str] = (),
) -> dict[str, Any]:
    """Change a device's model, serial or labels; the audit event records old and new."""
    validate_text_field("model", model)
    validate_text_field("serial", serial)
    for key, value in (set_labels or {}).items():
        validate_label(key, value)
    now = datetime.now(UTC)
    with write_session(ws.open_registry()) as session:
        device = get_device_row(session, device_id)
        if device.status != "active":
            raise Conflict(f"device {device_id!r} is decommissioned and cannot be changed")
        before = device_details(device)
        labels = dict(device.labels)
        for key in remove_labels:
            if key not in labels:
                raise NotFound(f"device {device_id!r} has no label {key!r}")
            del labels[key]
        labels.update(set_labels or {})
        if model is not None:
            device.model = model
        if serial is not None:
            device.serial = serial
        device.labels = labels
        after = device_details(device)
        if after == before:
            raise InvalidInput(
                "nothing to change: give --model, --serial, --label or --remove-label"
            )
        device.updated_at = now
        session.add(device)
        changes = {k: {"from": before[k], "to": after[k]} for k in after if after[k] != before[k]}
        audit.append(session, "device.update", device_id, {**after, "changes": changes}, at=now)
        session.flush()
        return device_to_dict(device, device_certificates(session, device_id), now)


def decommission_device(
    ws: Workspace, device_id: str, *, reason: str | None = None
) -> dict[str, Any]:
    """Retire a device: revoke its active certificates (cessationOfOperation), keep its row."""
    validate_text_field("reason", reason, limit=256)
    now = datetime.now(UTC)
    with write_session(ws.open_registry()) as session:
        device = get_device_row(session, device_id)
        if device.status == "decommissioned":
            raise Conflict(f"device {device_id!r} is already decommissioned")
        certificates = device_certificates(session, device_id)
        active = [c for c in certificates if c.status == "active"]
        device.status = "decommissioned"
        device.decommissioned_at = now
        device.decommission_reason = reason
        device.updated_at = now
        session.add(device)
        revoke_rows(session, active, "cessationOfOperation", now)

        jobs.enqueue_deregister(session, [device_id], now=now)
        audit.append(
            session,
            "device.decommission",
            device_id,
            {"reason": reason, "revoked": [c.serial for c in active], "status": device.status},
            at=now,
        )
        session.flush()
        return device_to_dict(device, certificates, now)
