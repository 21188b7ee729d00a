"""AWS IoT Core backend (type ``aws-iot``): things, X.509 certificates from fleet's own CA,
policies, groups.

* :mod:`~fleet.cloud.aws.backend`: :class:`AwsIotBackend`, the CloudBackend;
* :mod:`~fleet.cloud.aws.setup`: the one-time setup (CA registration, policy, group, type);
* :mod:`~fleet.cloud.aws.connectivity`: status from fleet indexing and device shadows;
* :mod:`~fleet.cloud.aws.api`: signed calls, errors, paging; :mod:`~fleet.cloud.aws.sigv4`:
  SigV4 by botocore's signer;
* :mod:`~fleet.cloud.aws.options` and :mod:`~fleet.cloud.aws.names`: the options of
  ``fleet cloud add --type aws-iot`` and AWS's naming rules (light: no httpx, no botocore).

The backend is imported on first use of its names, so ``BACKEND_OPTIONS`` (what
``fleet cloud add --help`` reads) costs no network library import.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

from fleet.cloud.aws.names import thing_name_for
from fleet.cloud.aws.options import OPTIONS as BACKEND_OPTIONS

if TYPE_CHECKING:
    from fleet.cloud.aws.api import query_string, uri_label
    from fleet.cloud.aws.backend import AwsIotBackend

_LAZY = {
    "AwsIotBackend": "fleet.cloud.aws.backend",
    "query_string": "fleet.cloud.aws.api",
    "uri_label": "fleet.cloud.aws.api",
}

__all__ = ["BACKEND_OPTIONS", "AwsIotBackend", "query_string", "thing_name_for", "uri_label"]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'fleet.cloud.aws' has no attribute {name!r}")
    return getattr(import_module(module), name)
