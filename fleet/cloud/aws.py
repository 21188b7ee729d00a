"""AWS IoT Core backend: things, X.509 certificates from fleet's own CA, policies, groups.

Every call is plain HTTPS (rest-json) over httpx, SigV4-signed by botocore's signer
(:mod:`fleet.cloud.sigv4`; service ``iot`` for the control plane, ``iotdata`` for device
shadows). Credentials come from botocore's standard chain; nothing secret is stored in the
cloud's options or state.

What each operation does (see docs/cloud-aws.md):

* ``prepare``: registers fleet's issuing CA (RegisterCACertificate, DEFAULT mode with a
  verification certificate for the registration code, or SNI_ONLY), ACTIVE with
  auto-registration off; creates the device policy, thing group and thing type when missing.
* ``register``: checks locally that the certificate chains to the issuing CA (AWS emulators do
  not), then RegisterCertificate, CreateThing/UpdateThing, AttachThingPrincipal, AttachPolicy,
  AddThingToThingGroup. A thing holding another certificate is a :class:`ConflictError`.
* ``deregister``: UpdateCertificate INACTIVE or REVOKED (terminal), DetachThingPrincipal,
  DetachPolicy, optionally DeleteThing.
* ``fetch_status``: fleet indexing SearchIndex (``connectivity``) plus the firmware version
  reported in a named shadow.
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, ClassVar
from urllib.parse import quote

import httpx
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from fleet.cloud.base import (
    CaMaterial,
    CheckResult,
    CloudBackend,
    ConflictError,
    DeviceRecord,
    PermanentError,
    RemoteStatus,
    TransientError,
    retry_after_seconds,
)
from fleet.cloud.sigv4 import BotocoreSigV4Auth, CredentialsError
from fleet.errors import InvalidInput
from fleet.pki.keys import fingerprint_sha256, verify_issued_by

# AWS IoT's own rules (botocore service model iot/2015-05-28: ThingName, AttributeName,
# AttributeValue, ThingGroupName, PolicyName).
THING_NAME_RE = re.compile(r"^[a-zA-Z0-9:_-]{1,128}$")
ATTRIBUTE_NAME_RE = re.compile(r"^[a-zA-Z0-9_.,@/:#-]{1,128}$")
ATTRIBUTE_VALUE_RE = re.compile(r"^[a-zA-Z0-9_.,@/:#=\[\]-]{0,800}$")
POLICY_NAME_RE = re.compile(r"^[\w+=,.@-]{1,128}$")
SHADOW_NAME_RE = re.compile(r"^[a-zA-Z0-9:_-]{1,64}$")
REGION_RE = re.compile(r"^[a-z]{2,5}(-[a-z]+)+-\d+$")
# Documented AWS IoT quotas: a thing without a thing type holds at most 3 attributes, one with
# a thing type at most 50.
MAX_ATTRIBUTES_UNTYPED = 3
MAX_ATTRIBUTES_TYPED = 50

DEFAULT_POLICY = "fleet-device"
DEFAULT_SHADOW = "firmware"
DEFAULT_FIRMWARE_FIELD = "firmware_version"
DEREGISTER_MODES = ("inactive", "revoke")
CA_MODES = ("default", "sni-only")
REQUEST_TIMEOUT = httpx.Timeout(15.0, connect=5.0)

# Error types AWS returns as 4xx that are worth retrying.
_TRANSIENT_TYPES = frozenset(
    {
        "ThrottlingException",
        "TooManyRequestsException",
        "RequestTimeoutException",
        "ServiceUnavailableException",
        "InternalFailureException",
        "InternalException",
        "InternalServerException",
    }
)
_BAD_KEY_TYPES = frozenset({"UnrecognizedClientException", "InvalidClientTokenId"})
_BAD_SIGNATURE_TYPES = frozenset({"InvalidSignatureException", "SignatureDoesNotMatch"})
_EXPIRED_TYPES = frozenset({"ExpiredTokenException", "ExpiredToken", "RequestExpired"})
_DENIED_TYPES = frozenset({"AccessDeniedException", "UnauthorizedException", "AccessDenied"})

_OPTION_NAMES = frozenset(
    {
        "region",
        "endpoint_url",
        "data_endpoint_url",
        "profile",
        "policy",
        "thing_group",
        "thing_type",
        "ca_mode",
        "deregister_mode",
        "delete_thing",
        "shadow_name",
        "firmware_field",
    }
)


class AwsApiError(PermanentError):
    """AWS refused a request with a permanent error; ``code`` is AWS's error type."""

    def __init__(self, message: str, *, code: str, status: int, body: Mapping[str, Any]) -> None:
        super().__init__(message)
        self.code = code
        self.status = status
        self.body = dict(body)


