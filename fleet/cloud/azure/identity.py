"""What a device's identity in the hub should look like, and what to do to get there (pure).

The hub's view of a device comes from ``GET /devices/{id}`` (Devices - Get Identity: ``etag``,
``status``, ``authentication``) or from a query row (Query - Get Twins: ``deviceEtag``,
``status``, ``authenticationType``, ``x509Thumbprint``, ``tags``); :func:`identity_from`
reads either. :func:`plan` compares it with the device record: create, update, nothing, or a
conflict (another certificate, or a key-based identity fleet did not make).

Thumbprints: the hub shows SHA-256 thumbprints as uppercase hex; fleet sends them so and
compares case-insensitively. During a renewal window (the device's previous certificate still
active in fleet) the previous one stays as the secondary thumbprint, so a device that has not
yet switched to its new certificate is not locked out.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from fleet.cloud.base import DeviceRecord

SELF_SIGNED = "selfSigned"
CERTIFICATE_AUTHORITY = "certificateAuthority"
# IoT Hub device IDs: up to 128 of letters, digits and - . % _ * ? ! ( ) , : = @ $ '
DEVICE_ID_RE = re.compile(r"^[A-Za-z0-9\-.%_*?!(),:=@$']{1,128}$")
_TAG_KEY_BAD = re.compile(r"[.$ #%]")


class Action(StrEnum):
    """What registering a device takes."""

    CREATE = "create"
    UPDATE = "update"
    NOTHING = "nothing"
    CONFLICT = "conflict"


@dataclass(frozen=True)
class Identity:
    """The parts of a hub device identity fleet looks at."""

    device_id: str
    auth_type: str
    primary: str | None  # uppercase hex thumbprints
    secondary: str | None
    enabled: bool
    etag: str
    connected: bool | None
    tags: dict[str, Any]
    twin: Mapping[str, Any]  # the query row (twin) when read from a query, else {}


@dataclass(frozen=True)
class Plan:
    """What to send for one device (``body``: the identity as PUT or import takes it)."""

    action: Action
    body: dict[str, Any]
    tags: dict[str, Any]
    reason: str = ""


def thumbprint(fingerprint_hex: str) -> str | None:
    """A fingerprint as the hub shows thumbprints (uppercase hex), None for ''."""
    return fingerprint_hex.upper() if fingerprint_hex else None


def _upper(value: Any) -> str | None:
    return str(value).upper() if isinstance(value, str) and value else None


def identity_from(data: Mapping[str, Any]) -> Identity:
    """An :class:`Identity` from a device identity or a twin query row."""
    auth = data.get("authentication")
    if isinstance(auth, Mapping):
        auth_type = str(auth.get("type") or "")
        prints = auth.get("x509Thumbprint") or {}
        etag = str(data.get("etag") or "")
        twin: Mapping[str, Any] = {}
    else:
        auth_type = str(data.get("authenticationType") or "")
        prints = data.get("x509Thumbprint") or {}
        etag = str(data.get("deviceEtag") or "")
        twin = data
    if not isinstance(prints, Mapping):
        prints = {}
    state = data.get("connectionState")
    tags = data.get("tags")
    return Identity(
        device_id=str(data.get("deviceId") or ""),
        auth_type=auth_type,
        primary=_upper(prints.get("primaryThumbprint")) if isinstance(prints, Mapping) else None,
        secondary=_upper(prints.get("secondaryThumbprint"))
        if isinstance(prints, Mapping)
        else None,
        enabled=str(data.get("status") or "").lower() == "enabled",
        etag=etag,
        connected=None if state is None else str(state).lower() == "connected",
        tags=dict(tags) if isinstance(tags, Mapping) else {},
        twin=twin,
    )


def tag_key(label: str) -> str:
    """A label name as a twin tag name: the characters twins refuse (``. $`` space, and
    ``#``/``%`` to stay reversible) are percent-encoded."""
    return _TAG_KEY_BAD.sub(lambda m: f"%{ord(m.group()):02X}", label)


def fleet_tags(device: DeviceRecord) -> dict[str, Any]:
    """The ``fleet`` tag: model, serial, labels and the certificate fleet registered."""
    return {
        "model": device.model,
        "serial": device.serial,
        "labels": {tag_key(k): v for k, v in sorted(device.labels.items())},
        "certificate_sha256": device.fingerprint_sha256 or None,
    }


def authentication(device: DeviceRecord, mode: str) -> dict[str, Any]:
    """The ``authentication`` object: thumbprints (self-signed) or CA-signed."""
    if mode == "ca":
        return {
            "type": CERTIFICATE_AUTHORITY,
            "x509Thumbprint": {"primaryThumbprint": None, "secondaryThumbprint": None},
        }
    return {
        "type": SELF_SIGNED,
        "x509Thumbprint": {
            "primaryThumbprint": thumbprint(device.fingerprint_sha256),
            "secondaryThumbprint": thumbprint(device.previous_fingerprint_sha256),
        },
    }


def identity_body(device: DeviceRecord, mode: str, *, enabled: bool = True) -> dict[str, Any]:
    """The body of ``PUT /devices/{id}``."""
    return {
        "deviceId": device.device_id,
        "status": "enabled" if enabled else "disabled",
        "authentication": authentication(device, mode),
        "capabilities": {"iotEdge": False},
    }


def _ours(device: DeviceRecord, existing: Identity) -> bool:
    """Whether the hub's identity is this device's (its current or previous certificate)."""
    known = {p for p in (thumbprint(device.fingerprint_sha256),
                         thumbprint(device.previous_fingerprint_sha256)) if p}  # fmt: skip
    if existing.auth_type == SELF_SIGNED:
        return existing.primary in known
    if existing.auth_type == CERTIFICATE_AUTHORITY:
        tagged = existing.tags.get("fleet", {})
        registered = tagged.get("certificate_sha256") if isinstance(tagged, Mapping) else None
        return not registered or str(registered).upper() in known
    return False  # symmetric keys, or something fleet never makes


def plan(device: DeviceRecord, existing: Identity | None, mode: str) -> Plan:
    """Create, update, nothing, or conflict (see the module docstring)."""
    body = identity_body(device, mode)
    tags = fleet_tags(device)
    if existing is None:
        return Plan(Action.CREATE, body, tags)
    if not _ours(device, existing):
        what = (
            f"thumbprint {existing.primary}"
            if existing.auth_type == SELF_SIGNED
            else f"{existing.auth_type or 'unknown'} authentication"
        )
        return Plan(
            Action.CONFLICT,
            body,
            tags,
            f"device {device.device_id!r} exists in IoT Hub with another certificate ({what}): "
            "delete it there first",
        )
    wanted = body["authentication"]
    prints = wanted["x509Thumbprint"]
    same = (
        existing.enabled
        and existing.auth_type == wanted["type"]
        and (
            wanted["type"] != SELF_SIGNED
            or (existing.primary, existing.secondary)
            == (prints["primaryThumbprint"], prints["secondaryThumbprint"])
        )
    )
    return Plan(Action.NOTHING if same else Action.UPDATE, body, tags)


def tags_patch(current: Mapping[str, Any], wanted: Mapping[str, Any]) -> dict[str, Any] | None:
    """The JSON merge patch turning the twin's ``fleet`` tag into ``wanted`` (labels that went
    away become null), or None when they are equal."""
    old = current.get("fleet")
    old = dict(old) if isinstance(old, Mapping) else {}
    if old == dict(wanted):
        return None
    patch = dict(wanted)
    old_labels = old.get("labels") if isinstance(old.get("labels"), Mapping) else {}
    labels = dict(wanted.get("labels") or {})
    for key in old_labels or {}:
        labels.setdefault(key, None)
    patch["labels"] = labels
    return patch
