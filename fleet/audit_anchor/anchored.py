"""``fleet audit verify``: the chain re-hashed, and checked against every signed checkpoint
and any earlier signed export, audit export or checkpoint file an auditor kept; ``fleet
audit checkpoint``: sign one now (creating the audit key in an older workspace)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import func
from sqlalchemy.engine import Engine
from sqlmodel import select

from fleet import clock
from fleet.audit_anchor.checkpoints import (
    Checkpoint,
    anchors,
    append_checkpoint,
    checkpoint_path,
    read_checkpoints,
)
from fleet.errors import IntegrityError
from fleet.export.files import manifest_path
from fleet.export.snapshot import read_head
from fleet.export.verify import verify_export
from fleet.pki import ca
from fleet.pki.audit_key import create_audit_key, load_audit_key, remove_audit_key
from fleet.pki.authority import record_audit_key
from fleet.registry import audit
from fleet.registry.audit import Anchor, ProgressCallback, VerifyResult
from fleet.registry.db import read_session, write_session
from fleet.registry.models import AuditEvent
from fleet.workspace import Passphrase, Workspace, require_passphrase

MANIFEST_SUFFIX = ".manifest.json"


@dataclass(frozen=True)
class AnchoredResult:
    """The chain's verification and what it was checked against."""

    result: VerifyResult
    checkpoints: int
    newest: Checkpoint | None
    files: int


def verify_anchored(
    ws: Workspace,
    against: Sequence[Path] = (),
    *,
    start: int = 1,
    progress: ProgressCallback | None = None,
) -> AnchoredResult:
    """Re-hash the trail (from event ``start`` on) and check that it still holds every
    checkpoint in ``<home>/audit/checkpoints.jsonl`` and the head each file in ``against``
    recorded (those from event ``start - 1`` on); see :func:`fleet.registry.audit.verify`.

    Raises :class:`IntegrityError` when a checkpoint or a file does not verify itself, or
    when the trail records an audit key but no checkpoint exists (the file was removed).
    """
    engine = ws.open_registry()
    own = read_checkpoints(checkpoint_path(ws.home), ws.home)
    pinned = anchors(own, f"audit/{checkpoint_path(ws.home).name}")
    for path in against:
        pinned.extend(file_anchors(ws, path))
    if not own:
        first_key = _audit_key_event(engine)
        if first_key is not None:
            raise IntegrityError(
                f"no checkpoints in {checkpoint_path(ws.home)}, but the trail records an audit "
                f"key at event {first_key} (checkpoints removed?)"
            )
    result = audit.verify_audit(ws, pinned, start=start, progress=progress)
    newest = max(own, key=lambda c: c.seq) if own else None
    return AnchoredResult(result, len(own), newest, len(against))


def _audit_key_event(engine: Engine) -> int | None:
    """The event recording the audit key: ``audit.key``, or ``ca.init`` with ``audit_key``."""
    with read_session(engine) as session:
        init = session.exec(
            select(AuditEvent.seq, AuditEvent.details).where(AuditEvent.action == "ca.init")
        ).first()
        if init is not None and "audit_key" in json.loads(init[1]):
            return int(init[0])
        seq = session.exec(
            select(func.min(AuditEvent.seq)).where(AuditEvent.action == "audit.key")
        ).one()
    return None if seq is None else int(seq)


def file_anchors(ws: Workspace, path: Path) -> list[Anchor]:
    """The heads ``path`` recorded: a signed export or audit export (its manifest's
    ``audit_head``, once the export verifies) or a copy of a checkpoint file."""
    export = path
    if path.name.endswith(MANIFEST_SUFFIX):
        export = path.with_name(path.name[: -len(MANIFEST_SUFFIX)])
    if manifest_path(export).is_file():
        report = verify_export(export, ws=ws)
        if not report.ok:
            failed = report.failed()[0]
            raise IntegrityError(f"{export} does not verify ({failed.name}: {failed.detail})")
        head = (report.manifest or {}).get("audit_head") or {}
        try:
            seq, head_hash = int(head["seq"]), str(head["hash"])
        except (KeyError, TypeError, ValueError) as exc:
            raise IntegrityError(f"the manifest of {export} records no audit head") from exc
        created = (report.manifest or {}).get("created_at", "?")
        return [Anchor(seq, head_hash, f"{export.name} (exported {created})")] if seq else []
    if not path.is_file():
        raise IntegrityError(f"cannot read {path}: no such file")
    return anchors(read_checkpoints(path, ws.home), path.name)


def checkpoint_now(ws: Workspace, *, passphrase: Passphrase | None = None) -> dict[str, Any]:
    """Sign a checkpoint of the current head. A workspace without an audit key gets one
    first (the CA passphrase is needed for that only; ``audit.key`` records it)."""
    engine = ws.open_registry()
    key = load_audit_key(ws.home)
    if key is None:
        issuer = ca.load_issuer(ws.home, require_passphrase(passphrase))
        now = clock.now()
        key, new = create_audit_key(ws.home, issuer, now)
        if new:
            try:
                with write_session(engine) as session:
                    record_audit_key(session, key, now)
            except BaseException:
                remove_audit_key(ws.home)
                raise
    with engine.connect() as conn:
        seq, head_hash = read_head(conn)
    line = append_checkpoint(ws.home, key, seq, head_hash)
    return {"file": str(checkpoint_path(ws.home)), **{k: line[k] for k in ("seq", "hash", "ts")}}
