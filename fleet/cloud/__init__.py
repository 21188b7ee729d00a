"""Cloud registration: backend interface, plugins, durable outbox and push engine.

Backends implement :class:`fleet.cloud.base.CloudBackend` and are found through the
``fleet.backends`` entry-point group (see :mod:`fleet.cloud.plugins`). The modules, bottom up:

* ``models``, ``jobs``: the tables, and queueing jobs in the caller's transaction (SQL only);
* ``views``: what the cloud API returns; ``clouds``: configuring clouds; ``pacing``: rate
  limit, backoff, push policy;
* ``transitions``: what an outcome makes of a job and a registration (pure);
* ``work``, ``push``: loading and calling jobs, the push engine; ``status``: sync, status;
* ``drift_model``, ``drift``: the cloud's inventory against the registry, fixes as jobs;
* ``http/``, ``aws/``: the built-in backends; ``testing``: the contract every backend passes.
"""

from typing import Any

__all__ = [
    "BackendOption",
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
    # talk to a cloud should not pay for importing the backend interface.
    if name in __all__:
        from fleet.cloud import base

        return getattr(base, name)
    raise AttributeError(f"module 'fleet.cloud' has no attribute {name!r}")
