"""Certificate profiles are validated when loaded, so every certificate one yields passes
pkilint; what depends on the device (its ID in ``san_dns``, its key) is checked when the
certificate is issued. Loading profiles and CSRs raises nothing but InvalidInput."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from helpers import Cli, snapshot
from helpers.fuzz_pki import (
    CsrSamples,
    check_csr_bytes,
    check_profile_file,
    check_profile_issues_clean,
    device_ids,
    garbage_profiles,
    make_issuer,
    mutate,
    plausible_profiles,
    profile_toml,
    sample_csrs,
    write_profile,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fleet.errors import InvalidInput
from fleet.pki import issue, profiles
from fleet.pki.csr import load_csr
from fleet.pki.issuer import Issuer
from fleet.pki.profiles import (
    PROFILE_FILE_MAX,
    available_profiles,
    find_profile,
    load_profile,
)
from fleet.workspace import Workspace

SETTINGS = settings(
    deadline=None, database=None, suppress_health_check=list(HealthCheck), max_examples=50
)

# (what is wrong, the profile, what the message must name)
BAD_PROFILES: list[tuple[str, dict[str, Any], str]] = [
    ("empty DNS name", {"extensions": {"san_dns": [""]}}, "extensions.san_dns[0]"),
    ("space in a DNS name", {"extensions": {"san_dns": ["a b.example"]}}, "san_dns[0]"),
    ("IP address as DNS name", {"extensions": {"san_dns": ["127.0.0.1"]}}, "san_dns[0]"),
    ("unknown placeholder", {"extensions": {"san_dns": ["{0}"]}}, "san_dns[0]"),
    ("U-label", {"extensions": {"san_dns": ["dév.example"]}}, "san_dns[0]"),
    ("wildcard", {"extensions": {"san_dns": ["*.example.com"]}}, "san_dns[0]"),
    ("single label", {"extensions": {"san_dns": ["ok.example", "localhost"]}}, "san_dns[1]"),
    ("trailing dot", {"extensions": {"san_dns": ["a.example."]}}, "san_dns[0]"),
    ("label over 63", {"extensions": {"san_dns": ["a" * 64 + ".example"]}}, "san_dns[0]"),
    ("name over 253", {"extensions": {"san_dns": [("a" * 60 + ".") * 5 + "com"]}}, "san_dns"),
    ("bad A-label", {"extensions": {"san_dns": ["xn--.example"]}}, "san_dns[0]"),
    ("{id} as the TLD", {"extensions": {"san_dns": ["dev.{id}"]}}, "san_dns[0]"),
    ("organization of 200", {"subject": {"organization": "x" * 200}}, "subject.organization"),
    ("unit of 65", {"subject": {"organizational_unit": "x" * 65}}, "subject.organizational_unit"),
    ("locality of 129", {"subject": {"locality": "x" * 129}}, "subject.locality"),
    ("NUL in a subject field", {"subject": {"organization": "Ac\x00me"}}, "subject.organization"),
    ("newline in a subject field", {"subject": {"state": "Bay\nern"}}, "subject.state"),
    ("padded subject field", {"subject": {"locality": " Berlin"}}, "subject.locality"),
    ("lowercase country", {"subject": {"country": "de"}}, "subject.country"),
    ("unassigned country", {"subject": {"country": "ZZ"}}, "subject.country"),
    ("number as subject", {"subject": {"organization": 7}}, "subject.organization"),
    (
        "EC key with key_encipherment",
        {"extensions": {"key_usage": ["digital_signature", "key_encipherment"]}},
        "extensions.key_usage",
    ),
    (
        "EC key with data_encipherment",
        {"key_type": "ec-p384", "extensions": {"key_usage": ["data_encipherment"]}},
        "extensions.key_usage",
    ),
    (
        "RSA key with key_agreement",
        {"key_type": "rsa-2048", "extensions": {"key_usage": ["key_agreement"]}},
        "extensions.key_usage",
    ),
    (
        "client_auth without a fitting key usage",
        {"extensions": {"key_usage": ["content_commitment"]}},
        "extensions.extended_key_usage",
    ),
    ("no key usage", {"extensions": {"key_usage": []}}, "extensions.key_usage"),
    (
        "key usage twice",
        {"extensions": {"key_usage": ["digital_signature", "digital_signature"]}},
        "extensions.key_usage",
    ),
    (
        "unknown extended key usage",
        {"extensions": {"extended_key_usage": ["time_stamping"]}},
        "extensions.extended_key_usage",
    ),
    ("validity_days = true", {"validity_days": True}, "validity_days"),
    ("validity_days as text", {"validity_days": "365"}, "validity_days"),
    ("validity_days = 0", {"validity_days": 0}, "validity_days"),
    ("backdate_seconds = false", {"backdate_seconds": False}, "backdate_seconds"),
    ("key_type as a list", {"key_type": ["ec-p256"]}, "key_type"),
    ("description as a number", {"description": 3}, "description"),
    ("subject as a string", {"subject": "O=Acme"}, "subject"),
    ("unknown extension", {"extensions": {"san_ip": ["10.0.0.1"]}}, "extensions.san_ip"),
]


@pytest.mark.parametrize(
    ("raw", "field"),
    [pytest.param(raw, field, id=what) for what, raw, field in BAD_PROFILES],
)
def test_bad_profile_is_refused_naming_the_field(
    tmp_path: Path, raw: dict[str, Any], field: str
) -> None:
    write_profile(tmp_path, profile_toml(raw), name="bad")
    with pytest.raises(InvalidInput) as refused:
        load_profile("bad", tmp_path)
    message = str(refused.value)
    assert field in message
    assert str(tmp_path / "profiles" / "bad.toml") in message
    assert "\n" not in message and refused.value.exit_code == 2


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(b"\xff\xfe key_type", id="not UTF-8"),
        pytest.param(b"key_type = ", id="not TOML"),
        pytest.param(b"x = " + b"[" * 5000 + b"]" * 5000, id="nested too deeply"),
        pytest.param(b"validity_days = " + b"9" * 5000, id="integer too long"),
        pytest.param(b"#" * (PROFILE_FILE_MAX + 1), id="too large"),
    ],
)
def test_unreadable_profile_file_is_refused(tmp_path: Path, data: bytes) -> None:
    write_profile(tmp_path, data, name="bad")
    with pytest.raises(InvalidInput) as refused:
        load_profile("bad", tmp_path)
    assert "bad.toml" in str(refused.value) and "\n" not in str(refused.value)


def test_profile_name_with_a_newline_is_refused(tmp_path: Path) -> None:
    with pytest.raises(InvalidInput, match="invalid profile name"):
        load_profile("default\n", tmp_path)


def test_shipped_profiles_load() -> None:
    assert {"default", "rsa"} <= set(available_profiles())
    for name in available_profiles():
        if name in profiles.RESERVED_PROFILES:  # fleet's own signers': read, never for devices
            profiles.read_profile(name, profiles.find_profile(name))
            with pytest.raises(InvalidInput):
                load_profile(name)
        else:
            load_profile(name)


def test_edge_values_are_accepted_and_pkilint_clean(tmp_path: Path, issuer: Issuer) -> None:
    raw = {
        "description": "Gateways: TLS both ways",
        "validity_days": 36500,
        "backdate_seconds": 0,
        "subject": {
            "organization": "O" * 64,
            "organizational_unit": "Ünit, R&D",
            "country": "DE",
            "state": "S" * 128,
            "locality": "L" * 128,
        },
        "extensions": {
            "key_usage": ["digital_signature", "content_commitment"],
            "extended_key_usage": ["client_auth", "server_auth", "email_protection"],
            "san_dns": ["{id}.gw.example.com", "xn--dv-bja.example", "a" * 63 + ".example"],
        },
    }
    assert check_profile_issues_clean(issuer, tmp_path, raw, "gw-1") == ["ec-p256", "rsa-2048"]
    profile = load_profile("fuzzed", tmp_path)
    assert profile.dns_names("GW-7") == [
        "GW-7.gw.example.com",
        "xn--dv-bja.example",
        "a" * 63 + ".example",
    ]


# --- what depends on the device: checked when the certificate is issued -------------------


@pytest.fixture(scope="module")
def issuer(tmp_path_factory: pytest.TempPathFactory) -> Issuer:
    return make_issuer(tmp_path_factory.mktemp("ca"))


@pytest.mark.parametrize(
    "device_id", ["pump_1", "pump:1", "a.", "x" * 64, "a-"], ids=["_", ":", "dot", "64", "-"]
)
def test_device_id_that_makes_no_dns_name_is_refused(
    tmp_path: Path, issuer: Issuer, device_id: str
) -> None:
    write_profile(tmp_path, '[extensions]\nsan_dns = ["ok.example", "{id}.gw.example.com"]\n')
    profile = load_profile("fuzzed", tmp_path)
    with pytest.raises(InvalidInput) as refused:
        issue.issue_certificate(issuer, device_id, profile)
    assert "san_dns '{id}.gw.example.com'" in str(refused.value)
    assert repr(device_id) in str(refused.value)


def test_key_that_cannot_have_the_key_usages_is_refused(issuer: Issuer) -> None:
    rsa_profile = load_profile("rsa")  # digital_signature, key_encipherment
    with pytest.raises(InvalidInput, match="key_encipherment is not allowed for EC keys"):
        issue.issue_certificate(issuer, "dev-1", rsa_profile, key_type="ec-p256")
    key = ec.generate_private_key(ec.SECP256R1())
    request = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, "dev-1")]))
        .sign(key, hashes.SHA256())
    )
    csr = load_csr(request.public_bytes(serialization.Encoding.PEM), "dev-1")
    with pytest.raises(InvalidInput, match=r"EC keys \(ec-p256\)"):
        issue.issue_certificate(issuer, "dev-1", rsa_profile, csr=csr)
    issued = issue.issue_certificate(issuer, "dev-1", load_profile("default"), csr=csr)
    assert (issued.key_type, issued.key_origin) == ("ec-p256", "csr")


def test_device_add_with_a_bad_profile_changes_nothing(
    ready_sqlite_ws: Workspace, sqlite_cli: Cli, tmp_path: Path
) -> None:
    home = ready_sqlite_ws.home
    write_profile(home, '[extensions]\nsan_dns = ["dév.example"]\n', name="idn")
    write_profile(home, '[extensions]\nsan_dns = ["{id}.gw.example.com"]\n', name="gateway")
    out = tmp_path / "ids"
    before = snapshot(ready_sqlite_ws, home / "profiles")
    for args in (
        ["dev-1", "--profile", "idn"],
        ["dev_1", "--profile", "gateway"],
        ["dev-1", "--profile", "rsa", "--key-type", "ec-p256"],
    ):
        result = sqlite_cli("device", "add", *args, "--out", str(out))
        assert result.exit_code == 2, (args, result.stderr)
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr
        assert "Traceback" not in result.stderr and "profile" in result.stderr
        assert not out.exists()
    assert snapshot(ready_sqlite_ws, home / "profiles") == before


def test_profile_problem_is_reported_before_the_passphrase_is_needed(
    ready_sqlite_ws: Workspace, sqlite_cli: Cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without a passphrase (no terminal), a request that cannot be issued is still exit 2."""
    write_profile(ready_sqlite_ws.home, '[extensions]\nsan_dns = ["{id}.gw.example"]\n', "gw")
    out = tmp_path / "ids"
    assert sqlite_cli("device", "add", "dev_1", "--out", str(out)).exit_code == 0
    monkeypatch.delenv("FLEET_CA_PASSPHRASE")
    before = snapshot(ready_sqlite_ws, out)
    for args in (
        ["device", "add", "dev_2", "--profile", "gw"],
        ["device", "add", "dev-2", "--profile", "rsa", "--key-type", "ec-p384"],
        ["cert", "renew", "dev_1", "--profile", "gw"],
        ["cert", "renew", "dev_1", "--profile", "rsa", "--key-type", "ec-p256"],
    ):
        result = sqlite_cli(*args, "--out", str(out))
        assert result.exit_code == 2, (args, result.stderr)
        assert "profile" in result.stderr and "passphrase" not in result.stderr
    assert snapshot(ready_sqlite_ws, out) == before


