"""AWS IoT Core backend: things, X.509 certificates from fleet's own CA, policies, groups.

What each operation does (see docs/cloud-aws.md):

* ``prepare``: registers fleet's issuing CA (:mod:`fleet.cloud.aws.setup`).
* ``register``: checks locally that the certificate chains to the issuing CA (AWS emulators do
  not), then RegisterCertificate, CreateThing/UpdateThing, AttachThingPrincipal, AttachPolicy,
  AddThingToThingGroup. A thing holding another certificate is a :class:`ConflictError`.
* ``deregister``: UpdateCertificate INACTIVE or REVOKED (terminal), DetachThingPrincipal,
  DetachPolicy, optionally DeleteThing.
  A thing that holds the device's certificate and others too (attached out of band, found by
  ``fleet cloud drift``) keeps only the device's: the others are detached, and those fleet's
  CA issued that no other thing holds (an old or revoked one re-enabled) are also set
  INACTIVE (REVOKED with ``deregister_mode=revoke``); foreign certificates keep their status.
* ``deregister``: of a decommissioned device, also detaches the principals fleet did not attach
  (its thing must accept no one); their status is left alone.
* ``fetch_status``: fleet indexing SearchIndex (``connectivity``) plus the firmware version
  reported in a named shadow (:mod:`fleet.cloud.aws.connectivity`).
* ``iter_inventory`` / ``delete_unknown`` (``fleet cloud drift``): :mod:`fleet.cloud.aws.inventory`.

Credentials come from botocore's standard chain; nothing secret is stored in the cloud's
options or state.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, ClassVar

import httpx

from fleet.cloud.aws import connectivity, inventory, setup
from fleet.cloud.aws import options as aws_options
from fleet.cloud.aws.api import (
    DENIED_TYPES,
    MARKER,
    NEXT_TOKEN,
    AwsApi,
    AwsApiError,
    is_already_there,
    is_not_found,
    query_string,
    uri_label,
)
from fleet.cloud.aws.names import THING_NAME_RE, thing_attributes, thing_name_for
from fleet.cloud.aws.sigv4 import CredentialsError
from fleet.cloud.base import (
    CaMaterial,
    CheckResult,
    CloudBackend,
    ConflictError,
    DeviceRecord,
    FirmwareTarget,
    PermanentError,
    RemoteDevice,
    RemoteStatus,
    TransientError,
)
from fleet.pki.keys import fingerprint_sha256, verify_issued_by
from fleet.statuses import DeviceStatus, EventSource


class AwsIotBackend(CloudBackend):
    """AWS IoT Core (type ``aws-iot``). Options: see :mod:`fleet.cloud.aws.options`."""

    type_name: ClassVar[str] = aws_options.TYPE_NAME
    event_source: ClassVar[EventSource] = EventSource.AWS
    declared_options = aws_options.OPTIONS
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
        # as the AWS SDKs do: the option, else $AWS_ENDPOINT_URL_IOT, else $AWS_ENDPOINT_URL
        self.endpoint_override: str | None = (
            self.options.get("endpoint_url")
            or os.environ.get("AWS_ENDPOINT_URL_IOT")
            or os.environ.get("AWS_ENDPOINT_URL")
            or None
        )
        self.endpoint = (
            self.endpoint_override or f"https://iot.{self.region}.amazonaws.com"
        ).rstrip("/")
        self.policy_name: str = self.options.get("policy") or aws_options.POLICY.default
        self.thing_group: str | None = self.options.get("thing_group")
        self.thing_type: str | None = self.options.get("thing_type")
        self.shadow_name: str = self.options.get("shadow_name") or aws_options.SHADOW_NAME.default
        self.firmware_field: str = (
            self.options.get("firmware_field") or aws_options.FIRMWARE_FIELD.default
        )
        self.api = AwsApi(
            self.region, self.endpoint, profile=self.options.get("profile"), client=client
        )
        self._data_endpoint: str | None = None

    def __repr__(self) -> str:
        return f"AwsIotBackend(name={self.name!r}, region={self.region!r})"

    @classmethod
    def validate_options(cls, options: Mapping[str, Any]) -> dict[str, Any]:
        """See :func:`fleet.cloud.aws.options.validate_options`."""
        return aws_options.validate_options(options)

    def close(self) -> None:
        """Close the HTTP client if this backend built it."""
        super().close()
        self.api.close()

    # --- check ------------------------------------------------------------------------------

    def check(self) -> CheckResult:
        """One cheap signed call (DescribeEndpoint) telling apart every way access can fail."""
        try:
            credentials = self.api.control_auth.resolve_credentials()
        except CredentialsError as exc:
            return CheckResult(False, str(exc))
        try:
            self.api.call("DescribeEndpoint", "GET", setup.DATA_ENDPOINT_PATH)
        except TransientError as exc:
            hint = ""
            if "cannot reach" in str(exc) and not self.endpoint_override:
                hint = f" (check --region {self.region!r} and the network)"
            return CheckResult(False, f"{exc}{hint}")
        except AwsApiError as exc:
            if exc.code in DENIED_TYPES or (exc.status == 403 and exc.code.startswith("HTTP")):
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
        issuing = setup.load_cert(ca.issuing_pem, "fleet's issuing CA")
        sni_only = self.options.get("ca_mode") == "sni-only"
        ca_id, ca_arn = setup.ensure_ca(self.api, issuing, ca, sni_only=sni_only)
        setup.ensure_policy(self.api, self.policy_name)
        if self.thing_group:
            setup.ensure_named(
                self.api, "ThingGroup", f"/thing-groups/{uri_label(self.thing_group)}"
            )
        if self.thing_type:
            setup.ensure_named(self.api, "ThingType", f"/thing-types/{uri_label(self.thing_type)}")
        return {
            "ca_certificate_id": ca_id,
            "ca_certificate_arn": ca_arn,
            "issuing_pem": setup.pem_of(issuing),
            "issuing_fingerprint_sha256": fingerprint_sha256(issuing),
            "policy": self.policy_name,
            "data_endpoint": self._data_endpoint_lookup(),
        }

    def _data_endpoint_lookup(self) -> str:
        explicit = self.options.get("data_endpoint_url") or self.endpoint_override
        if explicit:
            return str(explicit).rstrip("/")
        if self._data_endpoint:
            return self._data_endpoint
        self._data_endpoint = setup.describe_data_endpoint(self.api)
        return self._data_endpoint

    # --- register ---------------------------------------------------------------------------

    def attributes_for(self, device: DeviceRecord) -> dict[str, str]:
        """Thing attributes: ``model``, ``serial`` and each label, within AWS's rules."""
        return thing_attributes(device, typed=bool(self.thing_type))

    def _checked_certificate(self, device: DeviceRecord, state: Mapping[str, Any]) -> str:
        issuing_pem = state.get("issuing_pem")
        if not issuing_pem:
            raise PermanentError(
                f"cloud {self.name!r} is not prepared (fleet's CA is not registered with AWS "
                "IoT yet): run prepare first"
            )
        if not device.certificate_pem:
            raise PermanentError(f"device {device.device_id!r} has no active certificate")
        cert = setup.load_cert(device.certificate_pem, f"device {device.device_id!r}'s certificate")
        issuing = setup.load_cert(str(issuing_pem), "fleet's issuing CA")
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

        existing = self.api.describe("DescribeThing", thing_path)
        extras: list[str] = []
        if existing is not None:
            principals = self._thing_principals(thing)
            extras = [p for p in principals if not self._is_same_certificate(p, fingerprint)]
            if extras and len(extras) == len(principals):
                raise ConflictError(
                    f"thing {thing!r} already exists in AWS IoT with another principal "
                    f"attached ({extras[0]}): deregister it there first"
                )

        cert_id, cert_arn = self._register_certificate(device, state)

        payload: dict[str, Any] = {"attributePayload": {"attributes": attributes}}
        if self.thing_type:
            payload["thingTypeName"] = self.thing_type
        thing_arn = str((existing or {}).get("thingArn", ""))
        if existing is None:
            created = self.api.create_unless_present("CreateThing", thing_path, body=payload)
            if created is None:
                existing = {}  # created meanwhile by someone else: update it below
            else:
                thing_arn = str(created.get("thingArn", ""))
        if existing is not None:
            payload["attributePayload"]["merge"] = False  # replace: stale labels disappear
            self.api.call("UpdateThing", "PATCH", thing_path, body=payload)

        self.api.call(
            "AttachThingPrincipal",
            "PUT",
            thing_path + "/principals",
            headers={"x-amzn-principal": cert_arn},
        )
        self.api.call(
            "AttachPolicy",
            "PUT",
            f"/target-policies/{uri_label(self.policy_name)}",
            body={"target": cert_arn},
        )
        self._detach_extras(thing_path, extras, state)
        if self.thing_group:
            self.api.call(
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

    def _detach_extras(
        self, thing_path: str, extras: Sequence[str], state: Mapping[str, Any]
    ) -> None:
        """Detach the certificates attached beside the device's own; deactivate the ones
        fleet's CA issued that no other thing holds (an old or revoked one of this device's).
        Foreign ones keep their status: fleet does not own them."""
        if not extras:
            return
        issuing = setup.load_cert(str(state["issuing_pem"]), "fleet's issuing CA")
        for principal in extras:
            if ":cert/" not in principal:
                continue  # not a certificate (a Cognito identity): not fleet's to touch
            self.api.call_unless_missing(
                "DetachThingPrincipal",
                "DELETE",
                thing_path + "/principals",
                headers={"x-amzn-principal": principal},
            )
            cert_id = principal.rsplit("/", 1)[1]
            described = self.api.describe(
                "DescribeCertificate", f"/certificates/{uri_label(cert_id)}"
            )
            pem = (described or {}).get("certificateDescription", {}).get("certificatePem")
            ours = bool(pem) and verify_issued_by(setup.load_cert(pem, principal), issuing)
            # still attached elsewhere: another device's certificate, attached here by mistake
            if ours and not inventory.other_things(self.api, principal):
                inventory.deactivate(self.api, cert_id, self._deregister_status())

    def _deregister_status(self) -> str:
        return "REVOKED" if self.options.get("deregister_mode") == "revoke" else "INACTIVE"

    def _thing_principals(self, thing: str) -> list[str]:
        path = f"/things/{uri_label(thing)}/principals"
        pages = self.api.pages("ListThingPrincipals", "GET", path, NEXT_TOKEN, maxResults="100")
        return [str(p) for page in pages for p in page.get("principals", [])]

    def _is_same_certificate(self, principal: str, fingerprint: str) -> bool:
        if ":cert/" not in principal:
            return False
        cert_id = principal.rsplit("/", 1)[1]
        if cert_id.lower() == fingerprint:
            return True
        described = self.api.describe("DescribeCertificate", f"/certificates/{uri_label(cert_id)}")
        pem = (described or {}).get("certificateDescription", {}).get("certificatePem")
        return bool(pem) and fingerprint_sha256(setup.load_cert(pem, principal)) == fingerprint

    def _register_certificate(
        self, device: DeviceRecord, state: Mapping[str, Any]
    ) -> tuple[str, str]:
        body = {
            "certificatePem": device.certificate_pem,
            "caCertificatePem": state["issuing_pem"],
            "status": "ACTIVE",
        }
        try:
            result = self.api.call(
                "RegisterCertificate", "POST", "/certificate/register", body=body
            )
            return str(result["certificateId"]), str(result["certificateArn"])
        except AwsApiError as exc:
            if not is_already_there(exc):
                raise
            cert_id = str(exc.body.get("resourceId") or device.fingerprint_sha256)
        path = f"/certificates/{uri_label(cert_id)}"
        info = (self.api.describe("DescribeCertificate", path) or {}).get(
            "certificateDescription", {}
        )
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
            self.api.call("UpdateCertificate", "PUT", path + query_string(newStatus="ACTIVE"))
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
        try:
            principals = self._thing_principals(thing)
        except AwsApiError as exc:
            if not is_not_found(exc):
                raise
            principals = []
        targets = _fleet_certificates(device, remote, principals)
        new_status = self._deregister_status()
        for cert_id, known_arn in sorted(targets.items()):
            arn = self._set_certificate_status(cert_id, new_status) or known_arn
            if arn is None:
                continue  # AWS never had this certificate
            if arn in principals:
                self.api.call_unless_missing(
                    "DetachThingPrincipal",
                    "DELETE",
                    thing_path + "/principals",
                    headers={"x-amzn-principal": arn},
                )
            for policy in self._attached_policies(arn):
                self.api.call_unless_missing(
                    "DetachPolicy",
                    "POST",
                    f"/target-policies/{uri_label(policy)}",
                    body={"target": arn},
                )
        detached = {arn for arn in targets.values() if arn}
        if device.status == DeviceStatus.DECOMMISSIONED:
            for principal in principals:
                if principal not in detached and ":cert/" in principal:
                    self.api.call_unless_missing(
                        "DetachThingPrincipal",
                        "DELETE",
                        thing_path + "/principals",
                        headers={"x-amzn-principal": principal},
                    )
                    detached.add(principal)
        if self.options.get("delete_thing"):
            self._delete_thing(thing, principals, detached)

    def _delete_thing(self, thing: str, principals: list[str], detached: set[str]) -> None:
        others = [p for p in principals if p not in detached]
        if others:
            raise PermanentError(
                f"fleet's certificate is detached and disabled, but thing {thing!r} is not "
                f"deleted: it still holds principals fleet did not attach ({others[0]})"
            )
        try:
            self.api.call_unless_missing("DeleteThing", "DELETE", f"/things/{uri_label(thing)}")
        except AwsApiError as exc:
            # DetachThingPrincipal is eventually consistent: AWS may still see the
            # certificate attached for a few seconds. Retry later.
            if exc.code == "InvalidRequestException" and "attached" in str(exc):
                raise TransientError(str(exc), retry_after=5.0) from None
            raise

    def _set_certificate_status(self, cert_id: str, new_status: str) -> str | None:
        """Set the status; return the certificate's ARN, or None if AWS does not have it."""
        path = f"/certificates/{uri_label(cert_id)}"
        described = self.api.describe("DescribeCertificate", path) or {}
        info = described.get("certificateDescription", {})
        if not info:
            return None
        # REVOKED is final and stronger than INACTIVE: a revoked certificate stays revoked.
        if info.get("status") not in (new_status, "REVOKED"):
            self.api.call_unless_missing(
                "UpdateCertificate", "PUT", path + query_string(newStatus=new_status)
            )
        return str(info.get("certificateArn") or "") or None

    def _attached_policies(self, target_arn: str) -> list[str]:
        """Names of the policies attached to a certificate (the ARN travels percent-encoded in
        the path, as boto3 sends it)."""
        names: list[str] = []
        path = f"/attached-policies/{uri_label(target_arn)}"
        pages = self.api.pages(
            "ListAttachedPolicies", "POST", path, MARKER, recursive="false", pageSize="100"
        )
        try:
            for page in pages:
                names.extend(
                    str(p["policyName"]) for p in page.get("policies", []) if "policyName" in p
                )
        except AwsApiError as exc:
            if not is_not_found(exc):
                raise
        return names

    # --- drift ------------------------------------------------------------------------------

    def iter_inventory(self, state: Mapping[str, Any]) -> Iterator[RemoteDevice]:
        """Every thing (of the cloud's thing group, when it has one) with its certificates
        (:mod:`fleet.cloud.aws.inventory`), each list API within ``list_rate`` calls/s."""
        rate = float(self.options.get("list_rate") or aws_options.LIST_RATE.default)
        return inventory.Inventory(self.api, rate).things(self.thing_group)

    def delete_unknown(self, remote: RemoteDevice, state: Mapping[str, Any]) -> None:
        """Detach the thing's principals, set certificates then attached to no thing
        INACTIVE, delete the thing (:func:`fleet.cloud.aws.inventory.delete_thing`)."""
        if not THING_NAME_RE.match(remote.device_id):
            raise PermanentError(f"{remote.device_id!r} is not an AWS IoT thing name")
        inventory.delete_thing(self.api, remote)

    # --- status -----------------------------------------------------------------------------

    def fetch_status(
        self, device_ids: Sequence[str], state: Mapping[str, Any]
    ) -> dict[str, RemoteStatus]:
        """Connectivity from fleet indexing (SearchIndex) and firmware from the named shadow."""
        names = [d for d in dict.fromkeys(device_ids) if THING_NAME_RE.match(d)]
        if not names:
            return {}
        found = connectivity.search_things(self.api, names)
        data_endpoint = str(state.get("data_endpoint") or "") or self._data_endpoint_lookup()
        firmware = connectivity.FirmwareShadow(self.shadow_name, self.firmware_field)
        return {
            name: connectivity.remote_status(self.api, name, thing, firmware, data_endpoint)
            for name, thing in found.items()
        }

    # --- firmware ---------------------------------------------------------------------------

    def deliver_firmware(
        self,
        device: DeviceRecord,
        target: FirmwareTarget | None,
        remote: Mapping[str, Any],
        state: Mapping[str, Any],
    ) -> None:
        """The target as the desired state of the named shadow fleet reads the reported
        version from (``firmware`` unless ``--shadow-name``): UpdateThingShadow on the
        iot-data endpoint; None clears ``desired.firmware``. Idempotent (same document)."""
        thing = str(remote.get("thing_name") or device.device_id)
        if not THING_NAME_RE.match(thing):
            raise PermanentError(f"{thing!r} is not a valid AWS IoT thing name")
        data_endpoint = str(state.get("data_endpoint") or "") or self._data_endpoint_lookup()
        path = f"/things/{uri_label(thing)}/shadow" + query_string(name=self.shadow_name)
        body = connectivity.desired_firmware(target)
        self.api.call("UpdateThingShadow", "POST", path, body=body, data_plane_base=data_endpoint)


def _fleet_certificates(
    device: DeviceRecord, remote: Mapping[str, Any], principals: list[str]
) -> dict[str, str | None]:
    """Every fleet certificate of this device that AWS may know, id -> ARN where known: the
    registered one (remote), the device's current one, and whichever of them the thing
    still holds."""
    cert_ids = {str(remote["certificate_id"])} if remote.get("certificate_id") else set()
    if device.fingerprint_sha256:
        cert_ids.add(device.fingerprint_sha256)
    targets: dict[str, str | None] = dict.fromkeys(cert_ids)
    for principal in principals:
        if ":cert/" in principal and principal.rsplit("/", 1)[1] in cert_ids:
            targets[principal.rsplit("/", 1)[1]] = principal
    if remote.get("certificate_id") and remote.get("certificate_arn"):
        targets[str(remote["certificate_id"])] = str(remote["certificate_arn"])
    return targets
