"""AWS Signature Version 4 for httpx, computed by botocore's own signer.

fleet does not hand-roll SigV4: :class:`BotocoreSigV4Auth` hands each request to
``botocore.auth.SigV4Auth`` and copies the resulting headers back. Credentials come from
botocore's standard chain (environment variables, shared ``~/.aws/credentials`` and
``~/.aws/config`` files, the named profile, SSO, container and instance metadata), resolved once
and frozen per request so refreshable (temporary) credentials renew themselves.

The bytes signed are the bytes sent: the AWSRequest is built from httpx's ``raw_path`` (path
and query exactly as they go on the wire), so a thing name with ``:`` (sent percent-encoded as
``%3A``, as boto3 does) is signed exactly like boto3 signs it.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Generator
from pathlib import Path

import botocore.session
import httpx
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials, ReadOnlyCredentials
from botocore.exceptions import BotoCoreError

# Signed request headers: host, the body's type and every x-amz*/x-amzn* header (as boto3
# does). Headers a proxy or httpx itself may rewrite (connection, accept-encoding,
# user-agent, content-length) stay unsigned.
_SIGNED_HEADERS = ("host", "content-type", "content-md5")
_SIGNED_PREFIX = "x-amz"
# Headers botocore adds while signing, copied back onto the httpx request.
_AUTH_HEADERS = ("Authorization", "X-Amz-Date", "X-Amz-Security-Token")


def _drop_signing_dumps(record: logging.LogRecord) -> bool:
    # botocore logs the canonical request at DEBUG, which includes the X-Amz-Security-Token
    # header (a credential). fleet never lets that reach a log.
    return not str(record.msg).startswith(("CanonicalRequest", "StringToSign", "Signature"))


logging.getLogger("botocore.auth").addFilter(_drop_signing_dumps)


class CredentialsError(Exception):
    """No AWS credentials could be found or loaded (the message names where fleet looked)."""


class BotocoreSigV4Auth(httpx.Auth):
    """An ``httpx.Auth`` that signs every request with SigV4 for one service and region.

    ``service`` is the signing name: ``iot`` for the AWS IoT control plane, ``iotdata`` for the
    device shadow data plane. ``profile`` selects a named AWS profile (None: the default chain).
    Thread-safe: one instance may sign requests from many threads.
    """

    requires_request_body = True

    def __init__(self, service: str, region: str, *, profile: str | None = None) -> None:
        self.service = service
        self.region = region
        self.profile = profile
        self._lock = threading.Lock()
        self._credentials: Credentials | None = None

    def __repr__(self) -> str:
        # Never shows credentials: only what selects them.
        return (
            f"BotocoreSigV4Auth(service={self.service!r}, region={self.region!r}, "
            f"profile={self.profile!r})"
        )

    def resolve_credentials(self) -> Credentials:
        """The credentials of the standard chain (cached; refreshable ones renew themselves)."""
        with self._lock:
            if self._credentials is None:
                self._credentials = load_credentials(self.profile)
            return self._credentials

    def frozen_credentials(self) -> ReadOnlyCredentials:
        """A consistent snapshot (key, secret, token) valid for signing one request."""
        try:
            return self.resolve_credentials().get_frozen_credentials()
        except BotoCoreError as exc:  # a refresh failed (expired SSO session, metadata down)
            raise CredentialsError(
                f"cannot refresh AWS credentials: {type(exc).__name__}"
            ) from None

    def sign(self, request: httpx.Request) -> None:
        """Add SigV4 headers to ``request`` in place."""
        credentials = self.frozen_credentials()
        url = request.url
        # raw_path is path + "?" + query exactly as httpx will write them on the wire.
        wire_url = f"{url.scheme}://{url.netloc.decode('ascii')}{url.raw_path.decode('ascii')}"
        headers = {
            name: value
            for name, value in request.headers.items()
            if name in _SIGNED_HEADERS or name.startswith(_SIGNED_PREFIX)
        }
        for name in _AUTH_HEADERS:
            if name in request.headers:
                del request.headers[name]
        aws_request = AWSRequest(
            method=request.method, url=wire_url, data=request.content, headers=headers
        )
        SigV4Auth(credentials, self.service, self.region).add_auth(aws_request)
        for name in _AUTH_HEADERS:
            value = aws_request.headers.get(name)
            if value is not None:
                request.headers[name] = value

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        """httpx hook: sign, send."""
        self.sign(request)
        yield request


# What the machine says it is (Linux sysfs): EC2 instances name Amazon here. Containers on
# EC2 see the host's values.
DMI_FILES = (
    Path("/sys/devices/virtual/dmi/id/sys_vendor"),
    Path("/sys/devices/virtual/dmi/id/board_vendor"),
)
HYPERVISOR_UUID = Path("/sys/hypervisor/uuid")  # older Xen instances: "ec2..."
IMDS_PROVIDER = "iam-role"  # botocore's instance-metadata credential provider


def may_be_ec2() -> bool:
    """Whether this machine may be an EC2 instance, whose metadata service (IMDS) can hold
    credentials. False only when Linux's DMI data is readable and names another vendor: there
    botocore's probe of 169.254.169.254 can only wait for its timeouts (seconds, on networks
    that drop the packets)."""
    if os.environ.get("AWS_EC2_METADATA_DISABLED", "").lower() == "false":
        return True  # asked for explicitly
    try:
        if HYPERVISOR_UUID.read_text(errors="replace").lower().startswith("ec2"):
            return True
    except OSError:
        pass
    vendors = []
    for path in DMI_FILES:
        try:
            vendors.append(path.read_text(errors="replace").strip().lower())
        except OSError:
            continue
    if not vendors:
        return True  # not Linux, or no DMI data: cannot tell, keep botocore's chain
    return any("amazon" in vendor for vendor in vendors)


def load_credentials(profile: str | None) -> Credentials:
    """Credentials from botocore's standard chain, or :class:`CredentialsError` saying why not.

    The instance metadata service is left out of the chain on machines that are not EC2
    instances (:func:`may_be_ec2`), so missing credentials are reported at once."""
    skip_imds = not may_be_ec2()
    try:
        session = botocore.session.Session(profile=profile)
        if skip_imds:
            session.get_component("credential_provider").remove(IMDS_PROVIDER)
        credentials = session.get_credentials()
    except BotoCoreError as exc:
        # e.g. ProfileNotFound; botocore's messages name the profile, never a secret.
        raise CredentialsError(f"cannot load AWS credentials: {exc}") from None
    if credentials is None:
        where = f"profile {profile!r}" if profile else "the default chain"
        skipped = (
            " (instance metadata not asked: this is no EC2 instance; "
            "AWS_EC2_METADATA_DISABLED=false asks it anyway)"
            if skip_imds
            else ""
        )
        raise CredentialsError(
            f"no AWS credentials found in {where}{skipped}: set AWS_ACCESS_KEY_ID and "
            "AWS_SECRET_ACCESS_KEY, or configure ~/.aws/credentials (aws configure)"
        )
    return credentials
