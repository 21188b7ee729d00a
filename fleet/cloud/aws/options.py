"""The options of ``fleet cloud add NAME --type aws-iot``: declared as data, and validated.

Light on purpose (no httpx, no botocore): ``fleet cloud add --help`` reads the declarations
through ``fleet.cloud.aws.BACKEND_OPTIONS`` without loading the backend.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from fleet.cloud.aws.names import POLICY_NAME_RE, REGION_RE, SHADOW_NAME_RE, THING_NAME_RE
from fleet.cloud.base import BackendOption
from fleet.errors import InvalidInput

TYPE_NAME = "aws-iot"
CA_MODE = BackendOption(
    "ca_mode", "CA registration: default, sni-only.", choices=("default", "sni-only")
)
DEREGISTER_MODE = BackendOption(
    "deregister_mode",
    "Certificate on deregister: inactive, revoke.",
    choices=("inactive", "revoke"),
)
POLICY = BackendOption(
    "policy", "IoT policy to attach (created if missing).", default="fleet-device"
)
SHADOW_NAME = BackendOption("shadow_name", "Named shadow with the firmware.", default="firmware")
FIRMWARE_FIELD = BackendOption(
    "firmware_field", "Reported key holding the firmware version.", default="firmware_version"
)
LIST_RATE = BackendOption(
    "list_rate",
    "Calls per second per list API for drift (ListThings quota: 10).",
    value_type=float,
    default=10.0,
)
OPTIONS = (
    BackendOption("region", "AWS region."),
    BackendOption("endpoint_url", "API endpoint (emulators)."),
    POLICY,
    BackendOption("thing_group", "Thing group to add devices to."),
    BackendOption("data_endpoint_url", "Shadow endpoint (default: looked up)."),
    BackendOption("profile", "AWS profile to take credentials from."),
    BackendOption("thing_type", "Thing type (created if missing)."),
    CA_MODE,
    DEREGISTER_MODE,
    BackendOption(
        "delete_thing", "Also delete the thing on deregister.", value_type=bool, default=False
    ),
    SHADOW_NAME,
    FIRMWARE_FIELD,
    LIST_RATE,
)
_NAMES = frozenset(option.name for option in OPTIONS)
# Options naming an AWS resource, with AWS's rule for the name.
_NAME_RULES: tuple[tuple[str, re.Pattern[str], str], ...] = (
    ("policy", POLICY_NAME_RE, "1-128 letters, digits and '_+=,.@-'"),
    ("thing_group", THING_NAME_RE, "1-128 letters, digits, ':', '_' and '-'"),
    ("thing_type", THING_NAME_RE, "1-128 letters, digits, ':', '_' and '-'"),
    ("shadow_name", SHADOW_NAME_RE, "1-64 letters, digits, ':', '_' and '-'"),
    ("firmware_field", re.compile(r"^[A-Za-z0-9_.-]{1,128}$"), "a JSON key"),
)
_TRUE_WORDS = ("true", "yes", "1")
_BOOL_WORDS = (*_TRUE_WORDS, "false", "no", "0")


def _flag(key: str) -> str:
    return "--" + key.replace("_", "-")


def _region(given: Mapping[str, Any]) -> str:
    region = given.get("region")
    if not region:
        raise InvalidInput("aws-iot needs --region (e.g. eu-west-1)")
    if not isinstance(region, str) or not REGION_RE.match(region):
        raise InvalidInput(f"--region {region!r} is not an AWS region name (e.g. eu-west-1)")
    return region


def _delete_thing(value: Any) -> bool:
    if isinstance(value, str):
        if value.lower() not in _BOOL_WORDS:
            raise InvalidInput(f"--delete-thing must be true or false, got {value!r}")
        return value.lower() in _TRUE_WORDS
    return bool(value)


def validate_options(options: Mapping[str, Any]) -> dict[str, Any]:
    """What gets stored for ``fleet cloud add NAME --type aws-iot``.

    ``region`` (required), ``endpoint_url`` (emulators), ``data_endpoint_url`` (shadows;
    default: ``endpoint_url``, else looked up with DescribeEndpoint), ``profile``,
    ``policy`` (default ``fleet-device``), ``thing_group``, ``thing_type``, ``ca_mode``
    (``default`` | ``sni-only``), ``deregister_mode`` (``inactive`` | ``revoke``),
    ``delete_thing`` (bool), ``shadow_name`` (default ``firmware``), ``firmware_field``
    (default ``firmware_version``), ``list_rate`` (``fleet cloud drift``: calls per second
    to each listing API; default 10, stored only when given).
    """
    given = {k: v for k, v in options.items() if v is not None}
    unknown = sorted(set(given) - _NAMES)
    if unknown:
        raise InvalidInput(
            f"unknown option(s) for {TYPE_NAME}: {', '.join(unknown)} "
            f"(known: {', '.join(sorted(_NAMES))})"
        )
    result: dict[str, Any] = {"region": _region(given)}
    for key in ("endpoint_url", "data_endpoint_url"):
        if key in given:
            url = str(given[key]).rstrip("/")
            if not re.match(r"^https?://[^/\s]+$", url):
                raise InvalidInput(f"{_flag(key)} must be http(s)://host[:port], got {url!r}")
            result[key] = url
    if "profile" in given:
        result["profile"] = str(given["profile"])
    for key, pattern, rule in _NAME_RULES:
        if key in given:
            value = str(given[key])
            if not pattern.match(value):
                raise InvalidInput(f"{_flag(key)} {value!r} is not valid in AWS IoT: use {rule}")
            result[key] = value
    for option in (POLICY, SHADOW_NAME, FIRMWARE_FIELD):
        result.setdefault(option.name, option.default)
    for option in (CA_MODE, DEREGISTER_MODE):
        allowed = option.choices or ()
        value = str(given.get(option.name, allowed[0])).lower().replace("_", "-")
        if value not in allowed:
            raise InvalidInput(f"{option.flag} must be one of {', '.join(allowed)}, got {value!r}")
        result[option.name] = value
    result["delete_thing"] = _delete_thing(given.get("delete_thing", False))
    if "list_rate" in given:
        try:
            rate = float(given["list_rate"])
        except (TypeError, ValueError):
            rate = 0.0
        if not rate > 0:
            raise InvalidInput(f"{LIST_RATE.flag} must be a positive number of calls per second")
        result["list_rate"] = rate
    return result
