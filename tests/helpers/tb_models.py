"""Checks JSON bodies against the models of ``tb-ce-client`` (ThingsBoard's own generated
Python client: an independent implementation of the same REST API, from its OpenAPI spec).

:func:`problems` deserializes a body into the named model class (``Model.from_dict``:
pydantic validation, so required fields, types, enums and UUIDs are checked) and serializes
it back (``to_dict``); every field of the body must come back unchanged. The models' own
``from_dict`` silently drops unknown fields, so a field fleet sends that the API does not
have shows up as "unknown field". ``server_assigned`` names required fields that the API's
documentation says to omit on create (``credentials.id`` and ``credentials.deviceId`` in
``POST /api/device-with-credentials``): they are given placeholders for the check only.
"""

from __future__ import annotations

import enum
import uuid
from typing import Any

try:
    from tb_ce_client import models as tb_models
except ImportError:  # pragma: no cover - depends on the environment
    tb_models = None

PLACEHOLDER_ID = "00000000-0000-0000-0000-000000000000"
# Which model each request body of the endpoints fleet uses must be (method, route).
REQUEST_MODELS: dict[tuple[str, str], str] = {
    ("POST", "/api/auth/login"): "LoginRequest",
    ("POST", "/api/auth/token"): "RefreshTokenRequest",
    ("POST", "/api/deviceProfile"): "DeviceProfile",
    ("POST", "/api/device-with-credentials"): "SaveDeviceWithCredentialsRequest",
    ("POST", "/api/device/credentials"): "DeviceCredentials",
    ("POST", "/api/device"): "Device",
    ("POST", "/api/otaPackage"): "SaveOtaPackageInfoRequest",
}
SERVER_ASSIGNED: dict[str, tuple[str, ...]] = {
    "SaveDeviceWithCredentialsRequest": ("credentials.id", "credentials.deviceId"),
}
_PLACEHOLDERS: dict[str, Any] = {
    "id": {"id": PLACEHOLDER_ID},
    "deviceId": {"id": PLACEHOLDER_ID, "entityType": "DEVICE"},
}


def available() -> bool:
    """tb-ce-client is importable."""
    return tb_models is not None


def _plain(value: Any) -> Any:
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if hasattr(value, "to_dict"):
        return _plain(value.to_dict())
    return value


def _aliases(obj: Any) -> dict[str, str]:
    """{JSON name: attribute name} of a model instance's fields."""
    fields = type(obj).model_fields
    return {(f.serialization_alias or f.alias or name): name for name, f in fields.items()}


def _compare(sent: Any, obj: Any, where: str, out: list[str]) -> None:
    """Walk the body beside the parsed model: unknown fields, changed values. A field the
    model has but does not serialize (OpenAPI ``readOnly``: createdTime, tenantId, ...) is
    accepted as the server ignores it."""
    while hasattr(obj, "actual_instance"):  # a oneOf wrapper (profile configurations)
        obj = obj.actual_instance
    if isinstance(sent, dict) and hasattr(type(obj), "model_fields"):
        aliases = _aliases(obj)
        for key, value in sent.items():
            path = f"{where}.{key}" if where else key
            if key not in aliases:
                extra = getattr(obj, "additional_properties", None)
                if isinstance(extra, dict) and key in extra:
                    continue
                out.append(f"unknown field {path}")
                continue
            if value is None:
                continue
            _compare(value, getattr(obj, aliases[key]), path, out)
        return
    if isinstance(sent, list) and isinstance(obj, list) and len(sent) == len(obj):
        for i, (a, b) in enumerate(zip(sent, obj, strict=True)):
            _compare(a, b, f"{where}[{i}]", out)
        return
    back = _plain(obj)
    if sent != back and str(sent).lower() != str(back).lower():
        out.append(f"{where}: sent {sent!r}, the model reads {back!r}")


def problems(model: str, body: Any) -> list[str]:
    """What is wrong with ``body`` as a ``model`` (empty when it round-trips unchanged)."""
    if tb_models is None:
        raise RuntimeError("tb-ce-client is not installed")
    if not isinstance(body, dict):
        return [f"{model}: body is not a JSON object"]
    cls = getattr(tb_models, model)
    checked = dict(body)
    for dotted in SERVER_ASSIGNED.get(model, ()):
        outer, inner = dotted.split(".")
        part = checked.get(outer)
        if isinstance(part, dict) and inner not in part:
            checked[outer] = {**part, inner: _PLACEHOLDERS[inner]}
    try:
        parsed = cls.from_dict(checked)
    except Exception as exc:  # pydantic's ValidationError, or a KeyError of a one-of
        return [f"{model}: {str(exc).splitlines()[0]} ({type(exc).__name__}): {exc}"[:600]]
    out: list[str] = []
    _compare(body, parsed, "", out)
    return [f"{model}: {p}" for p in out]


def response_problems(model: str, body: Any) -> list[str]:
    """The same check for what the test server answers (its own shapes stay honest)."""
    return problems(model, body)
