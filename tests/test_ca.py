"""The CA: init, RFC 5280 hygiene checked by pkilint and `openssl verify`, CRLs, profiles,
the issuance path and the worker issuer."""

from __future__ import annotations

import json
import multiprocessing
import pickle
import stat
from concurrent.futures import ProcessPoolExecutor
from datetime import UTC, datetime
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from helpers import PASSPHRASE, Cli, snapshot
from pkitools import (
    openssl_verify,
    openssl_verify_crl,
    pkilint_cert,
    pkilint_chain,
    pkilint_crl,
)

from fleet import devices
from fleet.errors import Conflict, NotFound
from fleet.pki import authority, ca, issue, keys
from fleet.pki.csr import load_csr
from fleet.pki.issuer import Issuer, IssuerFactory
from fleet.pki.profiles import load_profile
from fleet.registry import audit
from fleet.workspace import Workspace


def test_init_creates_protected_encrypted_ca(sqlite_ws: Workspace, sqlite_cli: Cli) -> None:
    result = sqlite_cli("init", "--name", "Acme", "--json")
    assert result.exit_code == 0, result.stderr
    info = json.loads(result.stdout)
    assert info["root"]["subject"] == "CN=Acme Root CA,O=Acme"
    assert info["issuing"]["subject"] == "CN=Acme Issuing CA,O=Acme"
    folder = sqlite_ws.home / "ca"
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    for key_file in ("root.key.pem", "issuing.key.pem"):
        path = folder / key_file
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        data = path.read_bytes()
        assert data.startswith(b"-----BEGIN ENCRYPTED PRIVATE KEY-----")
        with pytest.raises(TypeError):  # unusable without the passphrase
            serialization.load_pem_private_key(data, password=None)
        serialization.load_pem_private_key(data, password=PASSPHRASE.encode())
    assert PASSPHRASE not in result.stdout + result.stderr
    events = audit.iter_audit_events(sqlite_ws)
    assert [e["action"] for e in events] == ["ca.init"]


def test_init_twice_refuses_and_changes_nothing(ready_ws: Workspace, cli: Cli) -> None:
    before = snapshot(ready_ws)
    result = cli("init", "--name", "Other")
    assert result.exit_code == Conflict.exit_code
    assert "already initialised" in result.stderr
    assert snapshot(ready_ws) == before


def test_init_on_registry_owned_by_another_ca_refuses(ready_ws: Workspace, tmp_path: Path) -> None:
    """A second home pointed at the same registry must not create a second CA for it."""
    if ready_ws.db_url is None:
        other = Workspace(home=tmp_path / "other", db_url=ready_ws.registry_url)
    else:
        other = Workspace(home=tmp_path / "other", db_url=ready_ws.db_url)
    with pytest.raises(Conflict, match="already belongs to a CA"):
        authority.init_workspace(other, passphrase=PASSPHRASE)
    assert not (tmp_path / "other" / "ca").exists()
    other.close()


def test_init_without_passphrase_or_terminal(
    sqlite_ws: Workspace, sqlite_cli: Cli, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("FLEET_CA_PASSPHRASE")
    result = sqlite_cli("init")
    assert result.exit_code == 6
    assert "FLEET_CA_PASSPHRASE" in result.stderr
    assert not (sqlite_ws.home / "ca").exists()


def test_init_rejects_unknown_key_type(sqlite_ws: Workspace, sqlite_cli: Cli) -> None:
    result = sqlite_cli("init", "--key-type", "dsa-1024")
    assert result.exit_code == 2
    assert "ec-p256, ec-p384, rsa-3072" in result.stderr
    assert not (sqlite_ws.home / "ca").exists()


@pytest.mark.parametrize("key_type", ["ec-p256", "ec-p384", "rsa-3072"])
@pytest.mark.parametrize("profile", ["default", "rsa"])
def test_certificates_are_rfc5280_clean(
    sqlite_ws: Workspace, tmp_path: Path, key_type: str, profile: str
) -> None:
    """pkilint (NOTICE) on every certificate and link, and `openssl verify -x509_strict`."""
    authority.init_workspace(sqlite_ws, name="Lint Co", key_type=key_type, passphrase=PASSPHRASE)
    devices.add_device(
        sqlite_ws, "lint-1", profile=profile, out_dir=tmp_path / "out", passphrase=PASSPHRASE
    )
    ca_dir = sqlite_ws.home / "ca"
    root, issuing = ca_dir / "root.cert.pem", ca_dir / "issuing.cert.pem"
    leaf = tmp_path / "out" / "lint-1" / "cert.pem"
    for cert in (root, issuing, leaf):
        assert pkilint_cert(cert) == [], cert.name
    assert pkilint_chain(root, root) == []
    assert pkilint_chain(root, issuing) == []
    assert pkilint_chain(issuing, leaf) == []
    ok, output = openssl_verify(root, issuing, leaf, "-purpose", "sslclient")
    assert ok, output
    parsed = x509.load_pem_x509_certificate(leaf.read_bytes())
    assert parsed.extensions.get_extension_for_class(
        x509.ExtendedKeyUsage
    ).value == x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.CLIENT_AUTH])


