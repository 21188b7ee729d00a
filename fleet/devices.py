"""Devices: add (with an identity), update, show, decommission (lists: :mod:`fleet.listing`).

``add`` records before it publishes: the new key is staged, the registry rows and audit
event commit, and only then is the certificate written and the bundle renamed into place
(:mod:`fleet.pki.bundles`); a re-run finishes what a killed run left.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, select

from fleet import clock, faults
from fleet.errors import Conflict, InvalidInput, NotFound
from fleet.identifiers import validate_device_id, validate_label, validate_text_field
from fleet.registry import audit
from fleet.registry.db import read_session, write_session
from fleet.registry.models import Certificate, Device
from fleet.statuses import CertStatus, DeviceStatus
from fleet.views import DeviceView
from fleet.workspace import Passphrase, Workspace, require_passphrase

if TYPE_CHECKING:
    # cryptography, profiles and the cloud tables load only for the commands that issue,
    # revoke or queue cloud jobs: not for show and list
    from cryptography import x509

    from fleet.pki.bundles import BundleFormat, StagedBundle
    from fleet.pki.issue import IssuedCertificate
    from fleet.pki.issuer import Issuer


def stage_identity(out_dir: Path, device_id: str, issued: IssuedCertificate) -> StagedBundle:
    """Stage an identity's key (if generated) and pending serial; no certificate yet."""
    from fleet.pki.bundles import stage_bundle

    return stage_bundle(out_dir, device_id, key_pem=issued.key_pem, serial=issued.serial)


def publish_identity(
    staged: StagedBundle,
    issued: IssuedCertificate,
    issuer: Issuer,
    *,
    replace: bool,
    bundle_format: BundleFormat | None = None,
) -> None:
    """After the commit: write the certificate and chain (a PKCS#12 file too with the ``p12``
    ``bundle_format``, made :meth:`~fleet.pki.bundles.BundleFormat.ready` by the caller),
    rename the bundle into place (``replace``: setting aside, then removing, the one there --
    a renewal)."""
    from fleet.pki.bundles import PEM

    faults.hit("after-commit")
    try:
        staged.complete(issued.cert_pem.encode("ascii"), issuer.chain_pem, bundle_format or PEM)
        staged.publish(replace=replace)
    except OSError as exc:
        raise InvalidInput(
            f"cannot publish the bundle in {staged.final.parent}: {exc.strerror}; the "
            f"certificate is recorded: run the command again to finish"
        ) from exc


def validate_key_type(key_type: str | None) -> str | None:
    """Check a ``--key-type`` value."""
    from fleet.pki.profiles import KEY_TYPES

    if key_type is not None and key_type not in KEY_TYPES:
        raise InvalidInput(f"key type must be one of {', '.join(KEY_TYPES)}")
    return key_type


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
    issuer: Issuer | None = None,
    bundle_format: BundleFormat | None = None,
) -> DeviceView:
    """Register a device and issue its identity in one transaction; return its view.

    The registry records the certificate before its bundle is published; a run killed in
    between is finished by the next ``add_device`` of the same ID and folder, which then
    returns the recorded device.

    ``clouds``: queue its registration on these clouds in the same transaction (pushed by
    ``fleet cloud sync``); unknown names are refused before anything is written.

    Without ``csr`` a key is generated and ``out_dir/ID/key.pem`` (0600), ``cert.pem`` and
    ``chain.pem`` are written; with ``csr`` (a path or parsed CSR) no key file is written.
    ``bundle_format`` p12 writes ``bundle.p12`` (0600) in place of ``key.pem``.

    ``issuer``: an already unlocked CA (an onboarding session signs many devices with one);
    without it the CA is unlocked with ``passphrase`` once the request is known to be valid.
    Example::

        add_device(Workspace(Path("~/fleet")), "pump-0042", model="p200", out_dir=Path("ids"))
    """
    from fleet.cloud import jobs
    from fleet.pki import ca
    from fleet.pki.csr import request_for
    from fleet.pki.issue import certificate_row, check_issuable, issue_certificate
    from fleet.pki.profiles import load_profile

    validate_device_id(device_id)
    _validate_attributes(model, serial, labels)
    validate_key_type(key_type)
    chosen_profile = load_profile(profile, ws.home)
    request = request_for(csr, device_id)
    check_issuable(chosen_profile, device_id, key_type=key_type, csr=request)
    out = (out_dir or Path.cwd()) / device_id
    engine = ws.open_registry()
    finished = _finish_interrupted_add(ws, engine, out, bundle_format)
    if finished is not None:
        return finished
    with read_session(engine) as session:
        if session.get(Device, device_id) is not None:
            raise Conflict(f"device {device_id!r} already exists")
        if clouds:
            jobs.validate_clouds_exist(session, clouds)
    if os.path.lexists(out):  # a dangling symlink too
        raise Conflict(f"{out} already exists; move it away or choose another --out")
    chosen_format = bundle_format.ready() if bundle_format is not None else None
    if issuer is None:
        issuer = ca.load_issuer(ws.home, require_passphrase(passphrase))

    now = clock.now()
    issued = issue_certificate(
        issuer, device_id, chosen_profile, key_type=key_type, csr=request, now=now
    )
    device = Device(
        id=device_id,
        model=model,
        serial=serial,
        labels=dict(labels or {}),
        status=DeviceStatus.ACTIVE,
        created_at=now,
        updated_at=now,
    )
    cert_row = certificate_row(device_id, issued, chosen_profile.name, now)
    staged = stage_identity(out.parent, device_id, issued)
    try:
        _record_new_device(engine, device, cert_row, clouds, now)
    except IntegrityError as exc:
        staged.discard()
        raise Conflict(f"device {device_id!r} already exists") from exc
    except BaseException:
        staged.discard()
        raise
    publish_identity(staged, issued, issuer, replace=False, bundle_format=chosen_format)
    return DeviceView.from_rows(device, [cert_row], now)


