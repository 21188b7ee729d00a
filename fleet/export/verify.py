"""``fleet export verify``: an export checked against its manifest and detached signatures,
every check run, each failure named."""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fleet.errors import InvalidInput
from fleet.export.files import manifest_path, signature_path
from fleet.pki import ca
from fleet.pki.cms import SignatureError, load_root, sha256_file, verify_detached
from fleet.registry import audit
from fleet.workspace import Workspace

if TYPE_CHECKING:
    from cryptography import x509


@dataclass(frozen=True)
class Check:
    """One verification step: ``name`` is signature, chain, manifest signature, hash,
    row count or audit chain."""

    name: str
    ok: bool
    detail: str


@dataclass
class VerifyReport:
    """Outcome of :func:`verify_export`."""

    file: str
    checks: list[Check] = field(default_factory=list)
    manifest: dict[str, Any] | None = None

    @property
    def ok(self) -> bool:
        return bool(self.checks) and all(c.ok for c in self.checks)

    def failed(self) -> list[Check]:
        """The checks that failed."""
        return [c for c in self.checks if not c.ok]

    def to_dict(self) -> dict[str, Any]:
        """JSON view."""
        return {
            "file": self.file,
            "ok": self.ok,
            "checks": [{"name": c.name, "ok": c.ok, "detail": c.detail} for c in self.checks],
            "manifest": self.manifest,
        }


def verify_export(
    path: Path, *, root: Path | None = None, ws: Workspace | None = None
) -> VerifyReport:
    """Check an export against its manifest and detached signatures.

    The chain is checked up to ``root`` (an auditor's copy of the root certificate), else to
    the workspace's root. Every check runs; the report names each that failed.
    """
    if not path.is_file():
        raise InvalidInput(f"cannot read {path}: no such file")
    if root is not None:
        trusted = load_root(root)
    else:
        if ws is None:
            raise InvalidInput("give --ca ROOT.pem (or a workspace) to check the chain against")
        trusted = ca.load_ca_certificates(ws.home)[1]
    report = VerifyReport(str(path))
    manifest_file = manifest_path(path)
    manifest_bytes, manifest = _read_manifest(report, manifest_file)
    report.manifest = manifest
    sig_ok = _check_signature(report, trusted, signature_path(path), path, "signature")
    man_ok = manifest is not None and _check_signature(
        report, trusted, signature_path(manifest_file), manifest_bytes, "manifest signature"
    )
    if sig_ok and man_ok:
        report.checks.append(Check("chain", True, f"chains to {trusted.subject.rfc4514_string()}"))
    if manifest is None:
        return report
    report.checks.append(_check_hash(path, manifest))
    report.checks.append(_check_row_count(path, manifest))
    if manifest.get("kind") == "audit":
        report.checks.append(_check_audit_chain(path))
    return report


def _read_manifest(report: VerifyReport, file: Path) -> tuple[bytes, dict[str, Any] | None]:
    """The manifest's bytes and object, or (b"", None) and a failed check in ``report``."""
    try:
        manifest_bytes = file.read_bytes()
        manifest = json.loads(manifest_bytes)
        if not isinstance(manifest, dict):
            raise ValueError("not an object")
    except (OSError, ValueError) as exc:
        report.checks.append(Check("manifest", False, f"{file.name} unreadable: {exc}"))
        return b"", None
    return manifest_bytes, manifest


def _check_signature(
    report: VerifyReport,
    trusted: x509.Certificate,
    sig: Path,
    content: bytes | Path,
    label: str,
) -> bool:
    """Add the check of ``sig`` over ``content`` (and its chain to ``trusted``) to
    ``report``; return whether it passed."""
    try:
        pem = sig.read_bytes()
    except OSError:
        report.checks.append(Check(label, False, f"{sig.name} is missing"))
        return False
    try:
        info = verify_detached(pem, content, trusted)
    except SignatureError as exc:
        name = label if exc.check == "signature" else "chain"
        report.checks.append(Check(name, False, f"{sig.name}: {exc}"))
        return False
    report.checks.append(
        Check(label, True, f"{sig.name} signed by {info.signer.subject.rfc4514_string()}")
    )
    return True


def _check_hash(path: Path, manifest: dict[str, Any]) -> Check:
    digest, size = sha256_file(path)
    if digest == manifest.get("sha256") and size == manifest.get("bytes"):
        return Check("hash", True, f"sha256 {digest}")
    return Check(
        "hash",
        False,
        f"sha256 of {path.name} is {digest} ({size} bytes); the manifest says "
        f"{manifest.get('sha256')} ({manifest.get('bytes')} bytes)",
    )


def _check_row_count(path: Path, manifest: dict[str, Any]) -> Check:
    counted, problem = _count_rows(path, str(manifest.get("format")))
    expected = manifest.get("rows")
    if problem is None and counted == expected:
        return Check("row count", True, f"{counted} rows")
    return Check(
        "row count",
        False,
        problem or f"{path.name} holds {counted} rows; the manifest says {expected}",
    )


def _count_rows(path: Path, fmt: str) -> tuple[int, str | None]:
    """Rows in an export file, or a description of why it cannot be read as ``fmt``."""
    count = 0
    try:
        with path.open(encoding="utf-8", newline="") as handle:
            if fmt == "csv":
                reader = csv.reader(handle)
                header = next(reader, None)
                if header is None:
                    return 0, f"{path.name} has no CSV header"
                count = sum(1 for _ in reader)
                return count, None
            if fmt == "jsonl":
                for number, line in enumerate(handle, 1):
                    if not isinstance(json.loads(line), dict):
                        return count, f"line {number} of {path.name} is not a JSON object"
                    count += 1
                return count, None
            if fmt == "json":
                lines = handle.read().split("\n")
                if lines[0] not in ("[", "[]"):
                    return 0, f"{path.name} is not a fleet JSON export"
                for line in lines[1:]:
                    if line in ("]", ""):
                        continue
                    json.loads(line.removesuffix(","))
                    count += 1
                return count, None
    except (ValueError, UnicodeDecodeError, csv.Error) as exc:
        return count, f"{path.name} is not valid {fmt}: {exc}"
    return 0, f"unknown format {fmt!r} in the manifest"


def _check_audit_chain(path: Path) -> Check:
    """Recompute each exported event's hash and its link to the previous one."""
    previous: str | None = None
    events = 0
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            try:
                event = json.loads(line)
                recomputed = audit.event_hash(event)
            except (ValueError, KeyError, TypeError):
                return Check("audit chain", False, f"line {number} is not an audit event")
            if recomputed != event.get("hash"):
                return Check(
                    "audit chain", False, f"event {event.get('seq')} does not match its hash"
                )
            if previous is not None and event["prev_hash"] != previous:
                return Check(
                    "audit chain",
                    False,
                    f"event {event.get('seq')} does not link to the event before it",
                )
            if event["seq"] == 1 and event["prev_hash"] != audit.GENESIS_HASH:
                return Check("audit chain", False, "event 1 does not start the chain")
            previous = event["hash"]
            events += 1
    return Check("audit chain", True, f"{events} events re-hashed and linked")