def test_openssl_rejects_a_leaf_from_another_ca(ready_sqlite_ws: Workspace, tmp_path: Path) -> None:
    """The verification helper can fail: a foreign chain does not verify."""
    devices.add_device(ready_sqlite_ws, "x-1", out_dir=tmp_path, passphrase=PASSPHRASE)
    stranger = Workspace(home=tmp_path / "stranger")
    authority.init_workspace(stranger, name="Stranger", passphrase=PASSPHRASE)
    ok, output = openssl_verify(
        stranger.home / "ca" / "root.cert.pem",
        stranger.home / "ca" / "issuing.cert.pem",
        tmp_path / "x-1" / "cert.pem",
    )
    assert not ok, output
    stranger.close()


def test_crl_lists_revoked_serials_and_is_clean(
    ready_ws: Workspace, cli: Cli, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    for device_id in ("c1", "c2", "c3"):
        devices.add_device(ready_ws, device_id, out_dir=out, passphrase=PASSPHRASE)
    c1 = devices.show_device(ready_ws, "c1").certificates[0].serial
    assert cli("cert", "revoke", c1, "--reason", "key-compromise").exit_code == 0
    assert cli("device", "decommission", "c2").exit_code == 0
    c2 = devices.show_device(ready_ws, "c2").certificates[0].serial

    crl_path = tmp_path / "fleet.crl.pem"
    result = cli("ca", "crl", "--out", str(crl_path))
    assert result.exit_code == 0, result.stderr
    crl = x509.load_pem_x509_crl(crl_path.read_bytes())
    listed = {format(r.serial_number, "x"): r for r in crl}
    assert set(listed) == {c1, c2}
    reason = listed[c1].extensions.get_extension_for_class(x509.CRLReason).value.reason
    assert reason == x509.ReasonFlags.key_compromise
    assert crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number == 1
    crl.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier)
    assert pkilint_crl(crl_path) == []
    chain = tmp_path / "chain.pem"
    assert cli("ca", "chain", "--out", str(chain)).exit_code == 0
    ok, output = openssl_verify_crl(crl_path, chain)
    assert ok, output

    # A relying party checking revocation: the revoked leaf fails, the healthy one passes.
    root = ready_ws.home / "ca" / "root.cert.pem"
    issuing = ready_ws.home / "ca" / "issuing.cert.pem"
    crl_args = ("-crl_check", "-CRLfile", str(crl_path))
    ok, output = openssl_verify(root, issuing, out / "c1" / "cert.pem", *crl_args)
    assert not ok and "revoked" in output
    ok, output = openssl_verify(root, issuing, out / "c3" / "cert.pem", *crl_args)
    assert ok, output

    second = cli("ca", "crl")
    assert second.exit_code == 0
    number = x509.load_pem_x509_crl(second.stdout.encode()).extensions.get_extension_for_class(
        x509.CRLNumber
    )
    assert number.value.crl_number == 2


def test_ca_show_and_chain(ready_ws: Workspace, cli: Cli) -> None:
    info = json.loads(cli("ca", "show", "--json").stdout)
    root = x509.load_pem_x509_certificate((ready_ws.home / "ca" / "root.cert.pem").read_bytes())
    assert info["root"]["fingerprint_sha256"] == root.fingerprint(hashes.SHA256()).hex()
    assert info["issuing"]["subject"] == "CN=Test Fleet Issuing CA,O=Test Fleet"
    assert {"not_before", "not_after", "serial"} <= set(info["root"])
    chain = x509.load_pem_x509_certificates(cli("ca", "chain").stdout.encode())
    assert [c.subject.rfc4514_string() for c in chain] == [
        info["issuing"]["subject"],
        info["root"]["subject"],
    ]
    human = cli("ca", "show")
    assert "issuing" in human.stdout and info["root"]["fingerprint_sha256"][:16] in human.stdout


