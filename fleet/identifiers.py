"""Validation of user-supplied names: device IDs, labels, serial numbers."""

from __future__ import annotations

import re
import string
from datetime import UTC, datetime, timedelta

from fleet import clock
from fleet.errors import InvalidInput

DEVICE_ID_MAX = 64
_ID_CHARS = frozenset(string.ascii_letters + string.digits + "-_:.")
_LABEL_KEY_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:/-]{0,62}")  # fullmatch: no "\n" end
LABEL_VALUE_MAX = 256


def validate_device_id(device_id: str) -> str:
    """Return ``device_id`` if valid, else raise :class:`InvalidInput` naming the broken rule.

    Rules: 1 to 64 characters; ASCII letters, digits, ``-``, ``_``, ``:``, ``.``; the first
    character a letter or digit. The ID becomes the certificate's CN.
    """
    if not device_id:
        raise InvalidInput("device ID must not be empty")
    if len(device_id) > DEVICE_ID_MAX:
        raise InvalidInput(
            f"device ID is {len(device_id)} characters long; the limit is {DEVICE_ID_MAX}"
        )
    bad = sorted({c for c in device_id if c not in _ID_CHARS})
    if bad:
        shown = ", ".join(repr(c) for c in bad)
        raise InvalidInput(
            f"device ID {device_id!r} contains {shown}; allowed are letters, digits, '-', '_', "
            "':' and '.'"
        )
    if not device_id[0].isalnum():
        raise InvalidInput(f"device ID {device_id!r} must start with a letter or digit")
    return device_id


def parse_label(text: str) -> tuple[str, str]:
    """Split ``KEY=VALUE`` and validate both sides."""
    key, sep, value = text.partition("=")
    if not sep:
        raise InvalidInput(f"label {text!r} must be KEY=VALUE")
    return validate_label(key, value)


def validate_label(key: str, value: str) -> tuple[str, str]:
    """Validate a label: key 1-63 chars of letters, digits, ``_.:/-``; value up to 256."""
    if not isinstance(key, str) or not _LABEL_KEY_RE.fullmatch(key):
        raise InvalidInput(
            f"label key {key!r} must be 1-63 letters, digits, '_', '.', ':', '/' or '-', "
            "starting with a letter or digit"
        )
    if not isinstance(value, str) or len(value) > LABEL_VALUE_MAX:
        raise InvalidInput(f"label {key!r}: value must be a string of at most 256 characters")
    if any(ord(c) < 32 for c in value):
        raise InvalidInput(f"label {key!r}: value contains control characters")
    if not is_utf8_text(value):
        raise InvalidInput(f"label {key!r}: value is not valid Unicode text (a lone surrogate)")
    return key, value


def is_utf8_text(text: str) -> bool:
    """Whether ``text`` encodes as UTF-8: JSON's ``"\\ud800"`` and undecodable command-line
    bytes decode to lone surrogates, which no database or file can store."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def printable(text: str) -> str:
    """``text`` safe to print or store: lone surrogates shown as ``\\udcxx`` escapes."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def parse_labels(items: list[str] | tuple[str, ...]) -> dict[str, str]:
    """Parse repeated ``--label KEY=VALUE`` options; a repeated key is refused."""
    labels: dict[str, str] = {}
    for item in items:
        key, value = parse_label(item)
        if key in labels:
            raise InvalidInput(f"label {key!r} given twice")
        labels[key] = value
    return labels


def normalize_serial(text: str) -> str:
    """Accept ``0A:1b``, ``0x0a1b`` or ``a1b`` and return fleet's form (lowercase, no zeros)."""
    cleaned = text.strip().lower().replace(":", "")
    cleaned = cleaned.removeprefix("0x")
    if not cleaned or any(c not in string.hexdigits for c in cleaned) or len(cleaned) > 40:
        raise InvalidInput(f"{text!r} is not a certificate serial number (hexadecimal)")
    return format(int(cleaned, 16), "x")