# --- properties ---------------------------------------------------------------------------


@SETTINGS
@given(raw=garbage_profiles | plausible_profiles, device_id=device_ids)
def test_any_profile_loads_or_is_refused(raw: dict[str, Any], device_id: str) -> None:
    with tempfile.TemporaryDirectory() as home:
        check_profile_file(Path(home), profile_toml(raw), device_id)


@SETTINGS
@given(data=st.binary(max_size=300) | st.text(max_size=300))
def test_any_profile_file_loads_or_is_refused(data: bytes | str) -> None:
    with tempfile.TemporaryDirectory() as home:
        check_profile_file(Path(home), data)


@pytest.mark.slow
@settings(SETTINGS, max_examples=30)
@given(raw=plausible_profiles, device_id=device_ids | st.sampled_from(["dev-1", "GW-2", "7"]))
def test_accepted_profiles_issue_pkilint_clean_certificates(
    issuer: Issuer, raw: dict[str, Any], device_id: str
) -> None:
    """Loader refuses, or EC and RSA certificates (where the key usages allow) lint clean."""
    with tempfile.TemporaryDirectory() as home:
        check_profile_issues_clean(issuer, Path(home), raw, device_id)


@pytest.fixture(scope="module")
def csr_samples() -> CsrSamples:
    return sample_csrs()