def thing_name_for(device_id: str) -> str:
    """The AWS thing name of a device: its fleet ID, if AWS accepts it; else PermanentError."""
    if not THING_NAME_RE.match(device_id):
        bad = sorted({c for c in device_id if not re.match(r"[a-zA-Z0-9:_-]", c)})
        detail = f" (contains {', '.join(repr(c) for c in bad)})" if bad else ""
        raise PermanentError(
            f"device ID {device_id!r} cannot be an AWS IoT thing name{detail}: AWS allows 1-128 "
            "letters, digits, ':', '_' and '-' only"
        )
    return device_id


def device_policy_document(region: str) -> dict[str, Any]:
    """The least-privilege default policy: a device connects only as its own thing (client ID
    = thing name, certificate attached to that thing) and may publish, receive and subscribe
    only under ``things/<its name>/`` and its own device shadow topics."""
    arn = f"arn:{partition_of(region)}:iot:{region}:*"
    me = "${iot:Connection.Thing.ThingName}"
    topics = [f"things/{me}/*", f"$aws/things/{me}/shadow/*"]
    return {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Effect": "Allow",
                "Action": "iot:Connect",
                "Resource": f"{arn}:client/{me}",
                "Condition": {"Bool": {"iot:Connection.Thing.IsAttached": "true"}},
            },
            {
                "Effect": "Allow",
                "Action": ["iot:Publish", "iot:Receive"],
                "Resource": [f"{arn}:topic/{t}" for t in topics],
            },
            {
                "Effect": "Allow",
                "Action": "iot:Subscribe",
                "Resource": [f"{arn}:topicfilter/{t}" for t in topics],
            },
        ],
    }


def partition_of(region: str) -> str:
    """The ARN partition of a region (``aws``, ``aws-cn``, ``aws-us-gov``, ``aws-eusc``)."""
    if region.startswith("cn-"):
        return "aws-cn"
    if region.startswith("us-gov-"):
        return "aws-us-gov"
    if region.startswith("eusc-"):
        return "aws-eusc"
    return "aws"


def uri_label(value: str) -> str:
    """Percent-encode a URI label exactly like botocore's rest-json serializer (``:`` becomes
    ``%3A``), so what goes on the wire, and gets signed, is what boto3 would send."""
    return quote(value, safe="-._~")


def query_string(**params: str) -> str:
    """``?k=v&...`` pre-encoded and sorted: httpx sends it verbatim, so the signed query is
    the sent one and already in AWS's canonical form."""
    pairs = sorted((uri_label(k), uri_label(v)) for k, v in params.items())
    return "?" + "&".join(f"{k}={v}" for k, v in pairs) if pairs else ""


def _escape_query_term(value: str) -> str:
    # Fleet indexing query syntax: ':' separates field and term and a leading '-' negates.
    return re.sub(r"([:\-])", r"\\\1", value)


