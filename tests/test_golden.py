"""Golden test: one whole CLI scenario, every ``--json`` output and export file, byte for byte.

It guards the package restructure (modules moving into folders, functions being split):
behaviour must not change at all. The scenario runs ``fleet`` in-process through
``fleet.cli.app`` only (no other fleet module is imported here, as the internals are about to
move): init, device add (generated key and CSR), provision (with a bad and a skipped row),
device update/show/list, cert renew/list/revoke, decommission, CA show/chain/CRL, cloud
registration against the local HTTP registry (``tests/cloudserver.py``), exports in every format
(signed and unsigned, filtered, ``--as-of``, verified, tampered) and the audit trail. Each
command's exit code, stdout and stderr, and each file it writes, is recorded in a transcript per
step under ``tests/golden/`` and compared with the stored one.

What legitimately varies between runs is replaced by placeholders numbered in first-seen order
over the whole scenario, so equal values must stay equal: serials (``<serial-N>``), SHA-256
values (``<sha256-N>``), PEM bodies (``<pem-N>``), UUIDs, epoch values, sub-second timestamps
(``<ts-N>``), the temp folder (``<tmp>``) and the server port. Whole-second timestamps cannot be
numbered (two moments fall into the same second or not, by chance): they become their distance
from the start of the run in whole days (``<now>``, ``<now+365d>``). Time zone suffixes, key
order, row order, quoting and line endings are kept (U+240D, SYMBOL FOR CARRIAGE RETURN, marks
a CR; a blob without a final newline ends in a ``\\ no newline at end`` line).
Timings and file sizes become ``<measured>`` and ``<bytes>`` (serials vary in length; the
sizes are checked against the files). ``cert list`` prints certificates in the order of their
random serials: the test checks that order, then shows them in first-seen order.

Regenerate after an intended change, then review ``git diff tests/golden``::

    FLEET_GOLDEN_UPDATE=1 python -m pytest tests/test_golden.py

Without that variable a missing, extra or different golden file fails the test.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import os
import re
import shlex
import shutil
import stat
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cloudserver import RegistryServer
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from typer.testing import CliRunner

from fleet.cli import app

GOLDEN_DIR = Path(__file__).resolve().parent / "golden"
UPDATE_ENV = "FLEET_GOLDEN_UPDATE"
CR_MARK = "\u240d"  # SYMBOL FOR CARRIAGE RETURN: shows a CR in a golden line
NO_EOL = "\\ no newline at end"
SIDECARS = (".manifest.json", ".p7s", ".manifest.json.p7s")  # beside a signed export

# --- normalising ---------------------------------------------------------------------------

# A PEM block, also inside a JSON string (newlines escaped as \n).
_PEM = re.compile(
    r"(?P<begin>-----BEGIN (?P<label>[A-Z0-9 ]+)-----)(?P<eol>\r?\n|(?:\\r)?\\n)"
    r"(?P<body>(?:[A-Za-z0-9+/=\r\n]|\\r|\\n)*?)(?P<end>-----END (?P=label)-----)"
)
# UUIDs, and version-4 UUIDs in hex (idempotency keys).
_UUID = re.compile(
    r"(?<![0-9A-Za-z])[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}"
    r"(?![0-9A-Za-z])"
)
_UUID_HEX = re.compile(r"(?<![0-9A-Za-z])[0-9a-f]{12}4[0-9a-f]{3}[89ab][0-9a-f]{15}(?![0-9A-Za-z])")
# The time zone suffix (Z, +00:00) is not part of the match: it stays in the output.
_TIMESTAMP = re.compile(
    r"(?<!\d)(?P<date>\d{4}-\d{2}-\d{2})(?P<sep>[T ])(?P<time>\d{2}:\d{2}:\d{2})"
    r"(?P<frac>\.\d{1,9})?(?!\d)"
)
_HEX64 = re.compile(r"(?<![0-9A-Za-z])[0-9a-f]{64}(?![0-9A-Za-z])")
# Certificate serials: 159 random bits in lowercase hex without leading zeros (30-40 digits).
_SERIAL = re.compile(r"(?<![0-9A-Za-z])[0-9a-f]{30,40}(?![0-9A-Za-z])")
_PORT = re.compile(r"(?<=127\.0\.0\.1:)\d+")
# Epoch seconds (none in today's output; a refactor might print some).
_EPOCH = re.compile(r"(?<![\w.<-])1[5-9]\d{8}(?:\.\d+)?(?![\w.])")
# Wall-clock measurements.
_MEASURED = re.compile(r'(?P<key>"(?:elapsed_seconds|devices_per_second)":\s*)[-+.\deE]+')
# File sizes: serials vary in length, so exports do (the test checks sizes against the files).
_BYTES = re.compile(r'(?P<key>"bytes":\s*)\d+|(?<![\w.])\d+(?P<unit> bytes\b)')


class Normaliser:
    """Replaces run-dependent values by stable placeholders, numbered in first-seen order."""

    def __init__(self, tmp_path: Path, anchor: datetime) -> None:
        self.paths = sorted({str(tmp_path), str(tmp_path.resolve())}, key=len, reverse=True)
        self.anchor = anchor
        self.seen: dict[str, dict[str, str]] = {}

    def placeholder(self, kind: str, value: str) -> str:
        table = self.seen.setdefault(kind, {})
        if value not in table:
            table[value] = f"<{kind}-{len(table) + 1}>"
        return table[value]

    def __call__(self, text: str) -> str:
        for path in self.paths:
            text = text.replace(path, "<tmp>")
        text = _PEM.sub(self._pem, text)
        text = _UUID.sub(lambda m: self.placeholder("uuid", m.group().lower()), text)
        text = _UUID_HEX.sub(lambda m: self.placeholder("uuid", m.group()), text)
        text = _TIMESTAMP.sub(self._timestamp, text)
        text = _HEX64.sub(lambda m: m.group() if set(m.group()) == {"0"} else self._hex64(m), text)
        text = _SERIAL.sub(lambda m: self.placeholder("serial", m.group()), text)
        text = _PORT.sub("<port>", text)
        text = _EPOCH.sub(lambda m: self.placeholder("epoch", m.group()), text)
        text = _MEASURED.sub(r"\g<key><measured>", text)
        return _BYTES.sub(lambda m: f"{m['key'] or ''}<bytes>{m['unit'] or ''}", text)

    def _pem(self, match: re.Match[str]) -> str:
        body = "".join(match["body"].replace("\\n", "").replace("\\r", "").split())
        eol = match["eol"]
        return f"{match['begin']}{eol}{self.placeholder('pem', body)}{eol}{match['end']}"

    def _hex64(self, match: re.Match[str]) -> str:
        return self.placeholder("sha256", match.group())

    def _timestamp(self, match: re.Match[str]) -> str:
        space = ":space" if match["sep"] == " " else ""
        instant = f"{match['date']}T{match['time']}"
        if match["frac"]:
            return self.placeholder("ts", instant + match["frac"]).replace(">", f"{space}>")
        moment = datetime.fromisoformat(instant).replace(tzinfo=UTC)
        days = round((moment - self.anchor).total_seconds() / 86400)
        return f"<now{days:+d}d{space}>" if days else f"<now{space}>"


# --- transcripts ---------------------------------------------------------------------------


def render_blob(text: str) -> list[str]:
    """A captured output or file as golden lines, each ``|``-prefixed, with every CR and a
    missing final newline made visible. Empty: no lines."""
    assert CR_MARK not in text, "the CR marker itself occurs in the output"
    lines = text.replace("\r", CR_MARK).split("\n")
    last = lines.pop()
    shown = [f"| {line}" if line else "|" for line in lines]
    return [*shown, f"| {last}", NO_EOL] if last else shown


class Transcript:
    """The golden text of every step, one file per step."""

    def __init__(self, normalise: Normaliser) -> None:
        self.normalise = normalise
        self.files: dict[str, list[str]] = {}
        self._lines: list[str] = []

    def step(self, name: str, title: str) -> None:
        self._lines = [f"# {title}", "# (tests/test_golden.py; regenerate: FLEET_GOLDEN_UPDATE=1)"]
        self.files[f"{name}.txt"] = self._lines

    def blob(self, heading: str, data: bytes | str, *, gap: bool = True) -> None:
        text = data.decode("utf-8") if isinstance(data, bytes) else data
        title = self.normalise(heading) + (":" if text else ": (empty)")
        lines = [title, *render_blob(self.normalise(text))]
        self._lines += ["", *lines] if gap else lines

    def command(self, args: Iterable[str], exit_code: int, stdout: bytes, stderr: bytes) -> None:
        self._lines += ["", "", self.normalise(f"$ fleet {shlex.join(args)}"), f"exit {exit_code}"]
        self.blob("stdout", stdout, gap=False)
        self.blob("stderr", stderr, gap=False)

    def file(self, path: Path) -> None:
        self.blob(f"file {path}", path.read_bytes())

    def fact(self, name: str, value: Any) -> None:
        """A value the test computed (file tree, parsed CRL, server view): pretty JSON."""
        self.blob(f"fact {name}", json.dumps(value, indent=2, ensure_ascii=False) + "\n")

    def texts(self) -> dict[str, str]:
        return {name: "\n".join(lines) + "\n" for name, lines in self.files.items()}


@dataclass(frozen=True)
class Ran:
    exit_code: int
    stdout: str
    stderr: str

    def json(self) -> Any:
        return json.loads(self.stdout)


class Fleet:
    """Runs ``fleet --home HOME ...`` in-process (SQLite registry) and records each run."""

    def __init__(self, home: Path, transcript: Transcript) -> None:
        self.home = home
        self.transcript = transcript
        self.runner = CliRunner()

    def __call__(self, *args: str, code: int = 0, shown: Callable[[str], str] | None = None) -> Ran:
        """Run one command; it must exit with ``code``. ``shown`` rewrites stdout for the
        transcript (only where the CLI's own order is not deterministic)."""
        result = self.runner.invoke(app, ["--home", str(self.home), *args], catch_exceptions=False)
        stdout, stderr = result.stdout_bytes, result.stderr_bytes
        assert result.exit_code == code, (
            f"fleet {shlex.join(args)} exited {result.exit_code}, expected {code}:\n"
            f"{stderr.decode(errors='replace')}"
        )
        recorded = stdout if shown is None else shown(stdout.decode("utf-8")).encode("utf-8")
        self.transcript.command(args, result.exit_code, recorded, stderr)
        return Ran(result.exit_code, stdout.decode("utf-8"), stderr.decode("utf-8"))


# --- helpers -------------------------------------------------------------------------------


def make_csr(device_id: str) -> bytes:
    """A PEM CSR for ``device_id`` (EC P-256, CN = the device ID); the key stays here."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, device_id)])
    csr = x509.CertificateSigningRequestBuilder().subject_name(subject).sign(key, hashes.SHA256())
    return csr.public_bytes(serialization.Encoding.PEM)


def tree(folder: Path) -> list[str]:
    """Every entry under ``folder``, sorted; keys with their permission bits."""
    entries = []
    for path in sorted(folder.rglob("*")):
        name = path.relative_to(folder).as_posix()
        if path.is_dir():
            entries.append(name + "/")
        elif path.name.endswith("key.pem"):
            entries.append(f"{name} {stat.S_IMODE(path.stat().st_mode):04o}")
        else:
            entries.append(name)
    return entries


def pretty_json(value: Any) -> str:
    """What ``fleet ... --json`` prints for an object or a short list."""
    return json.dumps(value, indent=2, ensure_ascii=False) + "\n"


def in_first_seen_order(t: Transcript) -> Callable[[str], str]:
    """``cert list`` streams certificates in serial order, and serials are random: check that
    order (and the streamed array's layout), then show them in the order the scenario first
    saw their serials, so that the transcript is stable."""

    def rewrite(stdout: str) -> str:
        certs = json.loads(stdout)
        assert streamed_json(certs) == stdout, "cert list --json is no longer a streamed array"
        serials = [cert["serial"] for cert in certs]
        assert serials == sorted(serials), "cert list is not in serial order"
        number = {s: int(t.normalise(s).strip("<>").split("-")[1]) for s in serials}
        return streamed_json(sorted(certs, key=lambda cert: number[cert["serial"]]))

    return rewrite


def streamed_json(items: list[Any]) -> str:
    """What a list's ``--json`` prints: an array, one compact object per line."""
    if not items:
        return "[]\n"
    rows = (json.dumps(i, ensure_ascii=False, separators=(",", ":")) for i in items)
    return "[\n" + ",\n".join(f"  {row}" for row in rows) + "\n]\n"


def crl_facts(pem: bytes) -> dict[str, Any]:
    """What a CRL says, readably: issuer, times, number and entries in their order."""
    crl = x509.load_pem_x509_crl(pem)
    number = crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number
    entries = []
    for entry in crl:
        reason = entry.extensions.get_extension_for_class(x509.CRLReason).value.reason
        entries.append(
            {
                "serial": format(entry.serial_number, "x"),
                "revoked": entry.revocation_date_utc.isoformat(),
                "reason": reason.value,
            }
        )
    next_update, digest = crl.next_update_utc, crl.signature_hash_algorithm
    return {
        "issuer": crl.issuer.rfc4514_string(),
        "last_update": crl.last_update_utc.isoformat(),
        "next_update": next_update.isoformat() if next_update else None,
        "crl_number": number,
        "signature_hash": digest.name if digest else None,
        "entries": entries,
    }


def file_facts(summary: dict[str, Any], path: Path) -> dict[str, Any]:
    """The summary's size and digest against the file itself."""
    data = path.read_bytes()
    return {
        "bytes_match_file": summary["bytes"] == len(data),
        "sha256_matches_file": summary["sha256"] == hashlib.sha256(data).hexdigest(),
    }


def server_view(server: RegistryServer) -> dict[str, Any]:
    """What the HTTP registry saw: requests in order, creations, deletions, devices held."""
    state = server.state
    with state.lock:
        return {
            "requests": [
                f"{method} {device} key={key}" for method, device, key, _ in state.requests
            ],
            "creations": dict(sorted(state.creations.items())),
            "deletions": dict(sorted(state.deletions.items())),
            "devices": sorted(state.devices),
        }


# --- the scenario --------------------------------------------------------------------------


def run_scenario(fleet: Fleet, tmp_path: Path, server: RegistryServer, t: Transcript) -> None:
    ids = tmp_path / "ids"
    exports = tmp_path / "exports"
    exports.mkdir()

    t.step("01-init", "init: a new workspace with its root and issuing CA")
    fleet("init", "--name", "Golden Fleet", "--json")
    fleet("init", "--name", "Golden Fleet", "--json", code=4)
    t.fact("files under <tmp>/home/ca", tree(fleet.home / "ca"))

    t.step("02-device-add", "device add: a generated key, a CSR, and two failures")
    csr = tmp_path / "csr" / "pump-0002.csr"
    csr.parent.mkdir()
    csr.write_bytes(make_csr("pump-0002"))
    fleet(
        "device", "add", "pump-0001", "--model", "p200", "--serial", "SN-0001",
        "--label", "site=hamburg", "--label", "rack=r1", "--out", str(ids), "--json",
    )  # fmt: skip
    fleet(
        "device", "add", "pump-0002", "--csr", str(csr), "--model", "p200",
        "--serial", "SN-0002", "--label", "site=hamburg", "--out", str(ids), "--json",
    )  # fmt: skip
    fleet("device", "add", "pump-0001", "--model", "p200", "--json", code=4)
    fleet("device", "show", "no-such-device", "--json", code=3)
    t.fact("files under <tmp>/ids", tree(ids))
    for name in ("cert.pem", "chain.pem", "key.pem"):
        t.file(ids / "pump-0001" / name)
    t.file(ids / "pump-0002" / "cert.pem")

    t.step("03-provision", "provision: a CSV with a bad row and an already provisioned one")
    batch = tmp_path / "batch.csv"
    batch.write_bytes(
        b"id,model,serial,labels\n"
        b"sensor-01,th-100,S-01,site=lab;floor=2\n"
        b"pump-0001,p200,SN-0001,site=hamburg;rack=r1\n"
        b"bad id!,th-100,S-XX,site=lab\n"
        b"sensor-02,th-100,S-02,site=lab\n"
        b'sensor-03,"th-100",S-03,"site=lab;note=a,b"\n'
    )
    report = tmp_path / "failed.csv"
    provision = (
        "provision", str(batch), "--out", str(ids), "--report", str(report),
        "--workers", "2", "--json",
    )  # fmt: skip
    t.file(batch)
    fleet(*provision, code=1)
    t.file(ids / "manifest.csv")
    t.file(report)
    fleet(*provision, code=1)  # the re-run skips every provisioned row
    t.file(ids / "manifest.csv")
    t.file(report)
    t.fact("files under <tmp>/ids", tree(ids))

    t.step("04-devices", "device update, show and list")
    fleet(
        "device", "update", "pump-0001", "--label", "site=bremen", "--remove-label", "rack",
        "--serial", "SN-0001b", "--json",
    )  # fmt: skip
    fleet("device", "show", "pump-0001", "--json")
    fleet("device", "list", "--json")
    fleet("device", "list", "--model", "th-100", "--label", "site=lab", "--json")

    t.step("05-certs", "cert renew, list and revoke")
    renewed = fleet("cert", "renew", "sensor-01", "--out", str(ids), "--revoke-old", "--json")
    fleet("cert", "list", "--json", shown=in_first_seen_order(t))
    serial = renewed.json()["serial"]
    fleet("cert", "revoke", serial, "--reason", "keyCompromise", "--json")
    fleet("cert", "revoke", serial, "--json", code=4)
    fleet("cert", "list", "--device", "sensor-01", "--json", shown=in_first_seen_order(t))
    fleet("cert", "list", "--status", "active", "--json", shown=in_first_seen_order(t))

    t.step("06-decommission", "device decommission")
    fleet("device", "decommission", "sensor-02", "--reason", "flood damage", "--json")
    fleet("device", "decommission", "sensor-02", "--json", code=4)
    fleet("device", "list", "--status", "decommissioned", "--json")

    t.step("07-ca", "ca show, chain and crl; db current")
    fleet("ca", "show", "--json")
    fleet("ca", "chain")
    crl = fleet("ca", "crl")
    t.fact("the CRL, parsed", crl_facts(crl.stdout.encode()))
    fleet("db", "current", "--json")
    # A moment between two commands: `export --as-of` rebuilds the registry as it was here.
    as_of = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")

    t.step("08-cloud", "cloud registration against the local HTTP registry")
    last_seen = (t.normalise.anchor - timedelta(hours=30)).strftime("%Y-%m-%dT%H:%M:%SZ")
    with server.state.lock:
        server.state.status["pump-0001"] = {
            "connected": True,
            "last_activity": last_seen,
            "firmware_version": "1.4.2",
        }
    fleet(
        "cloud", "add", "reg", "--type", "http", "--url", server.url, "--no-rate-limit",
        "--concurrency", "1", "--json",
    )  # fmt: skip
    # One job per push: a push round records its outcomes (audit events) in the order the
    # requests complete, which is not deterministic for several jobs.
    fleet(
        "device", "add", "gw-01", "--model", "gw-9", "--out", str(ids), "--cloud", "reg", "--json"
    )
    fleet("cloud", "status", "--json")
    fleet("cloud", "sync", "--json")
    fleet("cloud", "register", "reg", "pump-0001", "--json")
    fleet("cloud", "register", "reg", "pump-0002", "--queue-only", "--json")
    fleet("cloud", "register", "reg", "--all", "--json")  # skips those without a certificate
    fleet("cloud", "status", "--json")
    fleet("cloud", "sync", "--json")
    fleet("cloud", "status", "--json")
    fleet("cloud", "list", "--json")
    fleet("cloud", "show", "reg", "--json")
    fleet("cloud", "check", "reg")
    fleet("device", "decommission", "gw-01", "--reason", "returned", "--json")
    fleet("cloud", "sync", "--json")
    fleet("cloud", "status", "reg", "--json")
    fleet("cloud", "show", "reg", "--json")
    t.fact("what the HTTP registry saw", server_view(server))
    with server.state.lock:
        body = server.state.devices["pump-0001"]
    t.fact("registration body of pump-0001", body)

    t.step("09-export", "export in every format, signed and unsigned, filtered, as of, verify")
    for fmt in ("csv", "json", "jsonl"):
        shown = fleet("export", "--format", fmt)
        signed = exports / f"devices.{fmt}"
        summary = fleet("export", "--format", fmt, "--out", str(signed), "--json").json()
        for path in (signed, *(signed.with_name(signed.name + s) for s in SIDECARS)):
            t.file(path)
        unsigned = exports / f"unsigned.{fmt}"
        plain = fleet("export", "-f", fmt, "-o", str(unsigned), "--no-sign", "--json").json()
        t.fact(
            f"{fmt} export files",
            {
                "signed": file_facts(summary, signed),
                "unsigned": file_facts(plain, unsigned),
                "stdout_equals_signed_file": shown.stdout.encode() == signed.read_bytes(),
                "unsigned_equals_signed_file": unsigned.read_bytes() == signed.read_bytes(),
                "unsigned_siblings": sorted(p.name for p in exports.glob("unsigned.*")),
            },
        )
        fleet("export", "verify", str(signed), "--json")
    fleet("export", "-f", "csv", "--label", "site=lab", "--status", "active")
    fleet("export", "-f", "jsonl", "--where", "cert_status=revoked")
    fleet("export", "-f", "json", "--model", "p200", "--where", "label.site=bremen")
    fleet("export", "-f", "jsonl", "--as-of", as_of)
    past = exports / "as-of.csv"
    fleet("export", "-f", "csv", "--as-of", as_of, "--out", str(past), "--json")
    t.file(past)
    t.file(past.with_name(past.name + ".manifest.json"))
    tampered = exports / "tampered"
    tampered.mkdir()
    for name in ("devices.jsonl", *(f"devices.jsonl{s}" for s in SIDECARS)):
        shutil.copy(exports / name, tampered / name)
    target = tampered / "devices.jsonl"
    target.write_bytes(target.read_bytes().replace(b'"flood damage"', b'"fl00d damage"'))
    fleet("export", "verify", str(target), "--json", code=7)

    t.step("10-audit", "audit log, verify and export")
    fleet("audit", "log", "--json")
    fleet("audit", "verify")
    trail = exports / "audit.jsonl"
    summary = fleet("audit", "export", "--out", str(trail), "--json").json()
    for path in (trail, *(trail.with_name(trail.name + s) for s in SIDECARS)):
        t.file(path)
    t.fact("audit export file", file_facts(summary, trail))
    fleet("export", "verify", str(trail), "--json")


# --- the test ------------------------------------------------------------------------------


def test_golden_cli_scenario(tmp_path: Path, server: RegistryServer) -> None:
    anchor = datetime.now(UTC)
    transcript = Transcript(Normaliser(tmp_path, anchor))
    fleet = Fleet(tmp_path / "home", transcript)
    run_scenario(fleet, tmp_path, server, transcript)
    produced = transcript.texts()

    if os.environ.get(UPDATE_ENV) == "1":
        GOLDEN_DIR.mkdir(exist_ok=True)
        for stale in {p.name for p in GOLDEN_DIR.glob("*.txt")} - set(produced):
            (GOLDEN_DIR / stale).unlink()
        for name, text in produced.items():
            (GOLDEN_DIR / name).write_text(text, encoding="utf-8", newline="\n")
        pytest.skip(f"{UPDATE_ENV}=1: wrote {len(produced)} files to {GOLDEN_DIR}; review the diff")

    problems: list[str] = []
    stored = {p.name for p in GOLDEN_DIR.glob("*.txt")} if GOLDEN_DIR.is_dir() else set()
    for extra in sorted(stored - set(produced)):
        problems.append(f"golden file {extra} is not produced by the scenario any more")
    for name, text in produced.items():
        path = GOLDEN_DIR / name
        if not path.is_file():
            problems.append(f"golden file {name} is missing")
            continue
        expected = path.read_text(encoding="utf-8")
        if expected != text:
            diff = difflib.unified_diff(
                expected.splitlines(keepends=True),
                text.splitlines(keepends=True),
                f"tests/golden/{name} (expected)",
                f"{name} (this run)",
            )
            problems.append("".join(diff))
    if problems:
        pytest.fail(
            "CLI output differs from tests/golden (if intended, regenerate with "
            f"{UPDATE_ENV}=1 and review the diff):\n\n" + "\n".join(problems),
            pytrace=False,
        )


def test_normaliser_keeps_identities_and_shape(tmp_path: Path) -> None:
    """The normaliser itself: equal values stay equal, formats and line endings stay visible."""
    anchor = datetime(2030, 5, 6, 7, 8, 9, tzinfo=UTC)
    normalise = Normaliser(tmp_path, anchor)
    serial, other = "5f" * 20, "7" + "a" * 37
    text = (
        f"{tmp_path}/x {serial} {other} {serial} {'c' * 64} {'0' * 64}\r\n"
        "2030-05-06T07:08:10Z 2031-05-06T07:08:09+00:00 2030-05-06 07:08:09 "
        "2030-05-06T07:08:09.123456Z 2030-05-06T07:08:09.654321Z 2030-05-06T07:08:09.123456Z\n"
        '{"pem": "-----BEGIN CERTIFICATE-----\\nAAEC\\n-----END CERTIFICATE-----\\n", '
        '"bytes": 1234, "elapsed_seconds": 0.25} 127.0.0.1:4321 (99 bytes) '
        f"key={'1' * 12}4{'2' * 3}8{'3' * 15}"
    )
    assert normalise(text) == (
        "<tmp>/x <serial-1> <serial-2> <serial-1> <sha256-1> " + "0" * 64 + "\r\n"
        "<now>Z <now+365d>+00:00 <now:space> <ts-1>Z <ts-2>Z <ts-1>Z\n"
        '{"pem": "-----BEGIN CERTIFICATE-----\\n<pem-1>\\n-----END CERTIFICATE-----\\n", '
        '"bytes": <bytes>, "elapsed_seconds": <measured>} 127.0.0.1:<port> (<bytes> bytes) '
        "key=<uuid-1>"
    )
    assert render_blob("a,b\r\n\nc") == [f"| a,b{CR_MARK}", "|", "| c", NO_EOL]
    assert render_blob("") == []
