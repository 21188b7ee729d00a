"""Cloud registration: backend interface, plugins, durable outbox and push engine.

Backends implement :class:`fleet.cloud.base.CloudBackend` and are found through the
``fleet.backends`` entry-point group (see :mod:`fleet.cloud.plugins`).
"""

from fleet.cloud.base import (
    CaMaterial,
    CheckResult,
    CloudBackend,
    CloudError,
    ConflictError,
    DeviceRecord,
    PermanentError,
    RemoteStatus,
    TransientError,
)

__all__ = [
    "CaMaterial",
    "CheckResult",
    "CloudBackend",
    "CloudError",
    "ConflictError",
    "DeviceRecord",
    "PermanentError",
    "RemoteStatus",
    "TransientError",
]
