"""Signed checkpoints of the audit trail's head, kept outside the registry.

After every write transaction commits, :func:`after_commit` (a ``fleet.after_commit`` hook)
appends one line to ``<home>/audit/checkpoints.jsonl``::

    {"hash": "<head hash>", "key": "<audit cert SHA-256>", "seq": 42, "sig": "<base64>",
     "ts": "2027-03-01T09:00:00.250000Z"}

``sig`` is the audit key's ECDSA P-256 / SHA-256 signature over the canonical JSON of
``{"checkpoint": 1, "hash": ..., "seq": ..., "ts": ...}`` (:func:`signed_body`). One
signature per commit: a provisioning batch of 500 devices costs one, well under a
millisecond. A process that cannot read the audit key writes no checkpoint and says so (a
warning on stderr); the commit stands.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy.engine import Engine

from fleet import clock
from fleet.errors import IntegrityError, RegistryError
from fleet.pki import ca
from fleet.pki.audit_key import (
    AuditKey,
    audit_dir,
    check_signature,
    load_audit_certificate,
    load_audit_key,
)
from fleet.pki.keys import fingerprint_sha256
from fleet.registry import audit
from fleet.registry.audit import Anchor

CHECKPOINT_FILE = "checkpoints.jsonl"
CHECKPOINT_VERSION = 1
log = logging.getLogger(__name__)
# the last head each workspace home was checkpointed at by this process
_last: dict[str, tuple[int, str]] = {}
_warned: set[str] = set()


def checkpoint_path(home: Path) -> Path:
    """``<home>/audit/checkpoints.jsonl``"""
    return audit_dir(home) / CHECKPOINT_FILE


def signed_body(seq: int, head_hash: str, ts: str) -> bytes:
    """The bytes a checkpoint's signature covers."""
    body = {"checkpoint": CHECKPOINT_VERSION, "hash": head_hash, "seq": seq, "ts": ts}
    return audit.canonical_json(body).encode("utf-8")


def append_checkpoint(home: Path, key: AuditKey, seq: int, head_hash: str) -> dict[str, Any]:
    """Sign a checkpoint of ``(seq, head_hash)`` now and append it; returns the line's
    object. The file is opened append-only and never through a symlink."""
    ts = audit.format_ts(clock.now())
    signature = key.sign(signed_body(seq, head_hash, ts))
    line = {
        "hash": head_hash,
        "key": key.key_id,
        "seq": seq,
        "sig": base64.b64encode(signature).decode("ascii"),
        "ts": ts,
    }
    data = (audit.canonical_json(line) + "\n").encode("utf-8")
    flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0)
    fd = os.open(checkpoint_path(home), flags, 0o644)
    try:
        os.write(fd, data)  # one write of one short line: appends never interleave
    finally:
        os.close(fd)
    _last[str(home)] = (seq, head_hash)
    return line


def after_commit(engine: Engine, seq: int, head_hash: str) -> None:
    """The ``fleet.after_commit`` hook: checkpoint the head a transaction left.

    Skips heads this process already checkpointed, engines that belong to no workspace, and
    a workspace without an audit key (warning once when its trail is not empty); a key or
    file it cannot use is reported as a warning, never as a failure of the command.
    """
    home_text = engine.get_execution_options().get("fleet_home")
    if not home_text or seq == 0 or _last.get(str(home_text)) == (seq, head_hash):
        return
    home = Path(home_text)
    try:
        key = load_audit_key(home)
        if key is None:
            if str(home) not in _warned:
                _warned.add(str(home))
                log.warning(
                    "warning: no audit key in %s: audit checkpoints are not written "
                    "(run `fleet audit checkpoint` to create one)",
                    audit_dir(home),
                )
            return
        append_checkpoint(home, key, seq, head_hash)
    except (RegistryError, OSError) as exc:
        log.warning("warning: audit checkpoint of event %d skipped: %s", seq, exc)


@dataclass(frozen=True)
class Checkpoint:
    """A checkpoint whose signature verified."""

    seq: int
    hash: str
    ts: str
    line: int


def read_checkpoints(path: Path, home: Path) -> list[Checkpoint]:
    """Every checkpoint in ``path``, each signature checked against the workspace's audit
    certificate and issuing CA; raises :class:`IntegrityError` naming the first bad line."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return []
    except (OSError, UnicodeDecodeError) as exc:
        raise IntegrityError(f"cannot read the checkpoints in {path}: {exc}") from exc
    cert = load_audit_certificate(home)
    issuing = ca.load_ca_certificates(home)[0]
    found: list[Checkpoint] = []
    for number, raw in enumerate(text.splitlines(), 1):
        if not raw.strip():
            continue
        where = f"{path.name} line {number}"
        try:
            item = json.loads(raw)
            seq, head_hash, ts = int(item["seq"]), str(item["hash"]), str(item["ts"])
            signature = base64.b64decode(item["sig"], validate=True)
            key_id = str(item["key"])
        except (ValueError, KeyError, TypeError, binascii.Error) as exc:
            raise IntegrityError(f"{where} is not a checkpoint") from exc
        if cert is None or key_id != fingerprint_sha256(cert):
            raise IntegrityError(f"{where} is signed by an unknown audit key {key_id[:12]}…")
        problem = check_signature(cert, issuing, signed_body(seq, head_hash, ts), signature)
        if problem is not None:
            raise IntegrityError(f"{where}: {problem} (checkpoint forged or edited)")
        found.append(Checkpoint(seq, head_hash, ts, number))
    return found


def anchors(checkpoints: list[Checkpoint], source: str) -> list[Anchor]:
    """The checkpoints as anchors for :func:`fleet.registry.audit.verify`."""
    return [
        Anchor(c.seq, c.hash, f"the checkpoint of {c.ts} ({source} line {c.line})")
        for c in checkpoints
    ]
