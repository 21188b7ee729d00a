"""Finding a rollout by name (light: what ``rollout status`` needs, nothing more)."""

from __future__ import annotations

from sqlalchemy import select
from sqlmodel import Session, col

from fleet.errors import NotFound
from fleet.firmware.models import Rollout


def get_rollout(session: Session, name: str) -> Rollout:
    """The rollout called ``name``, or :class:`NotFound`."""
    rollout: Rollout | None = (
        session.execute(select(Rollout).where(col(Rollout.name) == name)).scalars().first()
    )
    if rollout is None:
        raise NotFound(f"no rollout named {name!r}: see `fleet rollout list`")
    return rollout