def _finish_interrupted_add(
    ws: Workspace, engine: Engine, out: Path, bundle_format: BundleFormat | None
) -> DeviceView | None:
    """Clear what killed runs left for this device in ``out``'s folder; if one had recorded
    it, its bundle is now published (in ``bundle_format``): return the device."""
    from fleet.pki.bundles import PEM, recover_in

    finished = recover_in(ws.home, engine, out.parent, out.name, bundle_format or PEM)
    if not any(item.action == "publish" for item in finished):
        return None
    with read_session(engine) as session:
        device = session.get(Device, out.name)
        if device is None:
            return None
        return DeviceView.from_rows(device, device_certificates(session, out.name), clock.now())


def _validate_attributes(
    model: str | None, serial: str | None, labels: dict[str, str] | None
) -> None:
    validate_text_field("model", model)
    validate_text_field("serial", serial)
    for key, value in (labels or {}).items():
        validate_label(key, value)


def _record_new_device(
    engine: Engine,
    device: Device,
    cert_row: Certificate,
    clouds: Sequence[str],
    now: datetime,
) -> None:
    """One transaction: the rows, the audit event, cloud jobs (the bundle is published by
    the caller once this commits)."""
    from fleet.cloud import jobs
    from fleet.pki.issue import certificate_details, device_details

    with write_session(engine) as session:
        session.add(device)
        session.flush()
        session.add(cert_row)
        audit.append(
            session,
            "device.add",
            device.id,
            {**device_details(device), "certificate": certificate_details(cert_row)},
            at=now,
        )
        if clouds:
            jobs.enqueue_register(session, [device.id], clouds, now=now)
        session.flush()
        faults.hit("before-commit")


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


def show_device(ws: Workspace, device_id: str) -> DeviceView:
    """A device with all its certificates, its connection state, its firmware and its clouds
    (see :func:`fleet.device_show.show_device`: the view is built there, from plain
    queries)."""
    from fleet.device_show import show_device as show

    return show(ws, device_id)


def update_device(
    ws: Workspace,
    device_id: str,
    *,
    model: str | None = None,
    serial: str | None = None,
    set_labels: dict[str, str] | None = None,
    remove_labels: Sequence[str] = (),
) -> DeviceView:
    """Change a device's model, serial or labels; the audit event records old and new."""
    from fleet.pki.issue import device_details

    _validate_attributes(model, serial, set_labels)
    now = clock.now()
    with write_session(ws.open_registry()) as session:
        device = get_device_row(session, device_id)
        if device.status != DeviceStatus.ACTIVE:
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
        return DeviceView.from_rows(device, device_certificates(session, device_id), now)


def decommission_device(ws: Workspace, device_id: str, *, reason: str | None = None) -> DeviceView:
    """Retire a device: revoke its active certificates (cessationOfOperation), keep its row."""
    from fleet.cloud import jobs
    from fleet.pki.crl import revoke_rows

    validate_text_field("reason", reason, limit=256)
    now = clock.now()
    with write_session(ws.open_registry()) as session:
        device = get_device_row(session, device_id)
        if device.status == DeviceStatus.DECOMMISSIONED:
            raise Conflict(f"device {device_id!r} is already decommissioned")
        certificates = device_certificates(session, device_id)
        active = [c for c in certificates if c.status == CertStatus.ACTIVE]
        device.status = DeviceStatus.DECOMMISSIONED
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
        return DeviceView.from_rows(device, certificates, now)
