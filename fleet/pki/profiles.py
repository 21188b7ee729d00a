"""Certificate profiles: declarative TOML files describing what a device certificate holds.

Shipped profiles live in ``certs/profiles/``; a workspace may add or override profiles in
``<home>/profiles/NAME.toml``.

A profile is validated when it is loaded, so that every certificate it yields passes an
RFC 5280 linter (pkilint): each refusal is one :class:`InvalidInput` line naming the field.
Names follow :mod:`fleet.pki.names` (DNS names in preferred name syntax, A-labels only;
subject values within the X.520 bounds); key usages must suit the key type (RFC 8813: no
key or data encipherment with EC; RFC 4055: no key agreement with RSA) and each extended key
usage must have a key usage consistent with it (RFC 5280 section 4.2.1.12); numbers are
integers, never booleans. What depends on the device is checked when a certificate is
issued (:meth:`Profile.dns_names`, :meth:`Profile.check_key_type`): ``{id}`` (the only
placeholder) becomes the device ID, which must make a DNS name, and the key from a CSR or
``--key-type`` must suit the key usages. Names no profile can know, a server's DNS names
and IP addresses (``fleet broker mosquitto --hostname/--ip``, the ``server`` profile), are
given when the certificate is issued (:func:`fleet.pki.issue.issue_certificate`).
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fleet.errors import FleetError, InvalidInput, NotFound
from fleet.pki.names import SUBJECT_UPPER_BOUNDS, dns_name_problem, subject_value_problem
from fleet.resources import RESERVED_PROFILES, data_dir

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
# RFC 8813 section 3 (EC) and RFC 4055 section 1.2 (RSA): usages a key cannot have.
PROHIBITED_KEY_USAGES = {
    "ec": frozenset({"key_encipherment", "data_encipherment"}),
    "rsa": frozenset({"key_agreement"}),
}
# RFC 5280 section 4.2.1.12: the key usages consistent with each extended key usage.
EKU_NEEDS_ONE_OF = {
    "client_auth": ("digital_signature", "key_agreement"),
    "server_auth": ("digital_signature", "key_encipherment", "key_agreement"),
    "code_signing": ("digital_signature",),
    "email_protection": (
        "digital_signature", "content_commitment", "key_encipherment", "key_agreement",
    ),
}  # fmt: skip
VALIDITY_DAYS_MAX = 36500
BACKDATE_SECONDS_MAX = 86400
SAN_DNS_MAX = 32
DESCRIPTION_MAX = 200
PROFILE_FILE_MAX = 64 * 1024
PLACEHOLDER = "{id}"
_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")


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

    def to_dict(self) -> dict[str, Any]:
        """The profile as JSON (what ``fleet profile show --json`` prints)."""
        return {
            "name": self.name,
            "description": self.description,
            "key_type": self.key_type,
            "validity_days": self.validity_days,
            "backdate_seconds": self.backdate_seconds,
            "subject": dict(self.subject),
            "key_usage": list(self.key_usage),
            "extended_key_usage": list(self.extended_key_usage),
            "san_dns": list(self.san_dns),
        }

    def dns_names(self, device_id: str) -> list[str]:
        """The subjectAltName DNS names of ``device_id``'s certificate: ``{id}`` in each
        template becomes the device ID; a result that is no DNS name is refused."""
        names = []
        for template in self.san_dns:
            name = template.replace(PLACEHOLDER, device_id)
            if problem := dns_name_problem(name):
                raise InvalidInput(
                    f"profile {self.name!r}: san_dns {template!r} gives {name!r} for device "
                    f"{device_id!r}, which {problem}"
                )
            names.append(name)
        return names

    def check_key_type(self, key_type: str) -> None:
        """Refuse a key (``ec-p256``, ``rsa-2048``...; a CSR's may be any size) that cannot
        have this profile's key usages."""
        family = key_type.partition("-")[0]
        if bad := [u for u in self.key_usage if u in PROHIBITED_KEY_USAGES.get(family, ())]:
            raise InvalidInput(
                f"profile {self.name!r}: key_usage {', '.join(bad)} is not allowed for "
                f"{family.upper()} keys ({key_type}); use another key type or profile"
            )


def signer_profile(name: str, description: str, validity_days: int, organization: str) -> Profile:
    """The profile of a certificate that only signs for fleet itself (exports, audit
    checkpoints): P-256, digitalSignature only, no extended key usage."""
    return Profile(
        name=name,
        description=description,
        key_type="ec-p256",
        validity_days=validity_days,
        backdate_seconds=60,
        key_usage=("digital_signature",),
        extended_key_usage=(),
        subject={"organization": organization},
    )


def profile_dirs(home: Path | None) -> list[Path]:
    """Where profiles are looked up, first match wins: the workspace's, then fleet's own."""
    dirs = [home / "profiles"] if home is not None else []
    return [*dirs, data_dir("certs") / "profiles"]


def available_profiles(home: Path | None = None) -> list[str]:
    """Names of every profile that :func:`load_profile` can find (not the reserved ones)."""
    names: set[str] = set()
    for folder in profile_dirs(home):
        if folder.is_dir():
            names.update(p.stem for p in folder.glob("*.toml"))
    return sorted(names - RESERVED_PROFILES)


def load_profile(name: str, home: Path | None = None) -> Profile:
    """Find, parse and validate profile ``name``; unknown names, bad files and fleet's own
    signers' profiles (:data:`RESERVED_PROFILES`) are refused."""
    if name in RESERVED_PROFILES:
        raise InvalidInput(f"profile {name!r} is for fleet's own signing certificate, not devices")
    return read_profile(name, find_profile(name, home))


def find_profile(name: str, home: Path | None = None) -> Path:
    """The file profile ``name`` is read from (the workspace's first, then fleet's own)."""
    if not _NAME_RE.fullmatch(name):
        raise InvalidInput(f"invalid profile name {name!r}")
    for folder in profile_dirs(home):
        path = folder / f"{name}.toml"
        try:
            if path.is_file():
                return path
        except OSError as exc:
            raise InvalidInput(f"profile {path}: cannot read it ({exc.strerror})") from exc
    choices = ", ".join(available_profiles(home)) or "none"
    raise NotFound(f"no certificate profile named {name!r} (available: {choices})")


def read_profile(name: str, path: Path) -> Profile:
    """Read, parse and validate the profile file ``path`` as profile ``name``."""
    try:
        with path.open("rb") as handle:
            data = handle.read(PROFILE_FILE_MAX + 1)
    except OSError as exc:
        raise InvalidInput(f"profile {path}: cannot read it ({exc.strerror})") from exc
    if len(data) > PROFILE_FILE_MAX:
        raise InvalidInput(f"profile {path}: larger than {PROFILE_FILE_MAX} bytes")
    try:
        raw = tomllib.loads(data.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise InvalidInput(f"profile {path}: not UTF-8 text") from exc
    except (ValueError, RecursionError) as exc:  # TOMLDecodeError is a ValueError
        message = str(exc).splitlines()[0] if str(exc) else "nested too deeply"
        raise InvalidInput(f"profile {path}: not valid TOML ({message})") from exc
    return parse_profile(name, raw, source=str(path))


@dataclass(frozen=True)
class ProfileEntry:
    """One profile :func:`list_profiles` found: where, and the profile or why it is refused."""

    name: str
    path: Path
    profile: Profile | None
    error: str | None

    def to_dict(self) -> dict[str, Any]:
        """The entry as JSON (one item of ``fleet profile list --json``)."""
        return {
            "name": self.name,
            "path": str(self.path),
            "valid": self.profile is not None,
            "description": self.profile.description if self.profile else None,
            "key_type": self.profile.key_type if self.profile else None,
            "error": self.error,
        }


def list_profiles(home: Path | None = None) -> list[ProfileEntry]:
    """Every profile :func:`load_profile` can find, by name, each loaded or its error."""
    entries = []
    for name in available_profiles(home):
        try:
            path = find_profile(name, home)
        except FleetError:  # a name that is no profile name: not loadable, not listed
            continue
        try:
            entries.append(ProfileEntry(name, path, read_profile(name, path), None))
        except FleetError as exc:
            entries.append(ProfileEntry(name, path, None, str(exc)))
    return entries


def parse_profile(name: str, raw: dict[str, Any], *, source: str = "<profile>") -> Profile:
    """Validate a profile's parsed TOML; every unknown key or bad value is an error
    (:class:`InvalidInput` naming the field)."""
    try:
        return _parse(name, raw)
    except _Refused as refused:
        raise InvalidInput(f"profile {source}: {refused.args[0]}") from None


class _Refused(Exception):
    """A profile field's problem (turned into :class:`InvalidInput` with the file name)."""


_TOP_LEVEL = ("description", "key_type", "validity_days", "backdate_seconds", "subject",
              "extensions")  # fmt: skip
_EXTENSIONS = ("key_usage", "extended_key_usage", "san_dns")


def _parse(name: str, raw: dict[str, Any]) -> Profile:
    _known_keys("", raw, _TOP_LEVEL)
    description = raw.get("description", "")
    if not isinstance(description, str) or len(description) > DESCRIPTION_MAX:
        raise _Refused(f"description must be a string of at most {DESCRIPTION_MAX} characters")
    if not description.isprintable():
        raise _Refused("description must be one line of printable characters")
    key_type = raw.get("key_type", "ec-p256")
    if not isinstance(key_type, str) or key_type not in KEY_TYPES:
        raise _Refused(f"key_type must be one of {', '.join(KEY_TYPES)}")
    validity = _integer(raw, "validity_days", 365, 1, VALIDITY_DAYS_MAX)
    backdate = _integer(raw, "backdate_seconds", 60, 0, BACKDATE_SECONDS_MAX)
    extensions = raw.get("extensions", {})
    _known_keys("extensions.", extensions, _EXTENSIONS)
    profile = Profile(
        name=name,
        description=description,
        key_type=key_type,
        validity_days=validity,
        backdate_seconds=backdate,
        subject=_subject(raw.get("subject", {})),
        key_usage=_key_usage(extensions, key_type),
        extended_key_usage=_string_list(
            extensions, "extended_key_usage", ["client_auth"], EXTENDED_KEY_USAGES
        ),
        san_dns=_san_dns(extensions),
    )
    for eku in profile.extended_key_usage:
        if not set(EKU_NEEDS_ONE_OF[eku]) & set(profile.key_usage):
            raise _Refused(
                f"extensions.extended_key_usage {eku} needs one of the key usages "
                f"{', '.join(EKU_NEEDS_ONE_OF[eku])} (RFC 5280 section 4.2.1.12)"
            )
    return profile


def _known_keys(prefix: str, table: Any, allowed: tuple[str, ...]) -> None:
    if not isinstance(table, dict):
        raise _Refused(f"{prefix.rstrip('.') or 'the profile'} must be a table")
    if unknown := sorted(set(table) - set(allowed)):
        shown = ", ".join(prefix + key for key in unknown)
        raise _Refused(f"unknown keys {shown!r}; allowed: {', '.join(allowed)}")


def _integer(raw: dict[str, Any], key: str, default: int, low: int, high: int) -> int:
    value = raw.get(key, default)
    # TOML's true is a Python bool, which is an int: refuse it explicitly.
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        got = _toml_kind(value) if type(value) is not int else value
        raise _Refused(f"{key} must be a whole number from {low} to {high} (got {got})")
    return value


def _toml_kind(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    kinds = {str: "a string", float: "a float", list: "an array", dict: "a table"}
    return kinds.get(type(value), f"a {type(value).__name__}")


def _subject(subject: Any) -> dict[str, str]:
    _known_keys("subject.", subject, SUBJECT_FIELDS)
    for key, value in subject.items():
        if not isinstance(value, str):
            raise _Refused(f"subject.{key} must be a string")
        if problem := subject_value_problem(key, value):
            raise _Refused(f"subject.{key} {problem}")
    # in SUBJECT_UPPER_BOUNDS's order, whatever the file's
    return {key: subject[key] for key in SUBJECT_UPPER_BOUNDS if key in subject}


def _key_usage(extensions: dict[str, Any], key_type: str) -> tuple[str, ...]:
    usages = _string_list(extensions, "key_usage", ["digital_signature"], KEY_USAGES)
    if not usages:
        raise _Refused("extensions.key_usage must name at least one usage")
    family = key_type.partition("-")[0]
    if bad := [u for u in usages if u in PROHIBITED_KEY_USAGES[family]]:
        raise _Refused(
            f"extensions.key_usage {', '.join(bad)} is not allowed with key_type {key_type} "
            f"({'RFC 8813' if family == 'ec' else 'RFC 4055'})"
        )
    return usages


def _san_dns(extensions: dict[str, Any]) -> tuple[str, ...]:
    templates = _string_list(extensions, "san_dns", [], None)
    if len(templates) > SAN_DNS_MAX:
        raise _Refused(f"extensions.san_dns has {len(templates)} names; the limit is {SAN_DNS_MAX}")
    for index, template in enumerate(templates):
        field_name = f"extensions.san_dns[{index}] {template!r}"
        if template.replace(PLACEHOLDER, "").count("{") or template.replace(PLACEHOLDER, "").count(
            "}"
        ):
            raise _Refused(f"{field_name}: the only placeholder is {PLACEHOLDER}")
        if PLACEHOLDER in template.rpartition(".")[2]:
            raise _Refused(f"{field_name}: {PLACEHOLDER} cannot be in the last label")
        # The shortest device ID stands in for {id}; issuance checks the real one.
        if problem := dns_name_problem(template.replace(PLACEHOLDER, "x")):
            raise _Refused(f"{field_name} {problem}")
    return templates


def _string_list(
    table: dict[str, Any], key: str, default: list[str], allowed: tuple[str, ...] | None
) -> tuple[str, ...]:
    value = table.get(key, default)
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise _Refused(f"extensions.{key} must be a list of strings")
    if allowed is not None and (bad := [v for v in value if v not in allowed]):
        raise _Refused(f"extensions.{key}: unknown values {bad}; allowed: {', '.join(allowed)}")
    if len(set(value)) != len(value):
        raise _Refused(f"extensions.{key} lists a value twice")
    return tuple(value)
