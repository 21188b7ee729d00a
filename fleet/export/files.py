"""Export files: written all or nothing, hashed as written, signed with a manifest.

Rows stream to a temporary file beside the target, which is renamed into place once the
manifest and the detached signatures (:mod:`fleet.pki.cms`) beside it exist.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import sys
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any, BinaryIO, TextIO

from fleet import __version__
from fleet.errors import Conflict, InvalidInput
from fleet.export.snapshot import Snapshot
from fleet.files import PendingFile
from fleet.pki.cms import Signer, sign_detached
from fleet.pki.signers import load_signer
from fleet.registry import audit
from fleet.workspace import Passphrase, Workspace

MANIFEST_VERSION = 1


def manifest_path(path: Path) -> Path:
    """``FILE.manifest.json``"""
    return path.with_name(path.name + ".manifest.json")


def signature_path(path: Path) -> Path:
    """``FILE.p7s``: the detached signature over ``FILE``."""
    return path.with_name(path.name + ".p7s")


def export_output(
    ws: Workspace,
    produce: Callable[[TextIO], Snapshot],
    description: dict[str, Any],
    *,
    out: Path | None,
    stream: TextIO | None,
    sign: bool | None,
    passphrase: Passphrase | None,
    now: datetime,
    overwrite: bool = True,
) -> dict[str, Any]:
    """Run ``produce`` on ``stream`` (default stdout; never signed) or, given ``out``, on
    that file, all or nothing; signed with a manifest (``description`` says what the file
    holds) unless ``sign`` is False. Returns the export's summary (rows, file, sha256...).

    Unless ``overwrite``, refuses (:class:`Conflict`) when ``out`` is a signed export
    already (its manifest or signature is there): an auditor may hold that one."""
    if sign and out is None:
        raise InvalidInput("--sign needs --out FILE (signatures are written beside the file)")
    if out is not None and not overwrite:
        existing = [p for p in (manifest_path(out), signature_path(out)) if p.exists()]
        if existing:
            raise Conflict(
                f"{out} is a signed export already ({existing[0].name} is there): "
                "give --force to replace it, or another --out"
            )
    signing = out is not None if sign is None else sign
    ws.open_registry()
    if out is None:
        return {"file": None, "rows": produce(stream or sys.stdout).rows}
    with PendingFile(out) as pending:  # an unwritable path fails before the passphrase prompt
        signer = load_signer(ws, passphrase) if signing else None
        return _export_to_file(pending, produce, description, signer, now)


class _HashingFile(io.RawIOBase):
    """A file that hashes what it writes, as it writes it: the manifest's SHA-256 without
    reading the export back (the hashing runs in the writer thread, beside the reading)."""

    def __init__(self, raw: BinaryIO) -> None:
        self._raw = raw
        self.sha256 = hashlib.sha256()
        self.size = 0

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        written = self._raw.write(data) or 0
        self.sha256.update(memoryview(data)[:written])  # only what reached the file
        self.size += written
        return written


def _export_to_file(
    pending: PendingFile,
    produce: Callable[[TextIO], Snapshot],
    description: dict[str, Any],
    signer: Signer | None,
    now: datetime,
) -> dict[str, Any]:
    """Write ``pending``'s file (and, when signing, its manifest and signatures) all or
    nothing: the export itself is renamed into place last."""
    out = pending.path
    snapshot, digest, size = _write_hashed(pending, produce)
    result: dict[str, Any] = {"file": str(out), "rows": snapshot.rows, "sha256": digest}
    result["bytes"] = size
    if signer is None:
        pending.commit()
        return result
    manifest = {
        "fleet_export_manifest": MANIFEST_VERSION,
        "file": out.name,
        **description,
        "rows": snapshot.rows,
        "sha256": digest,
        "bytes": size,
        "audit_head": {"seq": snapshot.head_seq, "hash": snapshot.head_hash},
        "fleet_version": __version__,
        "created_at": audit.format_ts(now),
        "signer": signer.summary(),
    }
    with contextlib.ExitStack() as stack:
        beside: list[PendingFile] = []
        for final, data in _signed_files(out, pending.temp, manifest, signer):
            extra = stack.enter_context(PendingFile(final))
            extra.write(data)
            beside.append(extra)
        for extra in beside:
            extra.commit()
        pending.commit()
    result.update(
        manifest=str(manifest_path(out)),
        signature=str(signature_path(out)),
        manifest_signature=str(signature_path(manifest_path(out))),
    )
    return result


def _write_hashed(
    pending: PendingFile, produce: Callable[[TextIO], Snapshot]
) -> tuple[Snapshot, str, int]:
    """Run ``produce`` on ``pending``; return its snapshot and the file's SHA-256 and size."""
    hashed = _HashingFile(pending.handle)
    buffered = io.BufferedWriter(hashed, buffer_size=1 << 20)
    handle = io.TextIOWrapper(buffered, encoding="utf-8", newline="")
    try:
        snapshot = produce(handle)
        handle.flush()
        pending.handle.flush()
    except OSError as exc:
        raise InvalidInput(f"cannot write {pending.path}: {exc.strerror or exc}") from exc
    finally:
        handle.detach()  # the pending file keeps its handle open until it commits
    return snapshot, hashed.sha256.hexdigest(), hashed.size


def _signed_files(
    out: Path, written: Path, manifest: dict[str, Any], signer: Signer
) -> list[tuple[Path, bytes]]:
    """The files beside ``out`` (its content written to ``written``): the manifest, the
    signature over the export and the signature over the manifest."""
    manifest_bytes = (json.dumps(manifest, indent=2, ensure_ascii=False) + "\n").encode()
    return [
        (manifest_path(out), manifest_bytes),
        (signature_path(out), sign_detached(signer, written)),
        (signature_path(manifest_path(out)), sign_detached(signer, manifest_bytes)),
    ]
