"""Revocation: marking certificates revoked in the registry, and the CRLs that publish it.

A relying party that checks CRLs (a Mosquitto broker with ``crlfile``) refuses every client
once its CRL's next update has passed, so a CRL file must be kept current:
:func:`write_crl_file` with ``if_due_within`` re-issues it only when it is due (missing,
another CA's, expiring within the window, or missing a revocation made since it was
issued), and can signal the process that reads it to reload it.
"""

from __future__ import annotations

import json
import os
import signal
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from sqlalchemy import func
from sqlmodel import Session, col, select

from fleet import clock
from fleet.errors import FleetError, IntegrityError, InvalidInput
from fleet.files import PendingFile
from fleet.pki import ca
from fleet.pki.issuer import Issuer
from fleet.pki.keys import authority_key_identifier
from fleet.registry import audit
from fleet.registry.db import read_session, write_session
from fleet.registry.models import AuditEvent, Certificate, CrlRecord
from fleet.statuses import CertStatus
from fleet.views import iso
from fleet.workspace import Passphrase, Workspace, require_passphrase

CRL_VALIDITY = timedelta(days=7)
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


def revoke_rows(session: Session, rows: Sequence[Certificate], reason: str, now: datetime) -> None:
    """Mark ``rows`` revoked (used inside a caller's transaction; no audit event)."""
    for row in rows:
        row.status = CertStatus.REVOKED
        row.revoked_at = now
        row.revocation_reason = reason
        session.add(row)


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
    now = now or clock.now()
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(issuer.cert.subject)
        .last_update(now)
        .next_update(now + CRL_VALIDITY)
        .add_extension(x509.CRLNumber(number), critical=False)
        .add_extension(authority_key_identifier(issuer.cert), critical=False)
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
    return issuer.sign_crl(builder)


# The events that revoke certificates, and where their details name the serials.
_REVOKING_ACTIONS = ("cert.revoke", "cert.renew", "device.decommission")


def recorded_revocations(session: Session) -> dict[str, int]:
    """Serial -> the audit event that revoked it, for every revocation the trail records."""
    events = session.exec(
        select(AuditEvent.seq, AuditEvent.details)
        .where(col(AuditEvent.action).in_(_REVOKING_ACTIONS))
        .order_by(col(AuditEvent.seq))
    ).all()
    revoked: dict[str, int] = {}
    for seq, details_text in events:
        details = json.loads(details_text)
        serials = [details["serial"]] if "serial" in details else details.get("revoked") or []
        for serial in serials:
            revoked.setdefault(str(serial), seq)
    return revoked


def check_revocations_kept(session: Session, listed: set[str], number: int, now: datetime) -> None:
    """Refuse (:class:`IntegrityError`) a CRL that leaves out a certificate the audit trail
    records as revoked, unless that certificate has expired: revocations only ever grow, so
    a row un-revoked behind fleet's back cannot make a revoked device trusted again."""
    for serial, seq in recorded_revocations(session).items():
        if serial in listed:
            continue
        row = session.get(Certificate, serial)
        if row is not None and row.not_after <= now:
            continue
        state = "is missing from the registry" if row is None else f"is {row.status} there"
        raise IntegrityError(
            f"refusing to publish CRL {number}: certificate {serial} was revoked (audit event "
            f"{seq}) but {state}; run `fleet audit verify --state`"
        )


def crl_pem(crl: x509.CertificateRevocationList) -> bytes:
    """PEM encoding of a CRL."""
    return crl.public_bytes(serialization.Encoding.PEM)


def publish_crl(
    ws: Workspace, *, passphrase: Passphrase | None = None, issuer: Issuer | None = None
) -> bytes:
    """Sign a new CRL (next CRL number) listing every revoked certificate; returns PEM.
    ``issuer``: the issuing CA already loaded (else it is, with ``passphrase``)."""
    if issuer is None:
        issuer = ca.load_issuer(ws.home, require_passphrase(passphrase))
    now = clock.now()
    with write_session(ws.open_registry()) as session:
        last = session.exec(select(func.max(CrlRecord.number))).one()
        number = (last or 0) + 1
        revoked_query = (
            select(Certificate.serial, Certificate.revoked_at, Certificate.revocation_reason)
            .where(Certificate.status == CertStatus.REVOKED)
            .order_by(col(Certificate.revoked_at))
        )
        entries = [
            RevokedEntry(serial, revoked_at, reason)
            for serial, revoked_at, reason in session.exec(revoked_query).all()
            if revoked_at is not None
        ]
        check_revocations_kept(session, {entry.serial for entry in entries}, number, now)
        crl = build_crl(issuer, entries, number, now=now)
        session.add(
            CrlRecord(
                number=number,
                this_update=now,
                next_update=crl.next_update_utc or now,
                revoked_count=len(entries),
            )
        )
        audit.append(
            session,
            "ca.crl",
            f"crl-{number}",
            {"number": number, "revoked_count": len(entries)},
            at=now,
        )
    return crl_pem(crl)


# --- keeping a CRL file current (`fleet ca crl --out FILE --if-due`) -------------------------

PIDFILE_MAX = 64