def test_workspace_profile_overrides_and_unknown_profile(
    ready_sqlite_ws: Workspace, sqlite_cli: Cli, tmp_path: Path
) -> None:
    profiles = ready_sqlite_ws.home / "profiles"
    profiles.mkdir()
    (profiles / "gateway.toml").write_text(
        'key_type = "ec-p384"\nvalidity_days = 30\n[subject]\norganization = "Acme"\n'
        '[extensions]\nextended_key_usage = ["client_auth", "server_auth"]\n'
        'san_dns = ["{id}.gw.example.com"]\n'
    )
    result = sqlite_cli("device", "add", "gw-1", "--profile", "gateway", "--out", str(tmp_path))
    assert result.exit_code == 0, result.stderr
    cert = x509.load_pem_x509_certificate((tmp_path / "gw-1" / "cert.pem").read_bytes())
    assert cert.subject.rfc4514_string() == "CN=gw-1,O=Acme"
    assert (cert.not_valid_after_utc - cert.not_valid_before_utc).days == 30
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["gw-1.gw.example.com"]
    assert pkilint_cert(tmp_path / "gw-1" / "cert.pem") == []

    missing = sqlite_cli("device", "add", "gw-2", "--profile", "nope", "--out", str(tmp_path))
    assert missing.exit_code == NotFound.exit_code
    assert "no certificate profile named 'nope'" in missing.stderr
    assert "gateway" in missing.stderr

    (profiles / "broken.toml").write_text('key_type = "dsa"\n')
    broken = sqlite_cli("device", "add", "gw-3", "--profile", "broken", "--out", str(tmp_path))
    assert broken.exit_code == 2
    assert "key_type must be one of" in broken.stderr


def test_key_type_override(ready_sqlite_ws: Workspace, tmp_path: Path) -> None:
    device = devices.add_device(
        ready_sqlite_ws, "k-1", key_type="ec-p384", out_dir=tmp_path, passphrase=PASSPHRASE
    )
    assert device.certificates[0].key_type == "ec-p384"
    key = serialization.load_pem_private_key((tmp_path / "k-1" / "key.pem").read_bytes(), None)
    assert key.key_size == 384  # type: ignore[union-attr]


def test_passphrase_prompt_on_a_terminal(tmp_path: Path) -> None:
    """A technician without FLEET_CA_PASSPHRASE is asked (hidden, confirmed) on a real tty."""
    import os
    import pty
    import sys

    from helpers import REPO

    env = {k: v for k, v in os.environ.items() if k != "FLEET_CA_PASSPHRASE"}
    env["PYTHONPATH"] = str(REPO)

    def run_on_tty(args: list[str], answers: list[str]) -> tuple[int, str]:
        import select
        import time

        pid, fd = pty.fork()
        if pid == 0:  # child: becomes `python -m fleet ...` on the pty
            os.execve(sys.executable, [sys.executable, "-m", "fleet", *args], env)
        output = b""
        pending = list(answers)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if not select.select([fd], [], [], 1)[0]:
                continue
            try:
                chunk = os.read(fd, 1024)
            except OSError:  # EIO: the child closed the pty
                break
            if not chunk:
                break
            output += chunk
            # click prints "CA passphrase:", then getpass flushes pending input and prints
            # " ": answer only after that, or the answer is discarded.
            if pending and output.endswith(b": "):
                os.write(fd, (pending.pop(0) + "\n").encode())
        else:
            os.kill(pid, 9)
        _, status = os.waitpid(pid, 0)
        return os.waitstatus_to_exitcode(status), output.decode(errors="replace")

    home = str(tmp_path / "home")
    code, screen = run_on_tty(["--home", home, "init"], ["s3cret-passphrase", "s3cret-passphrase"])
    assert code == 0, screen
    assert "CA passphrase" in screen and "s3cret-passphrase" not in screen  # hidden input
    code, screen = run_on_tty(
        ["--home", home, "device", "add", "tty-1", "--out", str(tmp_path)], ["wrong"]
    )
    assert code == 6, screen
    code, screen = run_on_tty(
        ["--home", home, "device", "add", "tty-1", "--out", str(tmp_path)], ["s3cret-passphrase"]
    )
    assert code == 0, screen
    assert (tmp_path / "tty-1" / "key.pem").is_file()


# --- the issuance path ------------------------------------------------------------------


