"""The audit export: audit events as JSONL with their hashes, signed like the device export,
so an auditor can recompute the chain without fleet."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any, TextIO

from fleet import clock
from fleet.errors import InvalidInput
from fleet.export.files import export_output
from fleet.export.snapshot import Snapshot, read_head
from fleet.registry import audit
from fleet.registry.db import read_session
from fleet.workspace import Passphrase, Workspace


def write_audit(
    ws: Workspace,
    stream: TextIO,
    *,
    since: datetime | None = None,
    until: datetime | None = None,
) -> Snapshot:
    """Stream audit events in ``[since, until)`` as JSONL, one canonical-JSON event (its
    hashed fields plus ``hash``) per line."""
    engine = ws.open_registry()
    count = 0
    with read_session(engine) as session:
        conn = session.connection()
        head_seq, head_hash = read_head(conn)
        for event in audit.iter_events(session, since=since, until=until):
            if event.seq > head_seq:  # appended after our head read (PostgreSQL)
                break
            stream.write(audit.canonical_json(audit.event_to_dict(event)) + "\n")
            count += 1
    return Snapshot(count, head_seq, head_hash)


def export_audit(
    ws: Workspace,
    *,
    out: Path | None = None,
    stream: TextIO | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    sign: bool | None = None,
    passphrase: Passphrase | None = None,
    now: datetime | None = None,
) -> dict[str, Any]:
    """Export the audit events in ``[since, until)`` as JSONL with their hashes, signed like
    :func:`~fleet.export.export_devices`. Each line is the event's canonical JSON (see
    :mod:`fleet.registry.audit`) plus ``hash``, so an auditor can recompute the chain.
    Example::

        export_audit(ws, out=Path("audit.jsonl"), since=datetime(2026, 1, 1, tzinfo=UTC))
    """
    if since is not None and until is not None and until <= since:
        raise InvalidInput("--until must be later than --since")
    description = {
        "kind": "audit",
        "format": "jsonl",
        "filters": {k: audit.format_ts(v) for k, v in (("since", since), ("until", until)) if v},
    }
    return export_output(
        ws,
        lambda handle: write_audit(ws, handle, since=since, until=until),
        description,
        out=out,
        stream=stream,
        sign=sign,
        passphrase=passphrase,
        now=now or clock.now(),
    )
