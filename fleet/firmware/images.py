"""The firmware catalogue's changes: adding a signed image, deprecating one; listing and
showing them (``fleet firmware add|list|show|deprecate|verify``).

An image is hashed (SHA-256, size) as it is read in 1 MiB chunks, copied content-addressed to
``<home>/firmware/<sha256>`` unless it lives at ``--url``, and signed with a detached CMS
signature by the firmware-signing certificate (:data:`fleet.pki.signers.FIRMWARE_SIGNER`).
Every change is one transaction with its audit event (``firmware.add``,
``firmware.deprecate``). Input is checked before anything is written: a refused ``add``
leaves no image file, no signing key and no row.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy import func, select
from sqlmodel import Session

from fleet import clock
from fleet.errors import Conflict, InvalidInput, NotFound
from fleet.files import PendingFile
from fleet.firmware.models import FirmwareImage, FirmwareModel
from fleet.firmware.versions import parse_version
from fleet.identifiers import validate_text_field
from fleet.registry import audit
from fleet.registry.db import read_session, write_session
from fleet.views import iso
from fleet.workspace import Passphrase, Workspace

FIRMWARE_DIR = "firmware"
_CHUNK = 1 << 20


@dataclass(frozen=True, slots=True)
class FirmwareImageView:
    """One catalogued image and the models it is for."""

    id: int
    version: str
    models: tuple[str, ...]
    sha256: str
    size: int
    url: str | None
    path: Path | None  # the content-addressed copy under <home>/firmware/, if stored
    signature_pem: str
    signer_serial: str
    requires_min: str | None
    notes: str | None
    deprecated: bool
    deprecated_at: datetime | None
    created_at: datetime

    def to_dict(self, *, signature: bool = True) -> dict[str, Any]:
        """The image as ``--json`` shows it (lists leave the signature out)."""
        shape: dict[str, Any] = {
            "id": self.id,
            "version": self.version,
            "models": list(self.models),
            "sha256": self.sha256,
            "size": self.size,
            "url": self.url,
            "path": None if self.path is None else str(self.path),
            "signer_serial": self.signer_serial,
            "requires_min": self.requires_min,
            "notes": self.notes,
            "deprecated": self.deprecated,
            "deprecated_at": iso(self.deprecated_at),
            "created_at": iso(self.created_at),
        }
        if signature:
            shape["signature_pem"] = self.signature_pem
        return shape


@dataclass(frozen=True)
class AddResult:
    """What ``firmware add`` did: the image, and whether anything changed."""

    image: FirmwareImageView
    added_models: tuple[str, ...]  # models newly catalogued at this version (empty: no change)

    def to_dict(self) -> dict[str, Any]:
        """The result as ``--json`` shows it."""
        return {"image": self.image.to_dict(), "added_models": list(self.added_models)}


def add_image(
    ws: Workspace,
    file: Path,
    *,
    version: str,
    models: Sequence[str],
    requires_min: str | None = None,
    notes: str | None = None,
    url: str | None = None,
    passphrase: Passphrase | None = None,
) -> AddResult:
    """Catalogue ``file`` as ``version`` for ``models``: hash, copy (unless ``url``), sign,
    record and audit, in that order; refused input writes nothing.

    Adding the same content again for another model extends the image; the same
    ``MODEL@VERSION`` with other content is a :class:`Conflict` (exit 4); a bad version, URL,
    model or an unreadable file is :class:`InvalidInput` (exit 2).
    """
    from fleet.pki.cms import sign_detached
    from fleet.pki.keys import serial_hex
    from fleet.pki.signers import FIRMWARE_SIGNER, load_signer

    parse_version(version)
    if requires_min is not None:
        parse_version(requires_min)
    wanted = _check_models(models)
    validate_text_field("notes", notes, 1024)
    _check_url(url)
    if not file.is_file():
        raise InvalidInput(f"cannot read {file}: not a file")
    engine = ws.open_registry()
    sha256, size = _hash(file)
    with read_session(engine) as session:
        existing = _image_by_content(session, version, sha256)
        _check_clashes(session, version, sha256, wanted)
    if existing is not None and set(wanted) <= set(existing.models):
        return AddResult(existing, ())
    pending: PendingFile | None = None
    stored: Path | None = None
    try:
        if existing is None and url is None:
            folder = ws.home / FIRMWARE_DIR
            folder.mkdir(mode=0o755, exist_ok=True)
            stored = folder / sha256
            if not stored.is_file():
                pending = _copy(file, stored, sha256)
        signature = ""
        signer_serial = ""
        if existing is None:
            signer = load_signer(ws, passphrase, FIRMWARE_SIGNER)
            signed_file = pending.temp if pending is not None else (stored or file)
            signature = sign_detached(signer, signed_file).decode("ascii")
            if pending is None and _hash(signed_file)[0] != sha256:
                raise InvalidInput(f"{file} changed while it was being added")
            signer_serial = serial_hex(signer.cert.serial_number)
        now = clock.now()
        with write_session(engine) as session:
            _check_clashes(session, version, sha256, wanted)  # again, under the write lock
            image = _image_row(session, version, sha256)
            if image is None:
                image = FirmwareImage(
                    version=version,
                    sha256=sha256,
                    size=size,
                    url=url,
                    stored_path=None if url else f"{FIRMWARE_DIR}/{sha256}",
                    signature_pem=signature,
                    signer_serial=signer_serial,
                    requires_min=requires_min,
                    notes=notes,
                    deprecated=False,
                    created_at=now,
                )
                session.add(image)
                session.flush()
            assert image.id is not None
            have = set(_models_of(session, [image.id]).get(image.id, ()))
            added = tuple(m for m in wanted if m not in have)
            for model in added:
                session.add(FirmwareModel(model=model, version=version, firmware_id=image.id))
            audit.append(
                session,
                "firmware.add",
                version,
                {
                    "version": version,
                    "models": list(added),
                    "sha256": sha256,
                    "size": size,
                    "url": image.url,
                    "stored_path": image.stored_path,
                    "signer_serial": image.signer_serial,
                    "requires_min": image.requires_min,
                    "notes": image.notes,
                },
                at=now,
            )
            session.flush()
            if pending is not None:
                pending.commit()  # in place before the COMMIT; removed again if it fails
            view = _views(ws, session, [image])[0]
    except BaseException:
        if pending is not None:
            pending.discard()
            if pending._done and stored is not None:  # renamed in, then the commit failed
                stored.unlink(missing_ok=True)
        raise
    return AddResult(view, added)


def _check_models(models: Sequence[str]) -> list[str]:
    if not models:
        raise InvalidInput("give at least one --model")
    seen: list[str] = []
    for model in models:
        validate_text_field("model", model, 64)
        if model not in seen:
            seen.append(model)
    return seen


def _check_url(url: str | None) -> None:
    if url is None:
        return
    scheme_ok = url.startswith(("https://", "http://"))
    if len(url) > 2048 or not scheme_ok or any(c.isspace() for c in url):
        raise InvalidInput(f"invalid --url {url[:80]!r}: expected an http(s) URL")


def _hash(path: Path) -> tuple[str, int]:
    hasher, size = hashlib.sha256(), 0
    try:
        with path.open("rb") as handle:
            while chunk := handle.read(_CHUNK):
                hasher.update(chunk)
                size += len(chunk)
    except OSError as exc:
        raise InvalidInput(f"cannot read {path}: {exc.strerror}") from exc
    return hasher.hexdigest(), size


def _copy(source: Path, target: Path, sha256: str) -> PendingFile:
    """``source`` copied to a temporary file beside ``target`` (renamed in later); its hash is
    checked against ``sha256`` (the file did not change since it was hashed)."""
    pending = PendingFile(target)
    hasher = hashlib.sha256()
    try:
        with source.open("rb") as handle:
            while chunk := handle.read(_CHUNK):
                hasher.update(chunk)
                pending.write(chunk)
        pending.handle.flush()
        os.fsync(pending.handle.fileno())
    except OSError as exc:
        pending.discard()
        raise InvalidInput(f"cannot read {source}: {exc.strerror}") from exc
    except BaseException:
        pending.discard()
        raise
    if hasher.hexdigest() != sha256:
        pending.discard()
        raise InvalidInput(f"{source} changed while it was being added")
    return pending


def _check_clashes(session: Session, version: str, sha256: str, models: list[str]) -> None:
    query = (
        select(FirmwareModel.model, FirmwareImage.sha256)  # type: ignore[call-overload]
        .join(FirmwareImage, FirmwareImage.id == FirmwareModel.firmware_id)
        .where(FirmwareModel.version == version, FirmwareModel.model.in_(models))  # type: ignore[attr-defined]
    )
    for model, other in session.execute(query):
        if other != sha256:
            raise Conflict(
                f"{model}@{version} is already catalogued with other content (sha256 {other})"
            )


def _image_row(session: Session, version: str, sha256: str) -> FirmwareImage | None:
    query = select(FirmwareImage).where(
        FirmwareImage.version == version,  # type: ignore[arg-type]
        FirmwareImage.sha256 == sha256,  # type: ignore[arg-type]
    )
    return session.execute(query).scalars().first()


def _image_by_content(session: Session, version: str, sha256: str) -> FirmwareImageView | None:
    row = _image_row(session, version, sha256)
    return None if row is None else _views(None, session, [row])[0]


def _models_of(session: Session, ids: list[int]) -> dict[int, list[str]]:
    found: dict[int, list[str]] = {}
    if not ids:
        return found
    query = (
        select(FirmwareModel.firmware_id, FirmwareModel.model)  # type: ignore[call-overload]
        .where(FirmwareModel.firmware_id.in_(ids))  # type: ignore[attr-defined]
        .order_by(FirmwareModel.model)
    )
    for firmware_id, model in session.execute(query):
        found.setdefault(firmware_id, []).append(model)
    return found


def _views(
    ws: Workspace | None, session: Session, rows: Sequence[FirmwareImage]
) -> list[FirmwareImageView]:
    models = _models_of(session, [row.id for row in rows if row.id is not None])
    return [
        FirmwareImageView(
            id=row.id or 0,
            version=row.version,
            models=tuple(models.get(row.id or 0, ())),
            sha256=row.sha256,
            size=row.size,
            url=row.url,
            path=(ws.home / row.stored_path) if ws is not None and row.stored_path else None,
            signature_pem=row.signature_pem,
            signer_serial=row.signer_serial,
            requires_min=row.requires_min,
            notes=row.notes,
            deprecated=row.deprecated,
            deprecated_at=row.deprecated_at,
            created_at=row.created_at,
        )
        for row in rows
    ]


def _matching(session: Session, version: str, model: str | None) -> list[FirmwareImage]:
    query = select(FirmwareImage).where(FirmwareImage.version == version)  # type: ignore[arg-type]
    if model is not None:
        query = query.join(FirmwareModel, FirmwareModel.firmware_id == FirmwareImage.id).where(  # type: ignore[arg-type]
            FirmwareModel.model == model  # type: ignore[arg-type]
        )
    rows = list(session.execute(query.order_by(FirmwareImage.id)).scalars())  # type: ignore[arg-type]
    if not rows:
        what = version if model is None else f"{model}@{version}"
        raise NotFound(f"no firmware {what} in the catalogue")
    return rows


def show_image(ws: Workspace, version: str, model: str | None = None) -> FirmwareImageView:
    """The image ``version`` names (``model`` picks one where the version has several)."""
    with read_session(ws.open_registry()) as session:
        rows = _matching(session, version, model)
        views = _views(ws, session, rows)
    if len(views) > 1:
        models = ", ".join(m for view in views for m in view.models)
        raise InvalidInput(f"version {version} has {len(views)} images ({models}): give --model")
    return views[0]


def iter_images(
    ws: Workspace, *, model: str | None = None, after: int | None = None, limit: int | None = None
) -> Iterator[FirmwareImageView]:
    """Catalogued images in the order they were added (``after``: an image ID)."""
    with read_session(ws.open_registry()) as session:
        query = select(FirmwareImage).order_by(FirmwareImage.id)  # type: ignore[arg-type]
        if model is not None:
            ids = select(FirmwareModel.firmware_id).where(FirmwareModel.model == model)  # type: ignore[call-overload]
            query = query.where(FirmwareImage.id.in_(ids))  # type: ignore[union-attr]
        if after is not None:
            query = query.where(FirmwareImage.id > after)  # type: ignore[operator,arg-type]
        if limit is not None:
            query = query.limit(limit)
        rows = list(session.execute(query).scalars())
        views = _views(ws, session, rows)
    yield from views


def count_images(ws: Workspace, *, model: str | None = None, after: int | None = None) -> int:
    """How many images :func:`iter_images` would list."""
    with read_session(ws.open_registry()) as session:
        query = select(func.count()).select_from(FirmwareImage)
        if model is not None:
            ids = select(FirmwareModel.firmware_id).where(FirmwareModel.model == model)  # type: ignore[call-overload]
            query = query.where(FirmwareImage.id.in_(ids))  # type: ignore[union-attr]
        if after is not None:
            query = query.where(FirmwareImage.id > after)  # type: ignore[operator,arg-type]
        return int(session.execute(query).scalar_one())


def deprecate_image(
    ws: Workspace, version: str, model: str | None = None
) -> list[FirmwareImageView]:
    """Mark the images of ``version`` (or the one ``MODEL@VERSION`` names) deprecated: flagged
    in compliance, never a rollout target. Audited (``firmware.deprecate``); images already
    deprecated are left as they are. Returns the images now deprecated by this call."""
    now = clock.now()
    with write_session(ws.open_registry()) as session:
        rows = [row for row in _matching(session, version, model) if not row.deprecated]
        for row in rows:
            row.deprecated = True
            row.deprecated_at = now
            session.add(row)
        if rows:
            session.flush()
            views = _views(ws, session, rows)
            audit.append(
                session,
                "firmware.deprecate",
                version,
                {
                    "version": version,
                    "images": [{"sha256": v.sha256, "models": list(v.models)} for v in views],
                },
                at=now,
            )
            return views
    return []


@dataclass(frozen=True)
class VerifyResult:
    """``firmware verify``: the stored copy's hash and the signature against the root."""

    version: str
    sha256: str
    path: str
    ok: bool
    problem: str | None

    def to_dict(self) -> dict[str, Any]:
        """The result as ``--json`` shows it."""
        return {
            "version": self.version,
            "sha256": self.sha256,
            "path": self.path,
            "ok": self.ok,
            "problem": self.problem,
        }


