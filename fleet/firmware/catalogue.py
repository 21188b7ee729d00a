"""The firmware catalogue's queries: finding the image ``MODEL@VERSION`` names, listing,
deprecated and known versions. Adding and deprecating images: fleet/firmware/images.py."""

from __future__ import annotations

from sqlalchemy import select
from sqlmodel import Session

from fleet.firmware.models import FirmwareImage, FirmwareModel
from fleet.firmware.versions import compare_versions, is_valid_version, parse_version

__all__ = ["compare_versions", "find_image", "is_valid_version", "parse_version", "split_target"]


def find_image(session: Session, model: str, version: str) -> FirmwareImage | None:
    """The image catalogued for ``model`` at ``version`` (exact text), or ``None``."""
    query = (
        select(FirmwareImage)
        .join(FirmwareModel, FirmwareModel.firmware_id == FirmwareImage.id)  # type: ignore[arg-type]
        .where(FirmwareModel.model == model, FirmwareModel.version == version)  # type: ignore[arg-type]
    )
    return session.execute(query).scalars().first()


def split_target(text: str) -> tuple[str, str]:
    """``MODEL@VERSION`` as (model, version); the version is checked (InvalidInput)."""
    from fleet.errors import InvalidInput

    model, sep, version = text.rpartition("@")
    if not sep or not model or not version:
        raise InvalidInput(f"expected MODEL@VERSION, got {text!r}")
    parse_version(version)
    return model, version
