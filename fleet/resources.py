"""Locate the data folders (``migrations/``, ``certs/``) shipped with fleet.

In a wheel they sit inside the package (hatchling force-includes them under
``fleet/_data``); in a source checkout they sit at the repository root.
"""

from __future__ import annotations

from pathlib import Path

_PACKAGE_DIR = Path(__file__).resolve().parent


def data_dir(name: str) -> Path:
    """Return the shipped data folder ``name`` (``"migrations"`` or ``"certs"``)."""
    for candidate in (_PACKAGE_DIR / "_data" / name, _PACKAGE_DIR.parent / name):
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError(f"fleet's {name}/ folder is missing from the installation")


# Profiles of fleet's own signing certificates (fleet.pki.signers): never issued to a device,
# else a device's key could sign firmware that verifies against the root. Not listed, not
# completed, refused by ``load_profile``.
RESERVED_PROFILES = frozenset({"firmware-signing"})
