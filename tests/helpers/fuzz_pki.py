"""Hypothesis strategies and properties for profile and CSR loading.

Shared by ``tests/test_profiles.py`` (a few examples each) and ``bench/fuzz_pki.py`` (runs
them long). Each ``check_*`` function is one example of a property; ``*_strategy`` objects
generate its input.
"""

from __future__ import annotations

import contextlib
import random
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from asn1crypto import csr as asn1_csr
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from hypothesis import strategies as st
from pkitools import pkilint_cert

from fleet.errors import InvalidInput
from fleet.pki import ca, issue
from fleet.pki.issuer import Issuer
from fleet.pki.profiles import EXTENDED_KEY_USAGES, KEY_USAGES, load_profile

PROFILE_NAME = "fuzzed"
# The key types every accepted profile is issued with (where its key usages allow them);
# small ones, RSA key generation is slow.
ISSUE_KEY_TYPES = ("ec-p256", "rsa-2048")

# --- TOML --------------------------------------------------------------------------------


def toml_string(text: str) -> str:
    """``text`` as a TOML basic string (every control character escaped)."""
    out = []
    for char in text:
        if char in '"\\':
            out.append("\\" + char)
        elif ord(char) < 0x20 or ord(char) == 0x7F:
            out.append(f"\\u{ord(char):04x}")
        else:
            out.append(char)
    return '"' + "".join(out) + '"'


def toml_value(value: Any) -> str:
    """A TOML value: bool, int, float, str, list or dict (as an inline table)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        text = repr(value)
        return {"inf": "inf", "-inf": "-inf", "nan": "nan"}.get(text, text)
    if isinstance(value, str):
        return toml_string(value)
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    pairs = ", ".join(f"{toml_string(str(k))} = {toml_value(v)}" for k, v in value.items())
    return "{" + pairs + "}"


def profile_toml(raw: dict[str, Any]) -> str:
    """A profile file holding ``raw`` (tables written inline)."""
    return "".join(f"{toml_string(str(k))} = {toml_value(v)}\n" for k, v in raw.items())


# --- profiles ----------------------------------------------------------------------------

_label = st.from_regex(r"[a-z0-9]([a-z0-9-]{0,10}[a-z0-9])?", fullmatch=True)
_tld = st.from_regex(r"[a-z]{2,6}", fullmatch=True)
_dns_template = st.builds(
    lambda first, rest, tld: ".".join([first, *rest, tld]),
    st.sampled_from(["{id}", "dev-{id}", "{id}-x", "api"]) | _label,
    st.lists(_label, max_size=2),
    _tld,
)
_fine_text = st.from_regex(
    r"[A-Za-zÀ-ÿ0-9]([A-Za-zÀ-ÿ0-9 ,.&'-]{0,40}[A-Za-z0-9.])?", fullmatch=True
)
# Mostly printable text; sometimes control characters, padding, too long.
_subject_text = (
    _fine_text
    | _fine_text
    | _fine_text
    | st.text(alphabet=st.characters(exclude_categories=("Cs",)), min_size=0, max_size=70)
    | st.text(alphabet="abc ", min_size=60, max_size=130)
)
_usages = st.lists(st.sampled_from(KEY_USAGES), min_size=0, max_size=3)
_ekus = st.lists(st.sampled_from(EXTENDED_KEY_USAGES), min_size=0, max_size=2)


def _often(good: st.SearchStrategy[Any], bad: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """``good`` three times in four, else ``bad``."""
    return good | good | good | bad


_printable = st.text(alphabet="abcdefghijklmnopqrstuvwxyz ABC,.-_'()0123456789", max_size=40)
plausible_profiles = st.fixed_dictionaries(
    {},
    optional={
        # each value: mostly what the loader accepts (the first alternatives), then not
        "description": _printable,
        "key_type": st.sampled_from(["ec-p256", "rsa-2048", "ec-p384", "dsa-1024"]),
        "validity_days": _often(st.integers(1, 36500), st.integers(-2, 40000) | st.booleans()),
        "backdate_seconds": _often(st.integers(0, 86400), st.integers(-2, 90000) | st.booleans()),
        "subject": st.fixed_dictionaries(
            {},
            optional={
                "organization": _subject_text,
                "organizational_unit": _subject_text,
                "country": st.sampled_from(["DE", "US", "FR", "JP", "BR", "de", "ZZ", "DEU"]),
                "state": _subject_text,
                "locality": _subject_text,
            },
        ),
        "extensions": st.fixed_dictionaries(
            {},
            optional={
                "key_usage": _usages,
                "extended_key_usage": _ekus,
                "san_dns": st.lists(
                    _dns_template | _dns_template | st.text(max_size=20), max_size=3
                ),
            },
        ),
    },
)
"""Profiles near what the loader accepts: most are accepted, many are subtly wrong."""

_scalars = st.booleans() | st.integers() | st.floats() | st.text(max_size=20)
_any_value = st.recursive(
    _scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4)
    ),
    max_leaves=12,
)
_known_keys = st.sampled_from(
    ["description", "key_type", "validity_days", "backdate_seconds", "subject", "extensions"]
)
garbage_profiles = st.dictionaries(_known_keys | st.text(max_size=10), _any_value, max_size=6)
"""Profiles of arbitrary TOML values, under the keys profiles use and others."""

device_ids = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}", fullmatch=True)


def write_profile(home: Path, text: str | bytes, name: str = PROFILE_NAME) -> None:
    """Put a profile file in ``home``'s profiles folder."""
    folder = home / "profiles"
    folder.mkdir(parents=True, exist_ok=True)
    data = text.encode("utf-8") if isinstance(text, str) else text
    (folder / f"{name}.toml").write_bytes(data)


