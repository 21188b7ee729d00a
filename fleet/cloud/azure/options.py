"""The options of ``fleet cloud add NAME --type azure-iot-hub``: declared as data, validated.

Light on purpose (no httpx): ``fleet cloud add --help`` reads the declarations through
``fleet.cloud.azure.BACKEND_OPTIONS`` without loading the backend. Only the NAME of the
environment variable holding the connection string is stored, never the string itself.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from fleet.cloud.base import ENV_NAME_RE, BackendOption, refuse_undeclared
from fleet.errors import InvalidInput

TYPE_NAME = "azure-iot-hub"
API_VERSION = "2021-04-12"
CONNECTION_STRING_ENV = BackendOption(
    "connection_string_env",
    "Name of the environment variable holding the hub's connection string "
    "(HostName=...;SharedAccessKeyName=...;SharedAccessKey=...); read at run time, never stored.",
)
AUTH = BackendOption(
    "auth",
    "Device authentication: self-signed (X.509 thumbprints, default) or ca (fleet's CA "
    "uploaded and verified in the hub).",
    choices=("self-signed", "ca"),
    default="self-signed",
)
DEREGISTER_MODE = BackendOption(
    "deregister_mode",
    "What deregistration does: disable (status disabled, default) or delete.",
    choices=("disable", "delete"),
    default="disable",
)
FIRMWARE_FIELD = BackendOption(
    "firmware_field",
    "Twin reported property holding the running firmware version (default firmware_version).",
    default="firmware_version",
)
ENDPOINT_URL = BackendOption(
    "endpoint_url",
    "Base URL of the hub's REST API (default https://HOSTNAME from the connection string).",
)
QUERY_RATE = BackendOption(
    "query_rate_per_minute",
    "Inventory query pages per minute (default 18: under S1's 20/min/unit).",
    value_type=float,
    default=18.0,
)
TIMEOUT = BackendOption(
    "timeout", "Per-request timeout in seconds (default 15).", value_type=float, default=15.0
)
OPTIONS = (
    CONNECTION_STRING_ENV,
    AUTH,
    DEREGISTER_MODE,
    FIRMWARE_FIELD,
    ENDPOINT_URL,
    QUERY_RATE,
    TIMEOUT,
)
_FIELD_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")


@dataclass(frozen=True)
class ConnectionString:
    """A hub connection string's parts; ``repr`` hides the key."""

    host_name: str
    key_name: str
    key: str

    def __repr__(self) -> str:
        return f"ConnectionString(host_name={self.host_name!r}, key_name={self.key_name!r})"


def parse_connection_string(text: str, env: str) -> ConnectionString:
    """The parts of ``HostName=...;SharedAccessKeyName=...;SharedAccessKey=...``.

    ``InvalidInput`` names the variable and the missing part, never the value.
    """
    parts: dict[str, str] = {}
    for item in text.strip().split(";"):
        if not item.strip():
            continue
        name, sep, value = item.partition("=")
        if not sep:
            raise InvalidInput(f"${env} is not a connection string (NAME=VALUE;... expected)")
        parts[name.strip()] = value.strip()
    for needed in ("HostName", "SharedAccessKeyName", "SharedAccessKey"):
        if not parts.get(needed):
            hint = " (a device connection string will not do)" if "DeviceId" in parts else ""
            raise InvalidInput(
                f"${env} lacks {needed}: use a hub shared access policy's connection string{hint}"
            )
    return ConnectionString(
        parts["HostName"], parts["SharedAccessKeyName"], parts["SharedAccessKey"]
    )


def _choice(options: Mapping[str, Any], option: BackendOption) -> str:
    value = str(options.get(option.name) or option.default)
    if value not in (option.choices or ()):
        raise InvalidInput(f"{option.flag} must be one of {', '.join(option.choices or ())}")
    return value


def _number(options: Mapping[str, Any], option: BackendOption, low: float, high: float) -> float:
    try:
        value = float(options[option.name])
    except (TypeError, ValueError):
        raise InvalidInput(f"{option.flag} must be a number") from None
    if not low < value <= high:
        raise InvalidInput(f"{option.flag} must be above {low:g} and at most {high:g}")
    return value


def validate_options(options: Mapping[str, Any]) -> dict[str, Any]:
    """What gets stored for ``fleet cloud add NAME --type azure-iot-hub``: the variable's
    name (required), ``auth``, ``deregister_mode``, ``firmware_field``, ``endpoint_url``,
    ``query_rate_per_minute`` and ``timeout`` when given."""
    refuse_undeclared(TYPE_NAME, OPTIONS, options)
    env = options.get("connection_string_env")
    if not env:
        raise InvalidInput(
            "cloud type 'azure-iot-hub' needs --connection-string-env (the NAME of the "
            "environment variable holding the hub's connection string)"
        )
    if not ENV_NAME_RE.match(str(env)):
        raise InvalidInput(
            "--connection-string-env takes an environment variable NAME (letters, digits, _), "
            "not the connection string itself"
        )
    stored: dict[str, Any] = {
        "connection_string_env": str(env),
        "auth": _choice(options, AUTH),
        "deregister_mode": _choice(options, DEREGISTER_MODE),
    }
    field = options.get("firmware_field")
    if field:
        if not _FIELD_RE.match(str(field)):
            raise InvalidInput("--firmware-field must be a twin property name (letters, digits, _)")
        stored["firmware_field"] = str(field)
    url = options.get("endpoint_url")
    if url:
        parts = urlsplit(str(url))
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise InvalidInput(f"--endpoint-url must be an http:// or https:// URL, got {url!r}")
        if parts.username or parts.password or parts.query:
            raise InvalidInput("--endpoint-url must not carry credentials or a query string")
        stored["endpoint_url"] = str(url).rstrip("/")
    if options.get("query_rate_per_minute") is not None:
        stored["query_rate_per_minute"] = _number(options, QUERY_RATE, 0, 100_000)
    if options.get("timeout") is not None:
        stored["timeout"] = _number(options, TIMEOUT, 0, 600)
    return stored
