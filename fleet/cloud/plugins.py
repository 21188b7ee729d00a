"""Find cloud backends through the ``fleet.backends`` entry-point group.

A third-party package adds a platform by declaring
``[project.entry-points."fleet.backends"] my-type = "pkg.module:Backend"``.
"""

from __future__ import annotations

from importlib.metadata import EntryPoint, entry_points

from fleet.cloud.base import CloudBackend
from fleet.errors import InvalidInput

GROUP = "fleet.backends"


def _entry_points() -> dict[str, EntryPoint]:
    return {ep.name: ep for ep in entry_points(group=GROUP)}


def available_types() -> list[str]:
    """Names of every installed backend type, sorted (e.g. ``["aws-iot", "http"]``)."""
    return sorted(_entry_points())


def load_backend_class(type_name: str) -> type[CloudBackend]:
    """The backend class registered as ``type_name``; ``InvalidInput`` if none is."""
    ep = _entry_points().get(type_name)
    if ep is None:
        known = ", ".join(available_types()) or "none installed"
        raise InvalidInput(f"unknown cloud type {type_name!r} (available: {known})")
    try:
        cls = ep.load()
    except ImportError as exc:  # a plugin whose dependencies are not installed
        missing = exc.name or "a dependency"
        raise InvalidInput(
            f"cloud type {type_name!r} cannot be loaded: {missing} is missing"
        ) from exc
    if not (isinstance(cls, type) and issubclass(cls, CloudBackend)):
        raise InvalidInput(f"cloud type {type_name!r} ({ep.value}) is not a CloudBackend")
    return cls