def verify_image(
    ws: Workspace, version: str, model: str | None = None, file: Path | None = None
) -> VerifyResult:
    """Check an image (its stored copy, or ``file`` for a ``--url`` image): its SHA-256, and
    its signature against the workspace's root (the chain and the signer's codeSigning EKU)."""
    from cryptography import x509

    from fleet.pki import ca
    from fleet.pki.cms import SignatureError, verify_detached

    image = show_image(ws, version, model)
    content = file or image.path
    if content is None:
        raise InvalidInput(f"firmware {version} is not stored here ({image.url}): give --file")
    sha256, _ = _hash(content)
    problem: str | None = None
    if sha256 != image.sha256:
        problem = f"sha256 {sha256} is not the catalogued {image.sha256}"
    else:
        _, root = ca.load_ca_certificates(ws.home)
        try:
            info = verify_detached(image.signature_pem.encode("ascii"), content, root)
        except SignatureError as error:
            problem = str(error)
        else:
            try:
                found = info.signer.extensions.get_extension_for_class(x509.ExtendedKeyUsage)
                eku = list(found.value)
            except x509.ExtensionNotFound:
                eku = []
            if eku != [x509.oid.ExtendedKeyUsageOID.CODE_SIGNING]:
                problem = "the signer is not a codeSigning-only certificate"
    return VerifyResult(version, image.sha256, str(content), problem is None, problem)
