"""Certificate profiles: declarative TOML files describing what a device certificate holds.

Shipped profiles live in ``certs/profiles/``; a workspace may add or override profiles in
``<home>/profiles/NAME.toml``.
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fleet.errors import InvalidInput, NotFound
from fleet.resources import data_dir

KEY_TYPES = ("ec-p256", "ec-p384", "ec-p521", "rsa-2048", "rsa-3072", "rsa-4096")
KEY_USAGES = (
    "digital_signature",
    "content_commitment",
    "key_encipherment",
    "data_encipherment",
    "key_agreement",
)
EXTENDED_KEY_USAGES = ("client_auth", "server_auth", "code_signing", "email_protection")
SUBJECT_FIELDS = ("organization", "organizational_unit", "country", "state", "locality")
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


@dataclass(frozen=True)
class Profile:
    """A parsed, validated certificate profile."""

    name: str
    description: str
    key_type: str
    validity_days: int
    backdate_seconds: int
    subject: dict[str, str] = field(default_factory=dict)
    key_usage: tuple[str, ...] = ("digital_signature",)
    extended_key_usage: tuple[str, ...] = ("client_auth",)
    san_dns: tuple[str, ...] = ()


def profile_dirs(home: Path | None) -> list[Path]:
    """Where profiles are looked up, first match wins: the workspace's, then fleet's own."""
    dirs = [home / "profiles"] if home is not None else []
    return [*dirs, data_dir("certs") / "profiles"]


def available_profiles(home: Path | None = None) -> list[str]:
    """Names of every profile that :func:`load_profile` can find."""
    names: set[str] = set()
    for folder in profile_dirs(home):
        if folder.is_dir():
            names.update(p.stem for p in folder.glob("*.toml"))
    return sorted(names)


def load_profile(name: str, home: Path | None = None) -> Profile:
    """Find and parse profile ``name``; unknown names and malformed files are refused."""
    if not _NAME_RE.match(name):
        raise InvalidInput(f"invalid profile name {name!r}")
    for folder in profile_dirs(home):
        path = folder / f"{name}.toml"
        if path.is_file():
            try:
                raw = tomllib.loads(path.read_text(encoding="utf-8"))
            except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
                raise InvalidInput(f"profile {path}: {exc}") from exc
            return parse_profile(name, raw, source=str(path))
    choices = ", ".join(available_profiles(home)) or "none"
    raise NotFound(f"no certificate profile named {name!r} (available: {choices})")


def parse_profile(name: str, raw: dict[str, Any], *, source: str = "<profile>") -> Profile:
    """Validate a profile's parsed TOML; every unknown key or value is an error."""

    def fail(message: str) -> InvalidInput:
        return InvalidInput(f"profile {source}: {message}")

    allowed_top = {
        "description",
        "key_type",
        "validity_days",
        "backdate_seconds",
        "subject",
        "extensions",
    }
    if unknown := sorted(set(raw) - allowed_top):
        raise fail(f"unknown keys {unknown}")
    key_type = raw.get("key_type", "ec-p256")
    if key_type not in KEY_TYPES:
        raise fail(f"key_type must be one of {', '.join(KEY_TYPES)}")
    validity = raw.get("validity_days", 365)
    if not isinstance(validity, int) or not 1 <= validity <= 36500:
        raise fail("validity_days must be a whole number of days from 1 to 36500")
    backdate = raw.get("backdate_seconds", 60)
    if not isinstance(backdate, int) or not 0 <= backdate <= 86400:
        raise fail("backdate_seconds must be 0 to 86400")
    subject = raw.get("subject", {})
    if not isinstance(subject, dict) or (bad := sorted(set(subject) - set(SUBJECT_FIELDS))):
        raise fail(f"subject accepts only {', '.join(SUBJECT_FIELDS)}")
    if not all(isinstance(v, str) and v for v in subject.values()):
        raise fail("subject values must be non-empty strings")
    if "country" in subject and not re.fullmatch(r"[A-Z]{2}", subject["country"]):
        raise fail("subject.country must be a two-letter ISO 3166 code")
    extensions = raw.get("extensions", {})
    allowed_ext = {"key_usage", "extended_key_usage", "san_dns"}
    if not isinstance(extensions, dict) or (bad := sorted(set(extensions) - allowed_ext)):
        raise fail(f"unknown extensions {bad}")
    key_usage = _string_list(extensions.get("key_usage", ["digital_signature"]), KEY_USAGES, fail)
    if not key_usage:
        raise fail("key_usage must name at least one usage")
    eku = _string_list(
        extensions.get("extended_key_usage", ["client_auth"]), EXTENDED_KEY_USAGES, fail
    )
    san_dns = _string_list(extensions.get("san_dns", []), None, fail)
    return Profile(
        name=name,
        description=str(raw.get("description", "")),
        key_type=key_type,
        validity_days=validity,
        backdate_seconds=backdate,
        subject=dict(subject),
        key_usage=key_usage,
        extended_key_usage=eku,
        san_dns=san_dns,
    )


def _string_list(value: Any, allowed: tuple[str, ...] | None, fail: Any) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise fail(f"expected a list of strings, got {value!r}")
    if allowed is not None and (bad := [v for v in value if v not in allowed]):
        raise fail(f"unknown values {bad}; allowed: {', '.join(allowed)}")
    return tuple(value)
