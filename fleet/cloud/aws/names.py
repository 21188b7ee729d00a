"""AWS IoT's naming rules and quotas, and the names and attributes fleet gives a device.

The rules are botocore's service model (iot/2015-05-28: ThingName, AttributeName,
AttributeValue, ThingGroupName, PolicyName) and AWS IoT's documented quotas. No httpx here:
``fleet cloud add`` validates options with these rules without loading the backend.
"""

from __future__ import annotations

import re

from fleet.cloud.base import DeviceRecord, PermanentError

THING_NAME_RE = re.compile(r"^[a-zA-Z0-9:_-]{1,128}$")
ATTRIBUTE_NAME_RE = re.compile(r"^[a-zA-Z0-9_.,@/:#-]{1,128}$")
ATTRIBUTE_VALUE_RE = re.compile(r"^[a-zA-Z0-9_.,@/:#=\[\]-]{0,800}$")
POLICY_NAME_RE = re.compile(r"^[\w+=,.@-]{1,128}$")
SHADOW_NAME_RE = re.compile(r"^[a-zA-Z0-9:_-]{1,64}$")
REGION_RE = re.compile(r"^[a-z]{2,5}(-[a-z]+)+-\d+$")
# Documented AWS IoT quotas: a thing without a thing type holds at most 3 attributes, one with
# a thing type at most 50.
MAX_ATTRIBUTES_UNTYPED = 3
MAX_ATTRIBUTES_TYPED = 50


def thing_name_for(device_id: str) -> str:
    """The AWS thing name of a device: its fleet ID, if AWS accepts it; else PermanentError."""
    if not THING_NAME_RE.match(device_id):
        bad = sorted({c for c in device_id if not re.match(r"[a-zA-Z0-9:_-]", c)})
        detail = f" (contains {', '.join(repr(c) for c in bad)})" if bad else ""
        raise PermanentError(
            f"device ID {device_id!r} cannot be an AWS IoT thing name{detail}: AWS allows 1-128 "
            "letters, digits, ':', '_' and '-' only"
        )
    return device_id


def _check_attribute(device_id: str, key: str, value: str) -> None:
    if not ATTRIBUTE_NAME_RE.match(key):
        raise PermanentError(
            f"device {device_id!r}: {key!r} is not a valid AWS IoT attribute "
            "name (1-128 letters, digits and '_.,@/:#-')"
        )
    if not ATTRIBUTE_VALUE_RE.match(value):
        raise PermanentError(
            f"device {device_id!r}: the value of {key!r} is not a valid AWS IoT "
            "attribute value (up to 800 letters, digits and '_.,@/:#=[]-'; no spaces)"
        )


def thing_attributes(device: DeviceRecord, *, typed: bool) -> dict[str, str]:
    """Thing attributes: ``model``, ``serial`` and each label, within AWS's rules (``typed``:
    the thing has a thing type, which allows more attributes)."""
    attributes: dict[str, str] = {}
    for key, value in (("model", device.model), ("serial", device.serial)):
        if value:
            attributes[key] = value
    for key, value in sorted(device.labels.items()):
        if key in attributes:
            raise PermanentError(
                f"device {device.device_id!r}: label {key!r} clashes with the thing "
                f"attribute fleet sets from the device's {key}"
            )
        if value:  # AWS treats an empty attribute value as "remove this attribute"
            attributes[key] = value
    for key, value in attributes.items():
        _check_attribute(device.device_id, key, value)
    limit = MAX_ATTRIBUTES_TYPED if typed else MAX_ATTRIBUTES_UNTYPED
    if len(attributes) > limit:
        hint = "" if typed else " (set the cloud's thing_type option to allow 50)"
        raise PermanentError(
            f"device {device.device_id!r} has {len(attributes)} thing attributes "
            f"({', '.join(attributes)}); AWS IoT allows {limit} on a thing "
            f"{'with' if typed else 'without'} a thing type{hint}"
        )
    return attributes
