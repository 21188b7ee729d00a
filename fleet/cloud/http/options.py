"""The options of ``fleet cloud add NAME --type http``: declared as data, and validated.

Light on purpose (no httpx): ``fleet cloud add --help`` reads the declarations through
``fleet.cloud.http.BACKEND_OPTIONS`` without loading the backend.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

from fleet.cloud.base import ENV_NAME_RE, BackendOption, refuse_undeclared, timeout_seconds
from fleet.errors import InvalidInput

TYPE_NAME = "http"
METHOD = BackendOption(
    "method",
    "Register method: PUT (default), POST, PATCH.",
    choices=("PUT", "POST", "PATCH"),
    default="PUT",
)
DEREGISTER_METHOD = BackendOption(
    "deregister_method",
    "Deregister method (default DELETE).",
    choices=("DELETE", "POST", "PUT", "PATCH"),
    default="DELETE",
)
TIMEOUT = BackendOption(
    "timeout", "Per-request timeout in seconds (default 10).", value_type=float, default=10.0
)
CHECK_METHOD = BackendOption(
    "check_method",
    "`cloud check` method (default GET; a plain server answers OPTIONS with 501).",
    choices=("GET", "HEAD", "OPTIONS"),
    default="GET",
)
CHECK_URL = BackendOption(
    "check_url",
    "`cloud check` URL, e.g. a health endpoint (default: --url with {id}=fleet-check).",
)
OPTIONS = (
    BackendOption("url", "URL template with {id}, e.g. https://h/devices/{id}."),
    METHOD,
    DEREGISTER_METHOD,
    BackendOption(
        "header",
        "NAME=ENV_VAR: send header NAME with the value of $ENV_VAR (read at run time, never "
        "stored); repeatable.",
        multiple=True,
    ),
    TIMEOUT,
    BackendOption(
        "firmware_url",
        "URL template with {id} where a firmware target is PUT (default: the --url with "
        "/firmware appended, e.g. https://h/devices/{id}/firmware).",
    ),
    CHECK_METHOD,
    CHECK_URL,
)
_HEADER_NAME_RE = re.compile(r"^[A-Za-z0-9!#$%&'*+.^_`|~-]+$")


def parse_headers(values: Any) -> dict[str, str]:
    """``--header NAME=ENV_VAR`` values (a list, one string or a mapping) as {NAME: ENV_VAR}."""
    if isinstance(values, str):
        values = [values]
    if isinstance(values, Mapping):
        values = [f"{k}={v}" for k, v in values.items()]
    result: dict[str, str] = {}
    for item in values or []:
        name, sep, env = str(item).partition("=")
        name, env = name.strip(), env.strip()
        if not sep or not _HEADER_NAME_RE.match(name) or not ENV_NAME_RE.match(env):
            raise InvalidInput(
                f"--header must be NAME=ENV_VAR (the value is read from that environment "
                f"variable at run time), got {str(item).partition('=')[0]!r}=..."
            )
        result[name] = env
    return result


def _url(options: Mapping[str, Any], name: str = "url") -> str:
    url = options.get(name)
    flag = "--" + name.replace("_", "-")
    if not url:
        raise InvalidInput("cloud type 'http' needs --url (a template with {id})")
    url = str(url)
    if name != "url":
        return _check_template(url, flag)
    return _check_template(url, "--url")


def _check_template(url: str, flag: str) -> str:
    parts = urlsplit(url.replace("{id}", "x"))
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise InvalidInput(f"{flag} must be an http:// or https:// URL, got {url!r}")
    if parts.username or parts.password:
        raise InvalidInput(f"{flag} must not contain credentials; use --header NAME=ENV_VAR")
    if "{id}" not in url:
        raise InvalidInput(f"{flag} must contain {{id}} (replaced by the device ID)")
    if any(p not in ("{id}",) for p in re.findall(r"\{[^}]*\}", url)):
        raise InvalidInput(f"{flag} may only use the {{id}} placeholder")
    return url


def _method(options: Mapping[str, Any], option: BackendOption) -> str:
    allowed = option.choices or ()
    method = str(options.get(option.name, option.default)).upper()
    if method not in allowed:
        raise InvalidInput(f"{option.flag} must be one of {', '.join(allowed)}")
    return method


def validate_options(options: Mapping[str, Any]) -> dict[str, Any]:
    """What gets stored for ``fleet cloud add NAME --type http``: ``url`` (required,
    http(s), with ``{id}``), ``method``, ``deregister_method``, ``header`` (NAME=ENV_VAR
    values; only the variables' names are stored), ``timeout`` (seconds)."""
    refuse_undeclared(TYPE_NAME, OPTIONS, options)
    url = _url(options)
    stored: dict[str, Any] = {
        "url": url,
        "method": _method(options, METHOD),
        "deregister_method": _method(options, DEREGISTER_METHOD),
    }
    headers = parse_headers(options.get("header"))
    if headers:
        stored["header"] = headers
    if options.get("timeout") is not None:
        stored["timeout"] = timeout_seconds(options["timeout"])
    if options.get("firmware_url"):
        stored["firmware_url"] = _url(options, "firmware_url")
    if options.get("check_method") is not None:
        stored["check_method"] = _method(options, CHECK_METHOD)
    if options.get("check_url") is not None:
        stored["check_url"] = _check_url(str(options["check_url"]))
    return stored


def _check_url(url: str) -> str:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise InvalidInput(f"--check-url must be an http:// or https:// URL, got {url!r}")
    if parts.username or parts.password:
        raise InvalidInput("--check-url must not contain credentials; use --header NAME=ENV_VAR")
    return url