def test_valid_csrs_load(csr_samples: CsrSamples) -> None:
    for data in csr_samples.encodings:
        assert load_csr(data, "dev-1").subject.rfc4514_string() == "CN=dev-1,O=Acme"
    assert load_csr(csr_samples.resigned(csr_samples.info), "dev-1")


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(b"\x30\x03\x02\x01\x07", id="not a CSR"),
        pytest.param(b"-----BEGIN CERTIFICATE REQUEST-----\n!!\n", id="bad PEM"),
    ],
)
def test_malformed_csr_is_refused(data: bytes) -> None:
    with pytest.raises(InvalidInput, match="not a valid certificate signing request"):
        load_csr(data, "dev-1")


def test_signed_csr_with_a_malformed_subject_is_refused(csr_samples: CsrSamples) -> None:
    """cryptography parses the subject when it is first read: a signed request whose
    subject is malformed used to escape as ValueError/KeyError/TypeError."""
    info = csr_samples.info
    cn = info.index(b"dev-1") - 2  # the CN's string tag and length
    for tag in (0x0C, 0x1E, 0x03, 0x2C, 0xFF):  # UTF8String ok; BMPString odd length; ...
        mutated = info[:cn] + bytes([tag]) + info[cn + 1 :]
        check_csr_bytes(csr_samples.resigned(mutated))
    version = info.index(b"\x02\x01\x00")  # INTEGER 0, the version
    with pytest.raises(InvalidInput):
        load_csr(csr_samples.resigned(info[:version] + b"\x02\x01\x07" + info[version + 3 :]), "x")


