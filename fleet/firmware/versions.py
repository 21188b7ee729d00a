"""Firmware versions: semantic-versioning strings, compared with ``packaging.version``.

fleet accepts ``MAJOR.MINOR.PATCH`` (or ``MAJOR.MINOR``, ``MAJOR``) with an optional
pre-release ``-alpha.N``, ``-beta.N``, ``-rc.N`` (also ``-a``/``-b``, with or without the dot
and number) and optional build metadata ``+...``: the part of semver that ``packaging``
orders the way semver does (``1.2.3-rc.1 < 1.2.3``). Arbitrary pre-release identifiers
(``1.0.0-x.7.z``) are refused rather than ordered by a hand-written rule. The version is
stored as given; only comparisons go through :func:`parse_version`.
"""

from __future__ import annotations

import re

from packaging.version import InvalidVersion, Version

from fleet.errors import InvalidInput

_SEMVER = re.compile(
    r"^(0|[1-9]\d*)(\.(0|[1-9]\d*)){0,2}"
    r"(-(alpha|beta|rc|a|b)(\.?(0|[1-9]\d*))?)?"
    r"(\+[0-9A-Za-z-]+(\.[0-9A-Za-z-]+)*)?$"
)


class InvalidFirmwareVersion(InvalidInput):
    """The text is not a version fleet accepts (exit 2)."""


def parse_version(text: str) -> Version:
    """``text`` as a comparable :class:`packaging.version.Version`; raises
    :class:`InvalidFirmwareVersion` (one line) if it is not a version fleet accepts."""
    if len(text) > 64 or not _SEMVER.match(text):
        raise InvalidFirmwareVersion(
            f"invalid firmware version {text!r}: expected MAJOR.MINOR.PATCH, optionally "
            "-alpha.N, -beta.N or -rc.N and +build"
        )
    try:
        return Version(text)
    except InvalidVersion as error:  # pragma: no cover - the pattern is a subset
        raise InvalidFirmwareVersion(f"invalid firmware version {text!r}: {error}") from None


def is_valid_version(text: str) -> bool:
    """Whether ``text`` is a version fleet accepts."""
    try:
        parse_version(text)
    except InvalidFirmwareVersion:
        return False
    return True


def compare_versions(a: str, b: str) -> int:
    """-1, 0 or 1 as version ``a`` is older than, equal to, or newer than ``b``."""
    left, right = parse_version(a), parse_version(b)
    return (left > right) - (left < right)