class AwsIotBackend(CloudBackend):
    """AWS IoT Core (type ``aws-iot``). Options: see :meth:`validate_options`."""

    type_name: ClassVar[str] = "aws-iot"
    # AWS IoT throttles each control-plane API per account and region (CreateThing,
    # RegisterCertificate, AttachThingPrincipal, AttachPolicy..., several with default quotas
    # in the low tens of TPS). One registration calls each of them about once, so 10 jobs/s
    # stays below them; ThrottlingException is retried anyway.
    default_concurrency: ClassVar[int] = 4
    default_rate_per_second: ClassVar[float] = 10.0
    status_batch_size: ClassVar[int] = 50  # thing names per SearchIndex query

    def __init__(
        self, name: str, options: Mapping[str, Any], *, client: httpx.Client | None = None
    ) -> None:
        super().__init__(name, options, client=client)
        self.region: str = self.options["region"]
        profile = self.options.get("profile")
        self.endpoint = (
            self.options.get("endpoint_url") or f"https://iot.{self.region}.amazonaws.com"
        ).rstrip("/")
        self.policy_name: str = self.options.get("policy") or DEFAULT_POLICY
        self.thing_group: str | None = self.options.get("thing_group")
        self.thing_type: str | None = self.options.get("thing_type")
        self.shadow_name: str = self.options.get("shadow_name") or DEFAULT_SHADOW
        self.firmware_field: str = self.options.get("firmware_field") or DEFAULT_FIRMWARE_FIELD
        self._control_auth = BotocoreSigV4Auth("iot", self.region, profile=profile)
        self._data_auth = BotocoreSigV4Auth("iotdata", self.region, profile=profile)
        self._lock = threading.Lock()  # the outbox calls one instance from many threads
        self._data_endpoint: str | None = None

    def __repr__(self) -> str:
        return f"AwsIotBackend(name={self.name!r}, region={self.region!r})"

    # --- options ----------------------------------------------------------------------------

    @classmethod
    def validate_options(cls, options: Mapping[str, Any]) -> dict[str, Any]:
        """Options of ``fleet cloud add NAME --type aws-iot``.

        ``region`` (required), ``endpoint_url`` (emulators), ``data_endpoint_url`` (shadows;
        default: ``endpoint_url``, else looked up with DescribeEndpoint), ``profile``,
        ``policy`` (default ``fleet-device``), ``thing_group``, ``thing_type``, ``ca_mode``
        (``default`` | ``sni-only``), ``deregister_mode`` (``inactive`` | ``revoke``),
        ``delete_thing`` (bool), ``shadow_name`` (default ``firmware``), ``firmware_field``
        (default ``firmware_version``).
        """
        given = {k: v for k, v in options.items() if v is not None}
        unknown = sorted(set(given) - _OPTION_NAMES)
        if unknown:
            raise InvalidInput(
                f"unknown option(s) for aws-iot: {', '.join(unknown)} "
                f"(known: {', '.join(sorted(_OPTION_NAMES))})"
            )
        region = given.get("region")
        if not region:
            raise InvalidInput("aws-iot needs --region (e.g. eu-west-1)")
        if not isinstance(region, str) or not REGION_RE.match(region):
            raise InvalidInput(f"--region {region!r} is not an AWS region name (e.g. eu-west-1)")
        result: dict[str, Any] = {"region": region}
        for key in ("endpoint_url", "data_endpoint_url"):
            if key in given:
                url = str(given[key]).rstrip("/")
                if not re.match(r"^https?://[^/\s]+$", url):
                    flag = "--" + key.replace("_", "-")
                    raise InvalidInput(f"{flag} must be http(s)://host[:port], got {url!r}")
                result[key] = url
        if "profile" in given:
            result["profile"] = str(given["profile"])
        checks: list[tuple[str, re.Pattern[str], str]] = [
            ("policy", POLICY_NAME_RE, "1-128 letters, digits and '_+=,.@-'"),
            ("thing_group", THING_NAME_RE, "1-128 letters, digits, ':', '_' and '-'"),
            ("thing_type", THING_NAME_RE, "1-128 letters, digits, ':', '_' and '-'"),
            ("shadow_name", SHADOW_NAME_RE, "1-64 letters, digits, ':', '_' and '-'"),
            ("firmware_field", re.compile(r"^[A-Za-z0-9_.-]{1,128}$"), "a JSON key"),
        ]
        for key, pattern, rule in checks:
            if key in given:
                value = str(given[key])
                if not pattern.match(value):
                    flag = "--" + key.replace("_", "-")
                    raise InvalidInput(f"{flag} {value!r} is not valid in AWS IoT: use {rule}")
                result[key] = value
        result.setdefault("policy", DEFAULT_POLICY)
        result.setdefault("shadow_name", DEFAULT_SHADOW)
        result.setdefault("firmware_field", DEFAULT_FIRMWARE_FIELD)
        for key, allowed in (("ca_mode", CA_MODES), ("deregister_mode", DEREGISTER_MODES)):
            value = str(given.get(key, allowed[0])).lower().replace("_", "-")
            if value not in allowed:
                flag = "--" + key.replace("_", "-")
                raise InvalidInput(f"{flag} must be one of {', '.join(allowed)}, got {value!r}")
            result[key] = value
        delete = given.get("delete_thing", False)
        if isinstance(delete, str):
            if delete.lower() not in ("true", "false", "yes", "no", "1", "0"):
                raise InvalidInput(f"--delete-thing must be true or false, got {delete!r}")
            delete = delete.lower() in ("true", "yes", "1")
        result["delete_thing"] = bool(delete)
        return result

    # --- HTTP -------------------------------------------------------------------------------

    @property
    def client(self) -> httpx.Client:
        """The HTTP client (built on first use: timeouts on every request)."""
        with self._lock:
            if self._client is None:
                self._client = httpx.Client(timeout=REQUEST_TIMEOUT)
            return self._client

    def _call(
        self,
        operation: str,
        method: str,
        path: str,
        *,
        body: Mapping[str, Any] | None = None,
        headers: Mapping[str, str] | None = None,
        data_plane_base: str | None = None,
    ) -> dict[str, Any]:
        """One AWS call; returns the JSON body or raises a classified CloudError."""
        base = data_plane_base or self.endpoint
        auth = self._data_auth if data_plane_base else self._control_auth
        content = json.dumps(body).encode() if body is not None else None
        request_headers = {"Accept": "application/json", **(headers or {})}
        if content is not None:
            request_headers["Content-Type"] = "application/json"
        try:
            response = self.client.request(
                method, base + path, content=content, headers=request_headers, auth=auth
            )
        except CredentialsError as exc:
            raise PermanentError(str(exc)) from None
        except httpx.TimeoutException:
            raise TransientError(f"AWS IoT {operation}: timed out talking to {base}") from None
        except httpx.TransportError as exc:
            raise TransientError(
                f"AWS IoT {operation}: cannot reach {base} ({type(exc).__name__})"
            ) from None
        if response.is_success:
            if not response.content:
                return {}
            try:
                parsed = response.json()
            except ValueError:
                raise TransientError(
                    f"AWS IoT {operation}: unreadable response (HTTP {response.status_code})"
                ) from None
            return parsed if isinstance(parsed, dict) else {}
        raise self._error(operation, response)

    def _error(self, operation: str, response: httpx.Response) -> Exception:
        code, message, body = _parse_error(response)
        status = response.status_code
        text = f"AWS IoT {operation}: {code or 'HTTP ' + str(status)}"
        if message:
            text += f": {message}"
        if status == 429 or status >= 500 or code in _TRANSIENT_TYPES:
            return TransientError(
                text, retry_after=retry_after_seconds(response.headers.get("retry-after"))
            )
        if code in _BAD_KEY_TYPES:
            text += " (the access key is not known to AWS: check AWS_ACCESS_KEY_ID or profile)"
        elif code in _BAD_SIGNATURE_TYPES:
            text += " (the secret key does not match the access key, or the clock is off)"
        elif code in _EXPIRED_TYPES:
            text += " (temporary credentials expired: refresh them)"
        return AwsApiError(text, code=code or f"HTTP{status}", status=status, body=body)

    # --- check ------------------------------------------------------------------------------

    def check(self) -> CheckResult:
        """One cheap signed call (DescribeEndpoint) telling apart every way access can fail."""
        try:
            credentials = self._control_auth.resolve_credentials()
        except CredentialsError as exc:
            return CheckResult(False, str(exc))
        try:
            self._call(
                "DescribeEndpoint", "GET", "/endpoint" + query_string(endpointType="iot:Data-ATS")
            )
        except TransientError as exc:
            hint = ""
            if "cannot reach" in str(exc) and not self.options.get("endpoint_url"):
                hint = f" (check --region {self.region!r} and the network)"
            return CheckResult(False, f"{exc}{hint}")
        except AwsApiError as exc:
            if exc.code in _DENIED_TYPES or (exc.status == 403 and exc.code.startswith("HTTP")):
                return CheckResult(
                    False,
                    f"{exc} (the credentials work but lack permission: grant iot:* actions "
                    "used by fleet, see docs/cloud-aws.md)",
                )
            return CheckResult(False, str(exc))
        except PermanentError as exc:
            return CheckResult(False, str(exc))
        source = getattr(credentials, "method", None) or "the default chain"
        return CheckResult(
            True,
            f"AWS IoT reachable at {self.endpoint} (region {self.region}); credentials from "
            f"{source} accepted",
        )

    # --- prepare ----------------------------------------------------------------------------

    def prepare(self, ca: CaMaterial) -> dict[str, Any]:
        """Register fleet's issuing CA (idempotent), create policy, group and type if missing."""
        issuing = _load_cert(ca.issuing_pem, "fleet's issuing CA")
        issuing_pem = issuing.public_bytes(serialization.Encoding.PEM).decode()
        ca_id, ca_arn = self._ensure_ca(issuing, issuing_pem, ca)
        self._ensure_policy()
        if self.thing_group:
            self._ensure_named("ThingGroup", f"/thing-groups/{uri_label(self.thing_group)}")
        if self.thing_type:
            self._ensure_named("ThingType", f"/thing-types/{uri_label(self.thing_type)}")
        return {
            "ca_certificate_id": ca_id,
            "ca_certificate_arn": ca_arn,
            "issuing_pem": issuing_pem,
            "issuing_fingerprint_sha256": fingerprint_sha256(issuing),
            "policy": self.policy_name,
            "data_endpoint": self._data_endpoint_lookup(),
        }

    def _ensure_ca(
        self, issuing: x509.Certificate, issuing_pem: str, ca: CaMaterial
    ) -> tuple[str, str]:
        fingerprint = fingerprint_sha256(issuing)
        # AWS's certificate ID is the SHA-256 of the DER, so one Describe finds a CA that is
        # already registered; a listing is only the fallback.
        found = self._ca_matching(fingerprint, fingerprint)
        if found is None:
            try:
                result = self._register_ca(issuing_pem, ca)
                return str(result["certificateId"]), str(result.get("certificateArn", ""))
            except AwsApiError as exc:
                if exc.code != "ResourceAlreadyExistsException":
                    raise
                resource_id = str(exc.body.get("resourceId") or "")
                found = self._ca_matching(resource_id, fingerprint) if resource_id else None
                found = found or self._find_ca(fingerprint)
                if found is None:
                    raise
        ca_id, ca_arn, status = found
        if status != "ACTIVE":
            self._call(
                "UpdateCACertificate",
                "PUT",
                f"/cacertificate/{uri_label(ca_id)}"
                + query_string(newStatus="ACTIVE", newAutoRegistrationStatus="DISABLE"),
            )
        return ca_id, ca_arn

    def _register_ca(self, issuing_pem: str, ca: CaMaterial) -> dict[str, Any]:
        body: dict[str, Any] = {"caCertificate": issuing_pem}
        if self.options.get("ca_mode") == "sni-only":
            body["certificateMode"] = "SNI_ONLY"
        else:
            code = self._call("GetRegistrationCode", "GET", "/registrationcode")
            registration_code = str(code.get("registrationCode", ""))
            if not registration_code:
                raise PermanentError("AWS IoT GetRegistrationCode returned no code")
            # This key only proves to AWS that fleet controls the CA; it is never stored.
            key = ec.generate_private_key(ec.SECP256R1())
            public_pem = key.public_key().public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
            body["verificationCertificate"] = ca.sign_verification_cert(
                registration_code, public_pem
            )
            body["certificateMode"] = "DEFAULT"
        query = query_string(setAsActive="true", allowAutoRegistration="false")
        return self._call("RegisterCACertificate", "POST", "/cacertificate" + query, body=body)

    def _find_ca(self, fingerprint: str) -> tuple[str, str, str] | None:
        """(id, arn, status) of the registered CA with this fingerprint, by listing them."""
        marker: str | None = None
        while True:
            query = query_string(pageSize="250", **({"marker": marker} if marker else {}))
            page = self._call("ListCACertificates", "GET", "/cacertificates" + query)
            for listed in page.get("certificates", []):
                ca_id = str(listed.get("certificateId", ""))
                found = self._ca_matching(ca_id, fingerprint) if ca_id else None
                if found:
                    return found
            marker = page.get("nextMarker") or None
            if marker is None:
                return None

    def _ca_matching(self, ca_id: str, fingerprint: str) -> tuple[str, str, str] | None:
        described = self._describe("DescribeCACertificate", f"/cacertificate/{uri_label(ca_id)}")
        info = (described or {}).get("certificateDescription", {})
        pem = info.get("certificatePem")
        if pem and fingerprint_sha256(_load_cert(pem, "a registered CA")) == fingerprint:
            return ca_id, str(info.get("certificateArn", "")), str(info.get("status", ""))
        return None

    def _describe(self, operation: str, path: str) -> dict[str, Any] | None:
        """GET ``path``; None when AWS says the resource does not exist."""
        try:
            return self._call(operation, "GET", path)
        except AwsApiError as exc:
            if exc.code == "ResourceNotFoundException" or exc.status == 404:
                return None
            raise

    def _ensure_policy(self) -> None:
        if self._describe("GetPolicy", f"/policies/{uri_label(self.policy_name)}") is not None:
            return  # an existing policy is the operator's: fleet never rewrites it
        document = json.dumps(device_policy_document(self.region))
        try:
            self._call(
                "CreatePolicy",
                "POST",
                f"/policies/{uri_label(self.policy_name)}",
                body={"policyDocument": document},
            )
        except AwsApiError as exc:
            if exc.code != "ResourceAlreadyExistsException":
                raise

    def _ensure_named(self, kind: str, path: str) -> None:
        if self._describe(f"Describe{kind}", path) is not None:
            return
        try:
            self._call(f"Create{kind}", "POST", path, body={})
        except AwsApiError as exc:
            if exc.code != "ResourceAlreadyExistsException":
                raise

    def _data_endpoint_lookup(self) -> str:
        explicit = self.options.get("data_endpoint_url") or self.options.get("endpoint_url")
        if explicit:
            return str(explicit).rstrip("/")
        if self._data_endpoint:
            return self._data_endpoint
        found = self._call(
            "DescribeEndpoint", "GET", "/endpoint" + query_string(endpointType="iot:Data-ATS")
        )
        address = str(found.get("endpointAddress", ""))
        if not address:
            raise PermanentError("AWS IoT DescribeEndpoint returned no data endpoint")
        self._data_endpoint = f"https://{address}"
        return self._data_endpoint

    # --- register ---------------------------------------------------------------------------

    def attributes_for(self, device: DeviceRecord) -> dict[str, str]:
        """Thing attributes: ``model``, ``serial`` and each label, within AWS's rules."""
        attributes: dict[str, str] = {}
        for key, value in (("model", device.model), ("serial", device.serial)):
            if value:
                attributes[key] = value
        for key, value in sorted(device.labels.items()):
            if key in attributes:
                raise PermanentError(
                    f"device {device.device_id!r}: label {key!r} clashes with the thing "
                    f"attribute fleet sets from the device's {key}"
                )
            if value:  # AWS treats an empty attribute value as "remove this attribute"
                attributes[key] = value
        for key, value in attributes.items():
            if not ATTRIBUTE_NAME_RE.match(key):
                raise PermanentError(
                    f"device {device.device_id!r}: {key!r} is not a valid AWS IoT attribute "
                    "name (1-128 letters, digits and '_.,@/:#-')"
                )
            if not ATTRIBUTE_VALUE_RE.match(value):
                raise PermanentError(
                    f"device {device.device_id!r}: the value of {key!r} is not a valid AWS IoT "
                    "attribute value (up to 800 letters, digits and '_.,@/:#=[]-'; no spaces)"
                )
        limit = MAX_ATTRIBUTES_TYPED if self.thing_type else MAX_ATTRIBUTES_UNTYPED
        if len(attributes) > limit:
            hint = "" if self.thing_type else " (set the cloud's thing_type option to allow 50)"
            raise PermanentError(
                f"device {device.device_id!r} has {len(attributes)} thing attributes "
                f"({', '.join(attributes)}); AWS IoT allows {limit} on a thing "
                f"{'with' if self.thing_type else 'without'} a thing type{hint}"
            )
        return attributes

    def _checked_certificate(self, device: DeviceRecord, state: Mapping[str, Any]) -> str:
        issuing_pem = state.get("issuing_pem")
        if not issuing_pem:
            raise PermanentError(
                f"cloud {self.name!r} is not prepared (fleet's CA is not registered with AWS "
                "IoT yet): run prepare first"
            )
        if not device.certificate_pem:
            raise PermanentError(f"device {device.device_id!r} has no active certificate")
        cert = _load_cert(device.certificate_pem, f"device {device.device_id!r}'s certificate")
        issuing = _load_cert(str(issuing_pem), "fleet's issuing CA")
        # AWS verifies this chain itself; emulators do not, so fleet always checks first.
        if not verify_issued_by(cert, issuing):
            raise PermanentError(
                f"device {device.device_id!r}'s certificate was not issued by the CA registered "
                f"with cloud {self.name!r} (issuing CA {issuing.subject.rfc4514_string()})"
            )
        return fingerprint_sha256(cert)

    def register(self, device: DeviceRecord, state: Mapping[str, Any]) -> dict[str, Any]:
        """Upsert the thing with its certificate, policy and group (see module docstring)."""
        thing = thing_name_for(device.device_id)
        attributes = self.attributes_for(device)
        fingerprint = self._checked_certificate(device, state)
        thing_path = f"/things/{uri_label(thing)}"

        existing = self._describe("DescribeThing", thing_path)
        if existing is not None:
            for principal in self._thing_principals(thing):
                if not self._is_same_certificate(principal, fingerprint):
                    raise ConflictError(
                        f"thing {thing!r} already exists in AWS IoT with another principal "
                        f"attached ({principal}): deregister it there first"
                    )

        cert_id, cert_arn = self._register_certificate(device, state)

        payload: dict[str, Any] = {"attributePayload": {"attributes": attributes}}
        if self.thing_type:
            payload["thingTypeName"] = self.thing_type
        thing_arn = str((existing or {}).get("thingArn", ""))
        if existing is None:
            try:
                created = self._call("CreateThing", "POST", thing_path, body=payload)
                thing_arn = str(created.get("thingArn", ""))
            except AwsApiError as exc:
                if exc.code != "ResourceAlreadyExistsException":
                    raise
                existing = {}  # created meanwhile by someone else: update it below
        if existing is not None:
            payload["attributePayload"]["merge"] = False  # replace: stale labels disappear
            self._call("UpdateThing", "PATCH", thing_path, body=payload)

        self._call(
            "AttachThingPrincipal",
            "PUT",
            thing_path + "/principals",
            headers={"x-amzn-principal": cert_arn},
        )
        self._call(
            "AttachPolicy",
            "PUT",
            f"/target-policies/{uri_label(self.policy_name)}",
            body={"target": cert_arn},
        )
        if self.thing_group:
            self._call(
                "AddThingToThingGroup",
                "PUT",
                "/thing-groups/addThingToThingGroup",
                body={"thingGroupName": self.thing_group, "thingName": thing},
            )
        return {
            "thing_name": thing,
            "thing_arn": thing_arn,
            "certificate_id": cert_id,
            "certificate_arn": cert_arn,
        }

    def _thing_principals(self, thing: str) -> list[str]:
        principals: list[str] = []
        token: str | None = None
        while True:
            query = query_string(maxResults="100", **({"nextToken": token} if token else {}))
            page = self._call(
                "ListThingPrincipals", "GET", f"/things/{uri_label(thing)}/principals{query}"
            )
            principals.extend(str(p) for p in page.get("principals", []))
            token = page.get("nextToken") or None
            if token is None:
                return principals

    def _is_same_certificate(self, principal: str, fingerprint: str) -> bool:
        if ":cert/" not in principal:
            return False
        cert_id = principal.rsplit("/", 1)[1]
        if cert_id.lower() == fingerprint:
            return True
        described = self._describe("DescribeCertificate", f"/certificates/{uri_label(cert_id)}")
        pem = (described or {}).get("certificateDescription", {}).get("certificatePem")
        return bool(pem) and fingerprint_sha256(_load_cert(pem, principal)) == fingerprint

    def _register_certificate(
        self, device: DeviceRecord, state: Mapping[str, Any]
    ) -> tuple[str, str]:
        body = {
            "certificatePem": device.certificate_pem,
            "caCertificatePem": state["issuing_pem"],
            "status": "ACTIVE",
        }
        try:
            result = self._call("RegisterCertificate", "POST", "/certificate/register", body=body)
            return str(result["certificateId"]), str(result["certificateArn"])
        except AwsApiError as exc:
            if exc.code != "ResourceAlreadyExistsException":
                raise
            cert_id = str(exc.body.get("resourceId") or device.fingerprint_sha256)
        described = self._describe("DescribeCertificate", f"/certificates/{uri_label(cert_id)}")
        info = (described or {}).get("certificateDescription", {})
        status = str(info.get("status", ""))
        arn = str(info.get("certificateArn", ""))
        if not arn:
            raise PermanentError(
                f"AWS IoT says device {device.device_id!r}'s certificate exists but cannot "
                f"describe it (id {cert_id})"
            )
        if status == "REVOKED":
            raise PermanentError(
                f"device {device.device_id!r}'s certificate is REVOKED in AWS IoT, which is "
                "final: renew the certificate (fleet cert renew) and register again"
            )
        if status != "ACTIVE":
            self._call(
                "UpdateCertificate",
                "PUT",
                f"/certificates/{uri_label(cert_id)}" + query_string(newStatus="ACTIVE"),
            )
        return cert_id, arn

    # --- deregister -------------------------------------------------------------------------

    def deregister(
        self, device: DeviceRecord, remote: Mapping[str, Any], state: Mapping[str, Any]
    ) -> None:
        """Disable the certificate(s), detach them, optionally delete the thing; idempotent."""
        thing = str(remote.get("thing_name") or device.device_id)
        if not THING_NAME_RE.match(thing):
            return  # never registered: AWS would have refused the name
        thing_path = f"/things/{uri_label(thing)}"
        cert_ids = {str(remote["certificate_id"])} if remote.get("certificate_id") else set()
        if device.fingerprint_sha256:
            cert_ids.add(device.fingerprint_sha256)
        try:
            principals = self._thing_principals(thing)
        except AwsApiError as exc:
            if exc.code != "ResourceNotFoundException" and exc.status != 404:
                raise
            principals = []
        # Every fleet certificate of this device that AWS knows: the registered one (remote),
        # the device's current one, and whichever of them the thing still holds.
        targets: dict[str, str | None] = dict.fromkeys(cert_ids)
        for principal in principals:
            if ":cert/" in principal and principal.rsplit("/", 1)[1] in cert_ids:
                targets[principal.rsplit("/", 1)[1]] = principal
        if remote.get("certificate_id") and remote.get("certificate_arn"):
            targets[str(remote["certificate_id"])] = str(remote["certificate_arn"])
        new_status = "REVOKED" if self.options.get("deregister_mode") == "revoke" else "INACTIVE"
        for cert_id, known_arn in sorted(targets.items()):
            arn = self._set_certificate_status(cert_id, new_status) or known_arn
            if arn is None:
                continue  # AWS never had this certificate
            if arn in principals:
                self._ignore_missing(
                    "DetachThingPrincipal",
                    "DELETE",
                    thing_path + "/principals",
                    headers={"x-amzn-principal": arn},
                )
            for policy in self._attached_policies(arn):
                self._ignore_missing(
                    "DetachPolicy",
                    "POST",
                    f"/target-policies/{uri_label(policy)}",
                    body={"target": arn},
                )
        if self.options.get("delete_thing"):
            detached = {arn for arn in targets.values() if arn}
            others = [p for p in principals if p not in detached]
            if others:
                raise PermanentError(
                    f"fleet's certificate is detached and disabled, but thing {thing!r} is not "
                    f"deleted: it still holds principals fleet did not attach ({others[0]})"
                )
            try:
                self._ignore_missing("DeleteThing", "DELETE", thing_path)
            except AwsApiError as exc:
                # DetachThingPrincipal is eventually consistent: AWS may still see the
                # certificate attached for a few seconds. Retry later.
                if exc.code == "InvalidRequestException" and "attached" in str(exc):
                    raise TransientError(str(exc), retry_after=5.0) from None
                raise

    def _set_certificate_status(self, cert_id: str, new_status: str) -> str | None:
        """Set the status; return the certificate's ARN, or None if AWS does not have it."""
        path = f"/certificates/{uri_label(cert_id)}"
        info = (self._describe("DescribeCertificate", path) or {}).get("certificateDescription", {})
        if not info:
            return None
        # REVOKED is final and stronger than INACTIVE: a revoked certificate stays revoked.
        if info.get("status") not in (new_status, "REVOKED"):
            try:
                self._call("UpdateCertificate", "PUT", path + query_string(newStatus=new_status))
            except AwsApiError as exc:
                if exc.code != "ResourceNotFoundException" and exc.status != 404:
                    raise
        return str(info.get("certificateArn") or "") or None

    def _attached_policies(self, target_arn: str) -> list[str]:
        """Names of the policies attached to a certificate (the ARN travels percent-encoded in
        the path, as boto3 sends it)."""
        names: list[str] = []
        marker: str | None = None
        while True:
            query = query_string(
                recursive="false", pageSize="100", **({"marker": marker} if marker else {})
            )
            try:
                page = self._call(
                    "ListAttachedPolicies",
                    "POST",
                    f"/attached-policies/{uri_label(target_arn)}{query}",
                )
            except AwsApiError as exc:
                if exc.code == "ResourceNotFoundException" or exc.status == 404:
                    return names
                raise
            names.extend(
                str(p["policyName"]) for p in page.get("policies", []) if "policyName" in p
            )
            marker = page.get("nextMarker") or None
            if marker is None:
                return names

    def _ignore_missing(
        self,
        operation: str,
        method: str,
        path: str,
        *,
        body: Mapping[str, Any] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        try:
            self._call(operation, method, path, body=body, headers=headers)
        except AwsApiError as exc:
            if exc.code != "ResourceNotFoundException" and exc.status != 404:
                raise

    # --- status -----------------------------------------------------------------------------

    def fetch_status(
        self, device_ids: Sequence[str], state: Mapping[str, Any]
    ) -> dict[str, RemoteStatus]:
        """Connectivity from fleet indexing (SearchIndex) and firmware from the named shadow."""
        names = [d for d in dict.fromkeys(device_ids) if THING_NAME_RE.match(d)]
        if not names:
            return {}
        query = " OR ".join(f"thingName:{_escape_query_term(n)}" for n in names)
        wanted = set(names)
        found: dict[str, dict[str, Any]] = {}
        token: str | None = None
        while True:
            body: dict[str, Any] = {
                "indexName": "AWS_Things",
                "queryString": query,
                "maxResults": 100,
            }
            if token:
                body["nextToken"] = token
            try:
                page = self._call("SearchIndex", "POST", "/indices/search", body=body)
            except AwsApiError as exc:
                if exc.code in ("ResourceNotFoundException", "IndexNotReadyException"):
                    raise PermanentError(
                        f"{exc} (turn on fleet indexing with connectivity: aws iot "
                        "update-indexing-configuration --thing-indexing-configuration "
                        "thingIndexingMode=REGISTRY,thingConnectivityIndexingMode=STATUS)"
                    ) from None
                raise
            for thing in page.get("things", []):
                name = thing.get("thingName")
                if name in wanted:
                    found[name] = thing
            token = page.get("nextToken") or None
            if token is None:
                break
        data_endpoint = str(state.get("data_endpoint") or "") or self._data_endpoint_lookup()
        statuses: dict[str, RemoteStatus] = {}
        for name, thing in found.items():
            connectivity = thing.get("connectivity") or {}
            connected = connectivity.get("connected")
            statuses[name] = RemoteStatus(
                connected=connected if isinstance(connected, bool) else None,
                last_activity=_epoch_ms(connectivity.get("timestamp")),
                firmware_version=self._firmware(name, thing, data_endpoint),
            )
        return statuses

    def _firmware(self, thing: str, indexed: Mapping[str, Any], data_endpoint: str) -> str | None:
        # Named shadows indexed by fleet indexing arrive in the search result; otherwise ask
        # the device shadow service (data plane, signing name iotdata).
        shadow = indexed.get("shadow")
        if isinstance(shadow, str):
            try:
                document = json.loads(shadow)
            except ValueError:
                document = {}
            named = (document.get("name") or {}).get(self.shadow_name)
            if isinstance(named, dict):
                return _as_version((named.get("reported") or {}).get(self.firmware_field))
        path = f"/things/{uri_label(thing)}/shadow" + query_string(name=self.shadow_name)
        try:
            result = self._call("GetThingShadow", "GET", path, data_plane_base=data_endpoint)
        except AwsApiError as exc:
            if exc.code == "ResourceNotFoundException" or exc.status == 404:
                return None
            raise
        reported = (result.get("state") or {}).get("reported") or {}
        return _as_version(reported.get(self.firmware_field))


def _as_version(value: Any) -> str | None:
    if value is None or isinstance(value, dict | list):
        return None
    return str(value)


def _epoch_ms(value: Any) -> datetime | None:
    if not isinstance(value, int | float) or isinstance(value, bool) or value <= 0:
        return None
    return datetime.fromtimestamp(value / 1000.0, UTC)


def _load_cert(pem: str, what: str) -> x509.Certificate:
    try:
        return x509.load_pem_x509_certificate(pem.encode())
    except ValueError:
        raise PermanentError(f"{what} is not a PEM certificate") from None


def _parse_error(response: httpx.Response) -> tuple[str, str, dict[str, Any]]:
    """(error type, message, JSON body) of an AWS error response.

    rest-json services put the type in ``x-amzn-ErrorType`` (``Type:http://internal...``,
    the part after ``:`` dropped) and/or the body's ``__type``/``code``; some front ends
    answer with an XML ``<Code>``.
    """
    body: dict[str, Any] = {}
    try:
        parsed = response.json()
        if isinstance(parsed, dict):
            body = parsed
    except ValueError:
        pass
    code = response.headers.get("x-amzn-errortype", "").split(":", 1)[0].strip()
    if not code:
        code = str(body.get("__type") or body.get("code") or body.get("Code") or "")
        code = code.rsplit("#", 1)[-1].split(":", 1)[0]
    message = str(body.get("message") or body.get("Message") or "")
    if not body and response.content:
        text = response.text
        if not code and (match := re.search(r"<Code>([^<]+)</Code>", text)):
            code = match.group(1)
        if match := re.search(r"<Message>([^<]+)</Message>", text):
            message = match.group(1)
    return code, message[:300], body