@SETTINGS
@given(data=st.binary(max_size=600))
def test_random_bytes_as_csr(data: bytes) -> None:
    check_csr_bytes(data)
    check_csr_bytes(b"-----BEGIN CERTIFICATE REQUEST-----\n" + data)


@settings(SETTINGS, max_examples=150)
@given(which=st.integers(0, 3), seed=st.integers(0, 2**32), edits=st.integers(1, 4))
def test_mutated_csr(csr_samples: CsrSamples, which: int, seed: int, edits: int) -> None:
    check_csr_bytes(mutate(csr_samples.encodings[which], seed, edits))


@settings(SETTINGS, max_examples=150)
@given(seed=st.integers(0, 2**32), edits=st.integers(1, 3))
def test_mutated_and_resigned_csr(csr_samples: CsrSamples, seed: int, edits: int) -> None:
    check_csr_bytes(csr_samples.resigned(mutate(csr_samples.info, seed, edits)))


# --- fleet profile list | show ----------------------------------------------------------


def test_profile_list_and_show(sqlite_ws: Workspace, sqlite_cli: Cli) -> None:
    write_profile(sqlite_ws.home, 'key_type = "ec-p384"\ndescription = "Gateways"\n', "gw")
    write_profile(sqlite_ws.home, "validity_days = true\n", name="broken")
    listed = sqlite_cli("profile", "list", "--json")
    assert listed.exit_code == 0, listed.stderr
    entries = {e["name"]: e for e in json.loads(listed.stdout)}
    assert {"default", "rsa", "gw", "broken"} <= set(entries)
    assert entries["gw"] == {
        "name": "gw",
        "path": str(sqlite_ws.home / "profiles" / "gw.toml"),
        "valid": True,
        "description": "Gateways",
        "key_type": "ec-p384",
        "error": None,
    }
    assert not entries["broken"]["valid"]
    assert "validity_days" in entries["broken"]["error"]
    assert "(got true)" in entries["broken"]["error"]
    human = sqlite_cli("profile", "list")
    assert human.exit_code == 0 and "Gateways" in human.stdout and "invalid" in human.stdout

    shown = sqlite_cli("profile", "show", "rsa", "--json")
    assert shown.exit_code == 0, shown.stderr
    assert json.loads(shown.stdout) == {
        **load_profile("rsa").to_dict(),
        "path": str(find_profile("rsa")),
    }
    assert json.loads(shown.stdout)["key_usage"] == ["digital_signature", "key_encipherment"]
    assert "digital_signature" in sqlite_cli("profile", "show", "default").stdout

    broken = sqlite_cli("profile", "show", "broken")
    assert broken.exit_code == 2 and "validity_days" in broken.stderr
    assert len(broken.stderr.strip().splitlines()) == 1
    missing = sqlite_cli("profile", "show", "nope")
    assert missing.exit_code == 3 and "gw" in missing.stderr
