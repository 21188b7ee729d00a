"""The options of ``fleet cloud add NAME --type thingsboard``: declared as data, and validated.

Light on purpose (no httpx): ``fleet cloud add --help`` reads the declarations through
``fleet.cloud.thingsboard.BACKEND_OPTIONS`` without loading the backend. Secrets are never
options: only the NAMES of the environment variables holding them are stored.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

from fleet.cloud.base import ENV_NAME_RE, BackendOption, refuse_undeclared, timeout_seconds
from fleet.errors import InvalidInput

TYPE_NAME = "thingsboard"
ON_DEREGISTER = BackendOption(
    "on_deregister",
    "On deregister: delete the device, or keep it with its X.509 credentials replaced "
    "(default delete).",
    choices=("delete", "keep"),
    default="delete",
)
TIMEOUT = BackendOption(
    "timeout", "Per-request timeout in seconds (default 10).", value_type=float, default=10.0
)
OPTIONS = (
    BackendOption("base_url", "ThingsBoard base URL, e.g. https://tb.example.com."),
    BackendOption("username", "Tenant administrator's login (JWT auth)."),
    BackendOption(
        "password_env", "Environment variable holding that user's password (never stored)."
    ),
    BackendOption(
        "api_key_env",
        "Environment variable holding an API key (ThingsBoard 4.3+), instead of a login.",
    ),
    ON_DEREGISTER,
    TIMEOUT,
)


def _url(given: Mapping[str, Any]) -> str:
    url = given.get("base_url")
    if not url:
        raise InvalidInput(
            "cloud type 'thingsboard' needs --base-url (e.g. https://tb.example.com)"
        )
    url = str(url).rstrip("/")
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise InvalidInput(f"--base-url must be an http:// or https:// URL, got {url!r}")
    if parts.username or parts.password:
        raise InvalidInput("--base-url must not contain credentials; use --username/--password-env")
    if parts.query or parts.fragment:
        raise InvalidInput("--base-url must be a base URL without query or fragment")
    return url


def _env_name(given: Mapping[str, Any], key: str) -> str:
    value = str(given[key])
    if not ENV_NAME_RE.match(value):
        flag = "--" + key.replace("_", "-")
        raise InvalidInput(
            f"{flag} names an environment variable (letters, digits, '_'), not the secret itself"
        )
    return value


def validate_options(options: Mapping[str, Any]) -> dict[str, Any]:
    """What gets stored for ``fleet cloud add NAME --type thingsboard``: ``base_url`` (required),
    either ``username`` + ``password_env`` (JWT login) or ``api_key_env`` (API key), the
    ``on_deregister`` (``delete`` | ``keep``) and ``timeout``."""
    given = {k: v for k, v in options.items() if v is not None}
    refuse_undeclared(TYPE_NAME, OPTIONS, given)
    stored: dict[str, Any] = {"base_url": _url(given)}
    has_login = "username" in given or "password_env" in given
    if has_login and "api_key_env" in given:
        raise InvalidInput("give either --username/--password-env or --api-key-env, not both")
    if "api_key_env" in given:
        stored["api_key_env"] = _env_name(given, "api_key_env")
    elif has_login:
        if not given.get("username") or not given.get("password_env"):
            raise InvalidInput("JWT login needs both --username and --password-env")
        stored["username"] = str(given["username"])
        stored["password_env"] = _env_name(given, "password_env")
    else:
        raise InvalidInput(
            "thingsboard needs credentials: --username and --password-env (a tenant "
            "administrator), or --api-key-env"
        )
    mode = str(given.get("on_deregister", ON_DEREGISTER.default)).lower()
    if mode not in (ON_DEREGISTER.choices or ()):
        raise InvalidInput(f"--on-deregister must be delete or keep, got {mode!r}")
    stored["on_deregister"] = mode
    if "timeout" in given:
        stored["timeout"] = timeout_seconds(given["timeout"])
    return stored
