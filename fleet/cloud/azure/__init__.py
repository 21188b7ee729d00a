"""Azure IoT Hub backend (type ``azure-iot-hub``), see docs/cloud-azure.md.

:mod:`~fleet.cloud.azure.backend` holds :class:`AzureIotHubBackend`; :mod:`~.sas` the
shared-access-signature ``httpx.Auth``; :mod:`~.api` the REST calls (errors, paging, bulk
import); :mod:`~.options` the options of ``fleet cloud add --type azure-iot-hub``, light (no
httpx), so ``BACKEND_OPTIONS`` can be read for ``--help`` without loading the backend.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

from fleet.cloud.azure.options import OPTIONS as BACKEND_OPTIONS

if TYPE_CHECKING:
    from fleet.cloud.azure.backend import AzureIotHubBackend

__all__ = ["BACKEND_OPTIONS", "AzureIotHubBackend"]


def __getattr__(name: str) -> Any:
    if name == "AzureIotHubBackend":
        return import_module("fleet.cloud.azure.backend").AzureIotHubBackend
    raise AttributeError(f"module 'fleet.cloud.azure' has no attribute {name!r}")
