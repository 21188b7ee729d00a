"""ThingsBoard backend (type ``thingsboard``): devices with X.509 credentials, one device
profile per model, server attributes, OTA firmware packages.

* :mod:`~fleet.cloud.thingsboard.backend`: :class:`ThingsBoardBackend`, the CloudBackend;
* :mod:`~fleet.cloud.thingsboard.api`: the REST calls, errors classified, paging;
* :mod:`~fleet.cloud.thingsboard.auth`: JWT login/refresh or API key, as an ``httpx.Auth``;
* :mod:`~fleet.cloud.thingsboard.options`: the options of ``fleet cloud add --type
  thingsboard`` (light: no httpx), so ``BACKEND_OPTIONS`` costs no network library import.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

from fleet.cloud.thingsboard.options import OPTIONS as BACKEND_OPTIONS

if TYPE_CHECKING:
    from fleet.cloud.thingsboard.backend import ThingsBoardBackend

__all__ = ["BACKEND_OPTIONS", "ThingsBoardBackend"]


def __getattr__(name: str) -> Any:
    if name == "ThingsBoardBackend":
        return import_module("fleet.cloud.thingsboard.backend").ThingsBoardBackend
    raise AttributeError(f"module 'fleet.cloud.thingsboard' has no attribute {name!r}")
