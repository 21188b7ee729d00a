"""Find cloud backends through the ``fleet.backends`` entry-point group.

A third-party package adds a platform by declaring
``[project.entry-points."fleet.backends"] my-type = "pkg.module:Backend"``.

Its options for ``fleet cloud add`` are the class's ``declared_options``. A backend that is
slow to import may also expose the same tuple as ``BACKEND_OPTIONS`` in the entry point's
module (light, as ``fleet.cloud.http`` and ``fleet.cloud.aws`` do), so that building the
command and its ``--help`` does not import the backend itself.
"""

from __future__ import annotations

import importlib
from importlib.metadata import EntryPoint, entry_points

from fleet.cloud.base import BackendOption, CloudBackend
from fleet.errors import InvalidInput

GROUP = "fleet.backends"
OPTIONS_ATTRIBUTE = "BACKEND_OPTIONS"


def _entry_points() -> dict[str, EntryPoint]:
    return {ep.name: ep for ep in entry_points(group=GROUP)}


def available_types() -> list[str]:
    """Names of every installed backend type, sorted (e.g. ``["aws-iot", "http"]``)."""
    return sorted(_entry_points())


def _entry_point(type_name: str) -> EntryPoint:
    ep = _entry_points().get(type_name)
    if ep is None:
        known = ", ".join(available_types()) or "none installed"
        raise InvalidInput(f"unknown cloud type {type_name!r} (available: {known})")
    return ep


def _cannot_load(type_name: str, exc: ImportError) -> InvalidInput:
    # A plugin whose dependencies are not installed.
    missing = exc.name or "a dependency"
    return InvalidInput(f"cloud type {type_name!r} cannot be loaded: {missing} is missing")


def load_backend_class(type_name: str) -> type[CloudBackend]:
    """The backend class registered as ``type_name``; ``InvalidInput`` if none is."""
    ep = _entry_point(type_name)
    try:
        cls = ep.load()
    except ImportError as exc:
        raise _cannot_load(type_name, exc) from exc
    if not (isinstance(cls, type) and issubclass(cls, CloudBackend)):
        raise InvalidInput(f"cloud type {type_name!r} ({ep.value}) is not a CloudBackend")
    return cls


def declared_options(type_name: str) -> tuple[BackendOption, ...]:
    """The options backend ``type_name`` declares for ``fleet cloud add``.

    From ``BACKEND_OPTIONS`` in the entry point's module when it has one (nothing else of
    the backend is imported), else from the backend class. ``InvalidInput`` when the type is
    unknown, cannot be loaded or declares something other than BackendOptions.
    """
    ep = _entry_point(type_name)
    try:
        module = importlib.import_module(ep.module)
    except ImportError as exc:
        raise _cannot_load(type_name, exc) from exc
    declared = getattr(module, OPTIONS_ATTRIBUTE, None)
    if declared is None:
        return load_backend_class(type_name).declared_options
    options = tuple(declared)
    if not all(isinstance(option, BackendOption) for option in options):
        raise InvalidInput(f"cloud type {type_name!r}: {OPTIONS_ATTRIBUTE} holds non-options")
    return options