@pytest.fixture(scope="module")
def file_issuer(tmp_path_factory: pytest.TempPathFactory) -> ca.FileIssuer:
    return ca.create_ca(tmp_path_factory.mktemp("ca"), "Issue Test", "ec-p256", PASSPHRASE)


def assert_row_matches(
    row: object, issued: issue.IssuedCertificate, cert: x509.Certificate
) -> None:
    expected = {
        "serial": keys.serial_hex(cert.serial_number),
        "device_id": "dev-1",
        "fingerprint_sha256": keys.fingerprint_sha256(cert),
        "subject": cert.subject.rfc4514_string(),
        "not_before": cert.not_valid_before_utc,
        "not_after": cert.not_valid_after_utc,
        "status": "active",
        "profile": "default",
        "key_type": issued.key_type,
        "key_origin": issued.key_origin,
        "pem": keys.cert_pem(cert).decode("ascii"),
    }
    assert {name: getattr(row, name) for name in expected} == expected


def test_issue_with_a_generated_key(file_issuer: ca.FileIssuer) -> None:
    now = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
    issued = issue.issue_certificate(file_issuer, "dev-1", load_profile("default"), now=now)
    cert = issued.certificate()
    assert keys.verify_issued_by(cert, file_issuer.cert)
    assert cert.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)[0].value == "dev-1"
    assert (issued.key_type, issued.key_origin) == ("ec-p256", "generated")
    assert issued.key_pem is not None
    key = serialization.load_pem_private_key(issued.key_pem, password=None)
    assert key.public_key() == cert.public_key()

    row = issue.certificate_row("dev-1", issued, "default", now)
    assert_row_matches(row, issued, cert)
    assert row.issued_at == now and row.revoked_at is None
    assert issue.certificate_details(row) == issue.certificate_details(
        issue.certificate_values("dev-1", issued, "default", now)
    )
    assert issue.certificate_details(row)["not_after"] == cert.not_valid_after_utc.isoformat()


def test_issue_for_a_csr(file_issuer: ca.FileIssuer) -> None:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    request = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, "dev-1")]))
        .sign(key, hashes.SHA256())
    )
    csr = load_csr(request.public_bytes(serialization.Encoding.DER), "dev-1")
    now = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
    issued = issue.issue_certificate(
        file_issuer, "dev-1", load_profile("default"), key_type="ec-p384", csr=csr, now=now
    )
    cert = issued.certificate()
    assert cert.public_key() == key.public_key()
    assert (issued.key_type, issued.key_origin, issued.key_pem) == ("rsa-2048", "csr", None)
    assert_row_matches(issue.certificate_row("dev-1", issued, "default", now), issued, cert)


def test_issued_certificate_crosses_processes_without_its_key(file_issuer: ca.FileIssuer) -> None:
    issued = issue.issue_certificate(file_issuer, "dev-1", load_profile("default"))
    assert issued.key_pem is not None and "PRIVATE" not in repr(issued)
    sent = pickle.dumps(issued.without_key())
    assert b"PRIVATE KEY" not in sent
    received = pickle.loads(sent)
    assert received.key_pem is None
    assert (received.serial, received.cert_pem, received.key_origin) == (
        issued.serial,
        issued.cert_pem,
        issued.key_origin,
    )


_worker_issuer: Issuer | None = None


def _start_worker(factory: IssuerFactory) -> None:
    global _worker_issuer
    _worker_issuer = factory()


def _issue_in_worker(device_id: str) -> issue.IssuedCertificate:
    assert _worker_issuer is not None, "initialiser did not run"
    issued = issue.issue_certificate(_worker_issuer, device_id, load_profile("default"))
    return issued.without_key()


def test_worker_factory_gives_a_working_issuer_in_a_fresh_process(
    file_issuer: ca.FileIssuer,
) -> None:
    """The factory is pickled into a spawned process (no fork: nothing inherited), whose
    initialiser builds the issuer that signs there."""
    factory = file_issuer.for_workers()
    assert repr(factory) == "FileIssuerFactory()"  # the key never shows in logs
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(
        1, mp_context=context, initializer=_start_worker, initargs=(factory,)
    ) as pool:
        issued = pool.submit(_issue_in_worker, "worker-1").result(timeout=120)
    cert = issued.certificate()
    assert keys.verify_issued_by(cert, file_issuer.cert)
    assert cert.issuer == file_issuer.cert.subject
    assert issued.key_pem is None and issued.key_origin == "generated"