def validate_text_field(name: str, value: str | None, limit: int = 128) -> str | None:
    """Check a free-text attribute such as ``model`` or ``serial``."""
    if value is None:
        return None
    if (
        not value
        or len(value) > limit
        or any(ord(c) < 32 for c in value)
        or not is_utf8_text(value)
    ):
        raise InvalidInput(f"{name} must be 1 to {limit} printable characters")
    return value


_RELATIVE_RE = re.compile(r"(\d{1,12})([smhdw])")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_UNIT_NAMES = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}
_TIME_HELP = "use ISO 8601 (2026-06-30, 2026-06-30T12:00:00Z) or an age such as 24h or 7d"
MAX_DAYS = 1_000_000  # about 2,700 years: any longer span is a typo


def parse_timestamp(text: str, *, now: datetime | None = None) -> datetime:
    """Parse ``2026-06-30``, ``2026-06-30T12:00:00+02:00`` (no offset means UTC) or a
    relative age such as ``15m``, ``24h``, ``7d`` (that long before now); return UTC.

    Raises :class:`InvalidInput` for anything else: an empty text, a moment outside the
    years 1 to 9999 in UTC, an age reaching before year 1.
    """
    value = text.strip()
    if not value:
        raise InvalidInput(f"empty time: {_TIME_HELP}")
    match = _RELATIVE_RE.fullmatch(value)
    if match:
        seconds = int(match.group(1)) * _UNIT_SECONDS[match.group(2)]
        return shift(now or clock.now(), -seconds, what=f"time {text!r}")
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        raise InvalidInput(f"cannot parse time {text!r}: {_TIME_HELP}") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    try:
        return moment.astimezone(UTC)
    except OverflowError:
        raise InvalidInput(f"time {text!r} is out of range (years 1 to 9999)") from None


_DATE_RE = re.compile(r"\d{4}-\d{2}-\d{2}")


def parse_as_of(text: str, *, now: datetime | None = None) -> datetime:
    """A moment to look back at (``--as-of``): a bare date ``2026-06-30`` is the end of that
    day in UTC (its last microsecond), anything else as :func:`parse_timestamp` reads it."""
    value = text.strip()
    if _DATE_RE.fullmatch(value):
        day = parse_timestamp(value, now=now)
        return shift(day, 86400 - 1e-6, what=f"time {text!r}")
    return parse_timestamp(value, now=now)


def parse_duration(text: str, *, bare_unit: str = "d", what: str = "duration") -> timedelta:
    """Parse a span the same way everywhere: ``30d``, ``12h``, ``15m``, ``90s``, ``2w``, or a
    bare number in ``bare_unit`` (days unless said otherwise: ``--expiring-within 30``).

    Raises :class:`InvalidInput` (naming ``what``) for anything else or a span over
    :data:`MAX_DAYS`.
    """
    value = text.strip().lower()
    if value.isdigit():
        value += bare_unit
    match = _RELATIVE_RE.fullmatch(value)
    if not match:
        raise InvalidInput(
            f"{what} {text!r}: use a number with a unit, such as 30d, 12h, 15m or 90s "
            f"(a bare number means {_UNIT_NAMES[bare_unit]})"
        )
    seconds = int(match.group(1)) * _UNIT_SECONDS[match.group(2)]
    if seconds > MAX_DAYS * 86400:
        raise InvalidInput(f"{what} {text!r} is too long (at most {MAX_DAYS} days)")
    return timedelta(seconds=seconds)


def shift(moment: datetime, seconds: float, *, what: str = "time") -> datetime:
    """``moment`` moved by ``seconds``; :class:`InvalidInput` (naming ``what``) when that
    leaves the years 1 to 9999."""
    try:
        return moment + timedelta(seconds=seconds)
    except OverflowError:
        raise InvalidInput(f"{what} is out of range (years 1 to 9999)") from None
