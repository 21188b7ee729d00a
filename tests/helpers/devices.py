"""Devices for tests: added to a registry, or as the record a cloud backend receives."""

from __future__ import annotations

from pathlib import Path

from fleet import devices
from fleet.cloud.base import DeviceRecord
from fleet.pki.issue import issue_certificate
from fleet.pki.issuer import Issuer
from fleet.pki.profiles import load_profile
from fleet.statuses import DeviceStatus
from fleet.workspace import Workspace


def add_devices(
    ws: Workspace, tmp_path: Path, count: int, clouds: tuple[str, ...] = ()
) -> list[str]:
    """Add ``dev-0000`` ... (bundles under ``tmp_path/out``), queued on ``clouds``."""
    ids = [f"dev-{i:04d}" for i in range(count)]
    for device_id in ids:
        devices.add_device(ws, device_id, out_dir=tmp_path / "out", clouds=clouds)
    return ids


def device_record(
    issuer: Issuer,
    device_id: str,
    *,
    model: str | None = "gw-200",
    serial: str | None = "SN-0001",
    labels: dict[str, str] | None = None,
) -> DeviceRecord:
    """An active device with a NEW certificate (fresh key) from ``issuer``, so two calls for
    one ID conflict. Labels default to ``{"site": "hamburg"}``."""
    issued = issue_certificate(issuer, device_id, load_profile("default"))
    return DeviceRecord(
        device_id=device_id,
        model=model,
        serial=serial,
        labels={"site": "hamburg"} if labels is None else labels,
        status=DeviceStatus.ACTIVE,
        certificate_pem=issued.cert_pem,
        certificate_serial=issued.serial,
        fingerprint_sha256=issued.fingerprint_sha256,
    )
