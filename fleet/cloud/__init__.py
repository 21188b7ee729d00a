"""Cloud registration: backend interface, plugins, durable outbox and push engine.

Backends implement :class:`fleet.cloud.base.CloudBackend` and are found through the
``fleet.backends`` entry-point group (see :mod:`fleet.cloud.plugins`).
"""

from typing import Any

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


def __getattr__(name: str) -> Any:
    # Lazy re-exports: the registry models import this package, and commands that never
    # talk to a cloud should not pay for importing httpx.
    if name in __all__:
        from fleet.cloud import base

        return getattr(base, name)
    raise AttributeError(f"module 'fleet.cloud' has no attribute {name!r}")
