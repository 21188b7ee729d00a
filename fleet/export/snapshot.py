"""One consistent view of the registry for an export: its rows and the audit head they
correspond to are read in the same database snapshot."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.engine import Connection, Engine

from fleet.registry import audit
from fleet.registry.models import AuditHead


@dataclass(frozen=True)
class Snapshot:
    """What an export wrote: how many rows, and the audit head read with them."""

    rows: int
    head_seq: int
    head_hash: str


def snapshot_connection(engine: Engine) -> Any:
    """A read-only connection whose statements all see one snapshot of the registry."""
    if engine.dialect.name == "postgresql":
        return engine.connect().execution_options(isolation_level="REPEATABLE READ")
    return engine.connect().execution_options(fleet_readonly=True)


def read_head(conn: Connection) -> tuple[int, str]:
    """The audit trail's newest event (seq, hash) as ``conn`` sees it; (0, genesis) if none."""
    h = AuditHead.__table__  # type: ignore[attr-defined]
    row = conn.execute(select(h.c.seq, h.c.hash).where(h.c.id == 1)).first()
    return (0, audit.GENESIS_HASH) if row is None else (int(row[0]), str(row[1]))