@dataclass(frozen=True)
class CrlFileResult:
    """What :func:`write_crl_file` did: whether it issued a CRL, why (or why not), the CRL
    the file now holds, and the process it signalled to reload it."""

    path: Path
    issued: bool
    reason: str
    number: int | None
    next_update: datetime | None
    reloaded_pid: int | None = None

    def to_dict(self) -> dict[str, Any]:
        """The JSON shape (``fleet ca crl --out FILE --if-due --json``)."""
        return {
            "out": str(self.path),
            "issued": self.issued,
            "reason": self.reason,
            "crl_number": self.number,
            "next_update": iso(self.next_update),
            "reloaded_pid": self.reloaded_pid,
        }


def crl_number(crl: x509.CertificateRevocationList) -> int | None:
    """A CRL's CRL number, or ``None`` when it has none."""
    try:
        return int(crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number)
    except x509.ExtensionNotFound:
        return None


def crl_due(
    ws: Workspace, path: Path, within: timedelta, *, now: datetime | None = None
) -> tuple[str | None, x509.CertificateRevocationList | None]:
    """Why the CRL file ``path`` needs re-issuing (``None`` if it does not), and the CRL it
    holds if it is this CA's. Due: no file, not a CRL, not signed by the issuing CA, no next
    update, a next update within ``within`` of ``now`` (or past), or a certificate revoked
    since it was issued that it does not list."""
    now = now or clock.now()
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return f"there is no CRL at {path}", None
    except OSError as exc:
        raise InvalidInput(f"cannot read {path}: {exc.strerror}") from exc
    try:
        crl = x509.load_pem_x509_crl(data)
    except ValueError:
        return f"{path} holds no PEM CRL", None
    issuing, _root = ca.load_ca_certificates(ws.home)
    if crl.issuer != issuing.subject or not crl.is_signature_valid(issuing.public_key()):  # type: ignore[arg-type]
        return f"the CRL in {path} was not signed by this workspace's issuing CA", None
    label = f"CRL {crl_number(crl)}"
    next_update = crl.next_update_utc
    if next_update is None:
        return f"{label} has no next update", crl
    if next_update <= now:
        return f"{label} expired at {iso(next_update)}", crl
    if next_update - now <= within:
        return f"{label}'s next update {iso(next_update)} is within {_span(within)}", crl
    # CRL times are whole seconds, revocation times are not: look a second further back.
    since = crl.last_update_utc - timedelta(seconds=1)
    with read_session(ws.open_registry()) as session:
        serials = session.exec(
            select(Certificate.serial).where(
                Certificate.status == CertStatus.REVOKED, col(Certificate.revoked_at) >= since
            )
        ).all()
    missing = [
        s for s in serials if crl.get_revoked_certificate_by_serial_number(int(s, 16)) is None
    ]
    if missing:
        return f"{label} misses {len(missing)} revocation(s) made since it was issued", crl
    return None, crl


def write_crl_file(
    ws: Workspace,
    path: Path,
    *,
    if_due_within: timedelta | None = None,
    reload_pidfile: Path | None = None,
    passphrase: Passphrase | None = None,
) -> CrlFileResult:
    """Write a new CRL to ``path`` (all or nothing); with ``if_due_within``, only when
    :func:`crl_due` says it is due (the passphrase is asked for only then). With
    ``reload_pidfile``, the process it names gets SIGHUP after a new CRL is written (Mosquitto
    then re-reads its ``crlfile``; connections already open stay open). Example::

        write_crl_file(ws, Path("/etc/mosquitto/fleet/crl.pem"),
                       if_due_within=timedelta(hours=24),
                       reload_pidfile=Path("/run/mosquitto/mosquitto.pid"))
    """
    pid = _read_pidfile(reload_pidfile) if reload_pidfile is not None else None
    if if_due_within is not None:
        reason, current = crl_due(ws, path, if_due_within)
        if reason is None and current is not None:
            return CrlFileResult(
                path,
                issued=False,
                reason=f"CRL {crl_number(current)} is current (next update "
                f"{iso(current.next_update_utc)}, no revocation since)",
                number=crl_number(current),
                next_update=current.next_update_utc,
            )
    else:
        reason = "requested"
    # Created (empty, under a temporary name) before the CRL number is taken: an unwritable
    # file fails with nothing recorded.
    with PendingFile(path) as pending:
        data = publish_crl(ws, passphrase=passphrase)
        pending.write(data)
        pending.commit()
    crl = x509.load_pem_x509_crl(data)
    result = CrlFileResult(
        path, True, reason or "due", crl_number(crl), crl.next_update_utc, reloaded_pid=pid
    )
    if pid is not None:
        try:
            os.kill(pid, signal.SIGHUP)
        except OSError as exc:
            raise FleetError(
                f"wrote CRL {result.number} to {path}, but could not signal process {pid} "
                f"(from {reload_pidfile}) to reload it: {exc.strerror}"
            ) from exc
    return result


def _read_pidfile(path: Path) -> int:
    """The process ID in ``path`` (checked before anything is signed)."""
    try:
        with path.open("rb") as handle:
            text = handle.read(PIDFILE_MAX + 1).decode("ascii", "replace").strip()
    except OSError as exc:
        raise InvalidInput(f"cannot read the PID file {path}: {exc.strerror}") from exc
    if not text.isdigit() or not 1 < int(text) < 2**22 or len(text) > PIDFILE_MAX:
        raise InvalidInput(f"the PID file {path} holds no process ID")
    return int(text)


def _span(span: timedelta) -> str:
    seconds = int(span.total_seconds())
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        # a day or two reads better in hours (24h, as --within's default says)
        if seconds % size == 0 and seconds >= (2 * size if unit == "d" else size):
            return f"{seconds // size}{unit}"
    return f"{seconds}s"
