"""fleet: device-fleet provisioning and management.

The package is a library first; :mod:`fleet.cli` is a thin typer layer over it. The names
below are its public interface::

    import fleet

    ws = fleet.Workspace(home=Path("~/acme").expanduser())
    fleet.init_workspace(ws, name="Acme Pumps", passphrase="...")
    fleet.add_device(ws, "pump-0001", model="p200", out_dir=Path("ids"))

Each name loads its module on first use, so ``import fleet`` (and ``fleet --version``) stays
free of the database, crypto and HTTP libraries. Bulk provisioning is
``fleet.provision.provision`` (the name ``fleet.provision`` is its package).
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# Public name -> the module that defines it: the one place to change when a module moves.
_PUBLIC_NAMES: dict[str, str] = {
    "Workspace": "fleet.workspace",
    "FleetError": "fleet.errors",
    "InvalidInput": "fleet.errors",
    "NotFound": "fleet.errors",
    "Conflict": "fleet.errors",
    "RegistryError": "fleet.errors",
    "AuthError": "fleet.errors",
    "IntegrityError": "fleet.errors",
    "init_workspace": "fleet.pki.authority",
    "ca_info": "fleet.pki.authority",
    "ca_chain_pem": "fleet.pki.authority",
    "ca_root_pem": "fleet.pki.authority",
    "publish_crl": "fleet.pki.crl",
    "upgrade_registry": "fleet.registry.migrations",
    "UpgradeResult": "fleet.registry.migrations",
    "SchemaRevision": "fleet.registry.migrations",
    "DeviceView": "fleet.views",
    "CertificateView": "fleet.views",
    "CaInfo": "fleet.views",
    "CaCertificateSummary": "fleet.views",
    "InitResult": "fleet.views",
    "add_device": "fleet.devices",
    "show_device": "fleet.devices",
    "list_devices": "fleet.listing",
    "iter_devices": "fleet.listing",
    "count_devices": "fleet.listing",
    "update_device": "fleet.devices",
    "decommission_device": "fleet.devices",
    "list_certificates": "fleet.listing",
    "iter_certificates": "fleet.listing",
    "count_certificates": "fleet.listing",
    "renew_certificate": "fleet.certs",
    "revoke_certificate": "fleet.certs",
    "ProvisionSummary": "fleet.provision",
    "export_devices": "fleet.export",
    "export_audit": "fleet.export",
    "verify_export": "fleet.export",
    "VerifyReport": "fleet.export",
    "iter_audit_events": "fleet.registry.audit",
    "count_audit_events": "fleet.registry.audit",
    "verify_audit": "fleet.registry.audit",
    "VerifyResult": "fleet.registry.audit",
    "add_cloud": "fleet.cloud.clouds",
    "list_clouds": "fleet.cloud.clouds",
    "remove_cloud": "fleet.cloud.clouds",
    "show_cloud": "fleet.cloud.clouds",
    "push": "fleet.cloud.push",
    "sync": "fleet.cloud.status",
    "iter_status": "fleet.cloud.status",
    "count_status": "fleet.cloud.status",
    "PushReport": "fleet.cloud.push",
    "SyncReport": "fleet.cloud.status",
    "CloudView": "fleet.cloud.views",
    "CloudDetail": "fleet.cloud.views",
    "RemovedCloud": "fleet.cloud.views",
    "RegisterResult": "fleet.cloud.views",
    "RegistrationView": "fleet.cloud.views",
    "QueuedJob": "fleet.cloud.views",
    "drift": "fleet.cloud.drift",
    "DriftReport": "fleet.cloud.drift",
    "DriftFinding": "fleet.cloud.drift",
    "fleet_status": "fleet.status.summary",
    "FleetStatus": "fleet.status.summary",
    "OnboardingSession": "fleet.onboard.session",
    "OnboardSummary": "fleet.onboard.session",
    "make_label": "fleet.onboard.labels",
    "BundleFormat": "fleet.pki.bundles",
}

__all__ = list(_PUBLIC_NAMES)


def __getattr__(name: str) -> Any:
    """Load a public name's module on first use (PEP 562), then keep the name here."""
    module = _PUBLIC_NAMES.get(name)
    if module is None:
        raise AttributeError(f"module 'fleet' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_PUBLIC_NAMES})
