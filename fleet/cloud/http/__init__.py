"""Generic HTTP backend (type ``http``) for in-house registries.

:mod:`~fleet.cloud.http.backend` holds :class:`HttpBackend` (the protocol is described there);
:mod:`~fleet.cloud.http.options` the options of ``fleet cloud add --type http``, light (no
httpx), so ``BACKEND_OPTIONS`` can be read for ``--help`` without loading the backend.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

from fleet.cloud.http.options import OPTIONS as BACKEND_OPTIONS

if TYPE_CHECKING:
    from fleet.cloud.http.backend import HttpBackend

__all__ = ["BACKEND_OPTIONS", "HttpBackend"]


def __getattr__(name: str) -> Any:
    if name == "HttpBackend":
        return import_module("fleet.cloud.http.backend").HttpBackend
    raise AttributeError(f"module 'fleet.cloud.http' has no attribute {name!r}")
