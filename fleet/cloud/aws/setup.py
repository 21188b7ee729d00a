"""One-time setup of an AWS IoT account for fleet (``prepare``): fleet's issuing CA
registered (RegisterCACertificate, DEFAULT mode with a verification certificate for the
registration code, or SNI_ONLY), ACTIVE with auto-registration off; the device policy, thing
group and thing type created when missing; the device data endpoint looked up. Every step is
idempotent: what exists already is found and kept.
"""

from __future__ import annotations

import json
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from fleet.cloud.aws.api import (
    MARKER,
    AwsApi,
    AwsApiError,
    is_already_there,
    query_string,
    uri_label,
)
from fleet.cloud.base import CaMaterial, PermanentError
from fleet.pki.keys import fingerprint_sha256

DATA_ENDPOINT_PATH = "/endpoint" + query_string(endpointType="iot:Data-ATS")
RegisteredCa = tuple[str, str, str]  # (certificate id, ARN, status)


def load_cert(pem: str, what: str) -> x509.Certificate:
    """The certificate in ``pem``; PermanentError naming ``what`` if it is not one."""
    try:
        return x509.load_pem_x509_certificate(pem.encode())
    except ValueError:
        raise PermanentError(f"{what} is not a PEM certificate") from None


def pem_of(cert: x509.Certificate) -> str:
    """The certificate as PEM text (as AWS stores and compares it)."""
    return cert.public_bytes(serialization.Encoding.PEM).decode()


def partition_of(region: str) -> str:
    """The ARN partition of a region (``aws``, ``aws-cn``, ``aws-us-gov``, ``aws-eusc``)."""
    if region.startswith("cn-"):
        return "aws-cn"
    if region.startswith("us-gov-"):
        return "aws-us-gov"
    if region.startswith("eusc-"):
        return "aws-eusc"
    return "aws"


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


def ensure_ca(
    api: AwsApi, issuing: x509.Certificate, ca: CaMaterial, *, sni_only: bool
) -> tuple[str, str]:
    """(id, ARN) of fleet's issuing CA in AWS IoT: found, or registered; made ACTIVE."""
    fingerprint = fingerprint_sha256(issuing)
    # AWS's certificate ID is the SHA-256 of the DER, so one Describe finds a CA that is
    # already registered; a listing is only the fallback.
    found = _ca_matching(api, fingerprint, fingerprint)
    if found is None:
        try:
            result = _register_ca(api, pem_of(issuing), ca, sni_only=sni_only)
            return str(result["certificateId"]), str(result.get("certificateArn", ""))
        except AwsApiError as exc:
            if not is_already_there(exc):
                raise
            resource_id = str(exc.body.get("resourceId") or "")
            found = _ca_matching(api, resource_id, fingerprint) if resource_id else None
            found = found or _find_ca(api, fingerprint)
            if found is None:
                raise
    ca_id, ca_arn, status = found
    if status != "ACTIVE":
        api.call(
            "UpdateCACertificate",
            "PUT",
            f"/cacertificate/{uri_label(ca_id)}"
            + query_string(newStatus="ACTIVE", newAutoRegistrationStatus="DISABLE"),
        )
    return ca_id, ca_arn


def _register_ca(
    api: AwsApi, issuing_pem: str, ca: CaMaterial, *, sni_only: bool
) -> dict[str, Any]:
    body: dict[str, Any] = {"caCertificate": issuing_pem}
    if sni_only:
        body["certificateMode"] = "SNI_ONLY"
    else:
        code = api.call("GetRegistrationCode", "GET", "/registrationcode")
        registration_code = str(code.get("registrationCode", ""))
        if not registration_code:
            raise PermanentError("AWS IoT GetRegistrationCode returned no code")
        # This key only proves to AWS that fleet controls the CA; it is never stored.
        key = ec.generate_private_key(ec.SECP256R1())
        public_pem = key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        body["verificationCertificate"] = ca.sign_verification_cert(registration_code, public_pem)
        body["certificateMode"] = "DEFAULT"
    query = query_string(setAsActive="true", allowAutoRegistration="false")
    return api.call("RegisterCACertificate", "POST", "/cacertificate" + query, body=body)


def _find_ca(api: AwsApi, fingerprint: str) -> RegisteredCa | None:
    """The registered CA with this fingerprint, by listing them."""
    for page in api.pages("ListCACertificates", "GET", "/cacertificates", MARKER, pageSize="250"):
        for listed in page.get("certificates", []):
            ca_id = str(listed.get("certificateId", ""))
            found = _ca_matching(api, ca_id, fingerprint) if ca_id else None
            if found:
                return found
    return None


def _ca_matching(api: AwsApi, ca_id: str, fingerprint: str) -> RegisteredCa | None:
    described = api.describe("DescribeCACertificate", f"/cacertificate/{uri_label(ca_id)}")
    info = (described or {}).get("certificateDescription", {})
    pem = info.get("certificatePem")
    if pem and fingerprint_sha256(load_cert(pem, "a registered CA")) == fingerprint:
        return ca_id, str(info.get("certificateArn", "")), str(info.get("status", ""))
    return None


def ensure_policy(api: AwsApi, name: str) -> None:
    """Create the device policy ``name`` unless it exists (an existing policy is the
    operator's: fleet never rewrites it)."""
    path = f"/policies/{uri_label(name)}"
    if api.describe("GetPolicy", path) is not None:
        return
    document = json.dumps(device_policy_document(api.region))
    api.create_unless_present("CreatePolicy", path, body={"policyDocument": document})


def ensure_named(api: AwsApi, kind: str, path: str) -> None:
    """Create a thing group or thing type (``kind``) at ``path`` unless it exists."""
    if api.describe(f"Describe{kind}", path) is not None:
        return
    api.create_unless_present(f"Create{kind}", path, body={})


def describe_data_endpoint(api: AwsApi) -> str:
    """The account's device data endpoint (DescribeEndpoint, iot:Data-ATS), as a URL."""
    found = api.call("DescribeEndpoint", "GET", DATA_ENDPOINT_PATH)
    address = str(found.get("endpointAddress", ""))
    if not address:
        raise PermanentError("AWS IoT DescribeEndpoint returned no data endpoint")
    return f"https://{address}"
