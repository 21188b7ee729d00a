"""fleet's source tree as module names, read from the files (nothing is imported)."""

from __future__ import annotations

from pathlib import Path

from helpers.env import REPO

FLEET_DIR = REPO / "fleet"


def modules_under(package_dir: Path) -> dict[str, Path]:
    """Dotted module name -> file, for every ``.py`` file of the package at ``package_dir``
    (a package's ``__init__.py`` is the package itself)."""
    found: dict[str, Path] = {}
    for path in sorted(package_dir.rglob("*.py")):
        parts = path.relative_to(package_dir.parent).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found[".".join(parts)] = path
    return found
