"""What AWS IoT reports about devices: connectivity from fleet indexing (SearchIndex on
``AWS_Things``) and the firmware version a device reports in a named shadow."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from fleet.cloud.aws.api import AwsApi, AwsApiError, is_not_found, query_string, uri_label
from fleet.cloud.base import PermanentError, RemoteStatus

_INDEXING_HINT = (
    "turn on fleet indexing with connectivity: aws iot update-indexing-configuration "
    "--thing-indexing-configuration "
    "thingIndexingMode=REGISTRY,thingConnectivityIndexingMode=STATUS"
)


@dataclass(frozen=True)
class FirmwareShadow:
    """Where a device reports its firmware: ``state.reported.<field>`` of shadow ``name``."""

    name: str
    field: str


def _escape_query_term(value: str) -> str:
    # Fleet indexing query syntax: ':' separates field and term and a leading '-' negates.
    return re.sub(r"([:\-])", r"\\\1", value)


def search_things(api: AwsApi, names: list[str]) -> dict[str, dict[str, Any]]:
    """The indexed records of the things among ``names`` (SearchIndex, paged by a token in
    the body); PermanentError with the fix when fleet indexing is off."""
    query = " OR ".join(f"thingName:{_escape_query_term(n)}" for n in names)
    wanted = set(names)
    found: dict[str, dict[str, Any]] = {}
    token: str | None = None
    while True:
        body: dict[str, Any] = {"indexName": "AWS_Things", "queryString": query, "maxResults": 100}
        if token:
            body["nextToken"] = token
        try:
            page = api.call("SearchIndex", "POST", "/indices/search", body=body)
        except AwsApiError as exc:
            if exc.code in ("ResourceNotFoundException", "IndexNotReadyException"):
                raise PermanentError(f"{exc} ({_INDEXING_HINT})") from None
            raise
        for thing in page.get("things", []):
            name = thing.get("thingName")
            if name in wanted:
                found[name] = thing
        token = page.get("nextToken") or None
        if token is None:
            return found


def remote_status(
    api: AwsApi,
    name: str,
    indexed: Mapping[str, Any],
    firmware: FirmwareShadow,
    data_endpoint: str,
) -> RemoteStatus:
    """The status of thing ``name`` from its indexed record (and its shadow if needed)."""
    connectivity = indexed.get("connectivity") or {}
    connected = connectivity.get("connected")
    reported = _reported(api, name, indexed, firmware, data_endpoint)
    state, detail = update_state(reported.get("firmware_update"))
    return RemoteStatus(
        connected=connected if isinstance(connected, bool) else None,
        last_activity=_epoch_ms(connectivity.get("timestamp")),
        firmware_version=_as_version(reported.get(firmware.field)),
        firmware_state=state,
        firmware_detail=detail,
    )


UPDATE_STATES = ("in-progress", "failed")


def update_state(value: Any) -> tuple[str | None, str | None]:
    """``reported.firmware_update`` (``{"state": "in-progress"|"failed", "detail": ...}``)
    as (state, detail); anything else is no state."""
    if not isinstance(value, dict) or value.get("state") not in UPDATE_STATES:
        return None, None
    detail = value.get("detail")
    return str(value["state"]), (str(detail)[:512] if detail is not None else None)


def desired_firmware(target: Any) -> dict[str, Any]:
    """The ``firmware`` shadow's update document for a target (None clears it)."""
    if target is None:
        return {"state": {"desired": {"firmware": None}}}
    return {
        "state": {
            "desired": {
                "firmware": {
                    "version": target.version,
                    "url": target.url,
                    "sha256": target.sha256,
                    "size": target.size,
                    "signature": target.signature,
                }
            }
        }
    }


def _reported(
    api: AwsApi,
    thing: str,
    indexed: Mapping[str, Any],
    firmware: FirmwareShadow,
    data_endpoint: str,
) -> dict[str, Any]:
    # Named shadows indexed by fleet indexing arrive in the search result; otherwise ask
    # the device shadow service (data plane, signing name iotdata).
    shadow = indexed.get("shadow")
    if isinstance(shadow, str):
        try:
            document = json.loads(shadow)
        except ValueError:
            document = {}
        named = (document.get("name") or {}).get(firmware.name)
        if isinstance(named, dict):
            reported = named.get("reported")
            return reported if isinstance(reported, dict) else {}
    path = f"/things/{uri_label(thing)}/shadow" + query_string(name=firmware.name)
    try:
        result = api.call("GetThingShadow", "GET", path, data_plane_base=data_endpoint)
    except AwsApiError as exc:
        if is_not_found(exc):
            return {}
        raise
    reported = (result.get("state") or {}).get("reported")
    return reported if isinstance(reported, dict) else {}


def _as_version(value: Any) -> str | None:
    if value is None or isinstance(value, dict | list):
        return None
    return str(value)


def _epoch_ms(value: Any) -> datetime | None:
    if not isinstance(value, int | float) or isinstance(value, bool) or value <= 0:
        return None
    return datetime.fromtimestamp(value / 1000.0, UTC)
