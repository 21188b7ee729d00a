"""AWS IoT's inventory for ``fleet cloud drift``: things, their certificates, and deleting
the things fleet does not know.

* Things: ListThings, 250 per page, following ``nextToken``; with the cloud's
  ``thing_group`` only that group's (ListThingsInThingGroup): other applications' things in
  the account are then neither reported nor deletable as unknown.
* Per thing: ListThingPrincipals; per certificate principal DescribeCertificate (its status
  and PEM: the SHA-256 fingerprint fleet compares), cached by certificate id.
* Each API has its own rate limiter (AWS throttles per API): ``list_rate`` calls per second,
  default 10 (the documented ListThings quota; the others' are no lower). Throttling and
  other transient failures are retried with backoff, honouring ``Retry-After``.

A thing is *enabled* when an ACTIVE certificate is attached to it: with fleet's policy a
device connects with a certificate attached to its thing. Certificates attached to no thing
are not listed (the inventory is of things).
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from typing import Any

from fleet.cloud.aws import setup
from fleet.cloud.aws.api import NEXT_TOKEN, AwsApi, AwsApiError, is_not_found, query_string
from fleet.cloud.aws.api import uri_label as label
from fleet.cloud.base import RemoteCertificate, RemoteDevice, TransientError
from fleet.cloud.pacing import SYSTEM_TIMER, PushPolicy, RateLimiter, Timer
from fleet.pki.keys import fingerprint_sha256

PAGE_SIZE = "250"  # the most ListThings and ListThingPrincipals return per page
ATTEMPTS = 6  # per call, transient failures included
CACHE_MAX = 10_000  # certificates remembered (a certificate may be attached to many things)


class Inventory:
    """Reads one account and region's things (see the module docstring)."""

    def __init__(self, api: AwsApi, rate: float | None, *, timer: Timer = SYSTEM_TIMER) -> None:
        self.api = api
        self.timer = timer
        self.limiters = {
            op: RateLimiter(rate, timer)
            for op in (
                "ListThings",
                "ListThingsInThingGroup",
                "ListThingPrincipals",
                "DescribeCertificate",
            )
        }
        self.policy = PushPolicy(base_delay=1.0, max_delay=20.0)
        self.rng = random.Random()
        self._certificates: dict[str, RemoteCertificate | None] = {}

    def call(self, operation: str, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
        """One call within ``operation``'s rate limit, transient failures retried."""
        limiter = self.limiters.get(operation) or self.limiters["DescribeCertificate"]
        attempt = 0
        while True:
            attempt += 1
            limiter.acquire()
            try:
                return self.api.call(operation, method, path, **kwargs)
            except TransientError as exc:
                if attempt >= ATTEMPTS:
                    raise
                self.timer.sleep(self.policy.retry_delay(attempt, exc.retry_after, self.rng))

    def pages(self, operation: str, path: str, **params: str) -> Iterator[dict[str, Any]]:
        """Each page of a ``nextToken`` listing."""
        token: str | None = None
        while True:
            extra = {NEXT_TOKEN[0]: token} if token else {}
            page = self.call(operation, "GET", path + query_string(**params, **extra))
            yield page
            token = page.get(NEXT_TOKEN[1]) or None
            if token is None:
                return

    def principals(self, thing: str) -> list[str]:
        """The principals attached to ``thing`` ([] when it is gone meanwhile)."""
        path = f"/things/{label(thing)}/principals"
        try:
            return [
                str(p)
                for page in self.pages("ListThingPrincipals", path, maxResults=PAGE_SIZE)
                for p in page.get("principals", [])
            ]
        except AwsApiError as exc:
            if is_not_found(exc):
                return []
            raise

    def certificate(self, principal: str) -> RemoteCertificate | None:
        """The certificate behind a principal ARN (None: not a certificate, or gone)."""
        if ":cert/" not in principal:
            return None
        cert_id = principal.rsplit("/", 1)[1]
        if cert_id in self._certificates:
            return self._certificates[cert_id]
        try:
            described = self.call("DescribeCertificate", "GET", f"/certificates/{label(cert_id)}")
        except AwsApiError as exc:
            if not is_not_found(exc):
                raise
            described = {}
        info = described.get("certificateDescription") or {}
        found = None
        if info.get("certificatePem"):
            cert = setup.load_cert(str(info["certificatePem"]), principal)
            found = RemoteCertificate(
                fingerprint_sha256=fingerprint_sha256(cert),
                active=info.get("status") == "ACTIVE",
                remote_id=cert_id,
            )
        if len(self._certificates) >= CACHE_MAX:
            self._certificates.clear()
        self._certificates[cert_id] = found
        return found

    def names(self, thing_group: str | None) -> Iterator[tuple[str, str]]:
        """(name, ARN or "") of every thing, or of the things in ``thing_group``."""
        if thing_group is None:
            for page in self.pages("ListThings", "/things", maxResults=PAGE_SIZE):
                for thing in page.get("things", []):
                    yield str(thing["thingName"]), str(thing.get("thingArn", ""))
            return
        path = f"/thing-groups/{label(thing_group)}/things"
        for page in self.pages("ListThingsInThingGroup", path, maxResults=PAGE_SIZE):
            for name in page.get("things", []):
                yield str(name), ""

    def things(self, thing_group: str | None = None) -> Iterator[RemoteDevice]:
        """Every thing (of ``thing_group``, if given) with its certificates, page by page."""
        for name, arn in self.names(thing_group):
            principals = self.principals(name)
            certificates = tuple(
                c for c in (self.certificate(p) for p in principals) if c is not None
            )
            yield RemoteDevice(
                device_id=name,
                enabled=any(c.active for c in certificates),
                certificates=certificates,
                remote={"thing_name": name, "thing_arn": arn, "principals": principals},
            )


def delete_thing(api: AwsApi, remote: RemoteDevice) -> None:
    """Delete an unknown thing: detach every principal, set each certificate that is then
    attached to no other thing INACTIVE (reversible; fleet did not issue it, so it does not
    revoke it), delete the thing. Idempotent: a thing already gone is success."""
    thing = str((remote.remote or {}).get("thing_name") or remote.device_id)
    path = f"/things/{label(thing)}"
    try:
        principals = [
            str(p)
            for page in api.pages(
                "ListThingPrincipals", "GET", path + "/principals", NEXT_TOKEN, maxResults="250"
            )
            for p in page.get("principals", [])
        ]
    except AwsApiError as exc:
        if is_not_found(exc):
            return
        raise
    for principal in principals:
        api.call_unless_missing(
            "DetachThingPrincipal",
            "DELETE",
            path + "/principals",
            headers={"x-amzn-principal": principal},
        )
        if ":cert/" in principal and not other_things(api, principal):
            deactivate(api, principal.rsplit("/", 1)[1], "INACTIVE")
    try:
        api.call_unless_missing("DeleteThing", "DELETE", path)
    except AwsApiError as exc:
        # DetachThingPrincipal is eventually consistent (see backend._delete_thing)
        if exc.code == "InvalidRequestException" and "attached" in str(exc):
            raise TransientError(str(exc), retry_after=5.0) from None
        raise


def other_things(api: AwsApi, principal: str) -> list[str]:
    """The things ``principal`` is attached to (one at most: whether there is any)."""
    try:
        page = api.call(
            "ListPrincipalThings",
            "GET",
            "/principals/things" + query_string(maxResults="1"),
            headers={"x-amzn-principal": principal},
        )
    except AwsApiError as exc:
        if is_not_found(exc):
            return []
        raise
    return [str(t) for t in page.get("things", [])]


def deactivate(api: AwsApi, cert_id: str, new_status: str) -> None:
    """Set a certificate INACTIVE or REVOKED unless it is already (REVOKED is final)."""
    path = f"/certificates/{label(cert_id)}"
    info = (api.describe("DescribeCertificate", path) or {}).get("certificateDescription", {})
    if info and info.get("status") not in (new_status, "REVOKED"):
        api.call_unless_missing(
            "UpdateCertificate", "PUT", path + query_string(newStatus=new_status)
        )
