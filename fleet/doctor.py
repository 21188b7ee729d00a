"""``fleet doctor``: find (and with ``fix`` finish) what interrupted issuing runs left.

It checks an output folder and the CA folder for:

* staged bundles whose certificate the registry records but that never reached ``OUT/ID``
  (a run killed after its commit): ``fix`` completes them from the registry's copy of the
  certificate and publishes them;
* staged bundles whose certificate the registry does not know (a run killed before its
  commit): they hold no certificate, only a key nothing vouches for (or, from an older
  fleet, an unrecorded certificate); ``fix`` removes them;
* bundles a renewal set aside (``OUT/.ID.old-*``): ``fix`` removes them once ``OUT/ID``
  holds the new bundle, and puts them back otherwise;
* certificates this CA signed that the registry (or, for the export signer and a broker's
  host identity, the audit trail) does not know, in place in ``OUT/ID`` or in the CA
  folder. ``fix`` never touches these: it cannot vouch for where their key has been. They
  are reported with serial and path so an operator can destroy the key (and, if it left
  the machine, rotate the CA).

Folders of processes still running are left alone. Nothing needs the CA passphrase.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography import x509
from sqlalchemy import Engine
from sqlmodel import col, select

from fleet.pki import ca
from fleet.pki.bundles import (
    CERT_FILE,
    Leftover,
    find_leftovers,
    recover,
    registry_lookup,
)
from fleet.pki.keys import cert_pem, serial_hex, verify_issued_by
from fleet.pki.signers import SIGNER_CERT_FILE
from fleet.registry.db import read_session
from fleet.registry.models import AuditEvent
from fleet.workspace import Workspace


@dataclass(frozen=True)
class Unrecorded:
    """A certificate this CA signed that nothing in the registry records."""

    serial: str
    path: str

    def to_dict(self) -> dict[str, str]:
        """The JSON shape."""
        return {"serial": self.serial, "path": self.path}


@dataclass
class DoctorReport:
    """What :func:`check` found (and, with ``fixed``, did)."""

    out_dir: str
    fixed: bool
    leftovers: list[Leftover] = field(default_factory=list)
    unrecorded: list[Unrecorded] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """Nothing left to do: no leftovers (or all fixed), no unrecorded certificate."""
        pending = [i for i in self.leftovers if not self.fixed or i.action == "blocked"]
        return not pending and not self.unrecorded

    def to_dict(self) -> dict[str, Any]:
        """The JSON shape (``fleet doctor --json``)."""
        return {
            "out_dir": self.out_dir,
            "ok": self.ok,
            "fixed": self.fixed,
            "leftovers": [i.to_dict() for i in self.leftovers],
            "unrecorded": [u.to_dict() for u in self.unrecorded],
        }


def check(ws: Workspace, out_dir: Path, *, fix: bool = False) -> DoctorReport:
    """Check ``out_dir`` (and the CA folder); with ``fix``, finish what can be finished
    safely (see the module's docstring). Example::

        report = check(Workspace(Path("~/fleet")), Path("ids"), fix=True)
    """
    engine = ws.open_registry()
    lookup = registry_lookup(engine)
    issuing, root = ca.load_ca_certificates(ws.home)
    if fix:
        leftovers = recover(out_dir, lookup, cert_pem(issuing) + cert_pem(root))
    else:
        leftovers = find_leftovers(out_dir, lookup)
    report = DoctorReport(str(out_dir), fix, leftovers)
    folders = (
        sorted(p for p in out_dir.iterdir() if not p.name.startswith("."))
        if (out_dir.is_dir())
        else []
    )
    for path in [f / CERT_FILE for f in folders if f.is_dir()]:
        serial = _signed_serial(path, issuing)
        # a broker's host identity (`fleet broker mosquitto`: OUT/host/cert.pem) has no
        # device: the audit trail alone records it
        if serial is not None and lookup(serial) is None and not _in_trail(engine, serial):
            report.unrecorded.append(Unrecorded(serial, str(path)))
    signer = ca.ca_dir(ws.home) / SIGNER_CERT_FILE
    serial = _signed_serial(signer, issuing)
    if serial is not None and not _in_trail(engine, serial, ("ca.export_signer",)):
        report.unrecorded.append(Unrecorded(serial, str(signer)))
    return report


# The audit events that record certificates the CA issued to no device.
OWN_CERTIFICATE_ACTIONS = ("ca.export_signer", "ca.server_cert", "ca.host_cert")


def _in_trail(
    engine: Engine, serial: str, actions: tuple[str, ...] = OWN_CERTIFICATE_ACTIONS
) -> bool:
    """Whether one of the audit events ``actions`` records the certificate ``serial``."""
    with read_session(engine) as session:
        query = select(AuditEvent.seq).where(
            col(AuditEvent.action).in_(actions),
            col(AuditEvent.details).contains(f'"{serial}"'),
        )
        return session.exec(query).first() is not None


def _signed_serial(path: Path, issuing: x509.Certificate) -> str | None:
    """The serial of the certificate in ``path`` if the issuing CA signed it."""
    try:
        cert = x509.load_pem_x509_certificate(path.read_bytes())
    except (OSError, ValueError):
        return None
    return serial_hex(cert.serial_number) if verify_issued_by(cert, issuing) else None