def check_profile_file(home: Path, data: str | bytes, device_id: str = "dev-1") -> None:
    """Property: loading a profile file and using it raises nothing but InvalidInput."""
    write_profile(home, data)
    try:
        profile = load_profile(PROFILE_NAME, home)
        profile.dns_names(device_id)
        for key_type in ISSUE_KEY_TYPES:
            with contextlib.suppress(InvalidInput):
                profile.check_key_type(key_type)
    except InvalidInput as exc:
        assert "\n" not in str(exc), str(exc)


def check_profile_issues_clean(
    issuer: Issuer, home: Path, raw: dict[str, Any], device_id: str
) -> list[str]:
    """Property: the loader refuses the profile (InvalidInput), or every certificate it
    yields, with each key type it allows, passes pkilint at NOTICE. Returns the key types
    that were issued and linted."""
    write_profile(home, profile_toml(raw))
    try:
        profile = load_profile(PROFILE_NAME, home)
    except InvalidInput as exc:
        assert "\n" not in str(exc), str(exc)
        return []
    linted = []
    with tempfile.TemporaryDirectory() as tmp:
        for key_type in ISSUE_KEY_TYPES:
            try:
                issued = issue.issue_certificate(issuer, device_id, profile, key_type=key_type)
            except InvalidInput as exc:  # this key type, or this ID in san_dns
                assert "key_usage" in str(exc) or "san_dns" in str(exc), str(exc)
                continue
            path = Path(tmp) / f"{key_type}.pem"
            path.write_text(issued.cert_pem)
            assert pkilint_cert(path) == [], (raw, device_id, key_type, issued.cert_pem)
            linted.append(key_type)
    if not profile.san_dns:  # the profile's own key type is EC or RSA: one of them fits
        assert linted, (raw, device_id)
    return linted


def make_issuer(folder: Path) -> Issuer:
    """A throwaway CA's issuer for the properties."""
    return ca.create_ca(folder, "Fuzz", "ec-p256", "fuzz passphrase")


# --- CSRs --------------------------------------------------------------------------------


@dataclass(frozen=True)
class CsrSamples:
    """Valid CSRs for ``device_id`` (EC and RSA) as DER and PEM, and what it takes to sign
    a mutated CertificationRequestInfo so that the mutation gets past the signature check."""

    encodings: list[bytes]  # DER and PEM of each
    info: bytes  # the EC request's CertificationRequestInfo (DER)
    algorithm: bytes  # its signatureAlgorithm (DER)
    key: ec.EllipticCurvePrivateKey

    def resigned(self, info: bytes) -> bytes:
        """A CertificationRequest of ``info`` (any bytes) with a valid signature over it."""
        signature = self.key.sign(info, ec.ECDSA(hashes.SHA256()))
        return _tlv(0x30, info + self.algorithm + _tlv(0x03, b"\x00" + signature))


def _tlv(tag: int, body: bytes) -> bytes:
    size = len(body)
    if size < 0x80:
        return bytes([tag, size]) + body
    length = size.to_bytes((size.bit_length() + 7) // 8, "big")
    return bytes([tag, 0x80 | len(length)]) + length + body


def sample_csrs(device_id: str = "dev-1") -> CsrSamples:
    """Valid CSRs for ``device_id``, see :class:`CsrSamples`."""
    ec_key = ec.generate_private_key(ec.SECP256R1())
    keys: list[ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey] = [
        ec_key,
        rsa.generate_private_key(public_exponent=65537, key_size=2048),
    ]
    name = x509.Name(
        [
            x509.NameAttribute(x509.NameOID.ORGANIZATION_NAME, "Acme"),
            x509.NameAttribute(x509.NameOID.COMMON_NAME, device_id),
        ]
    )
    encodings: list[bytes] = []
    for key in keys:
        request = (
            x509.CertificateSigningRequestBuilder()
            .subject_name(name)
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("a.example")]), False)
            .sign(key, hashes.SHA256())
        )
        encodings.append(request.public_bytes(serialization.Encoding.DER))
        encodings.append(request.public_bytes(serialization.Encoding.PEM))
    parsed = asn1_csr.CertificationRequest.load(encodings[0])
    return CsrSamples(
        encodings,
        parsed["certification_request_info"].dump(),
        parsed["signature_algorithm"].dump(),
        ec_key,
    )


def mutate(data: bytes, seed: int, edits: int) -> bytes:
    """``data`` with ``edits`` random byte flips, insertions, deletions or a truncation."""
    rnd = random.Random(seed)
    out = bytearray(data)
    for _ in range(edits):
        op = rnd.randrange(4)
        if op == 0 and out:
            out[rnd.randrange(len(out))] = rnd.randrange(256)
        elif op == 1:
            out = out[: rnd.randrange(len(out) + 1)]
        elif op == 2 and out:
            del out[rnd.randrange(len(out))]
        else:
            out.insert(rnd.randrange(len(out) + 1), rnd.randrange(256))
    return bytes(out)


def check_csr_bytes(data: bytes, device_id: str = "dev-1") -> None:
    """Property: loading any bytes as a CSR raises nothing but InvalidInput."""
    from fleet.pki.csr import load_csr

    try:
        load_csr(data, device_id)
    except InvalidInput as exc:
        assert "\n" not in str(exc), str(exc)
