"""The hash-chained audit trail.

Every registry mutation appends one event inside the transaction that makes the change
(:func:`append`, :func:`append_many`). An event's hash is the SHA-256 (hex) of its canonical
form (:mod:`.chain`); ``prev_hash`` is the previous event's hash, the first event's 64 zeros.
Editing, deleting or reordering any row breaks the chain at that row, which :func:`verify`
reports (:mod:`.verification`); :mod:`.reading` streams and counts events (``audit log``).

The public names are imported from here; each is defined in one of those modules.
"""

from fleet.registry.audit.chain import (
    GENESIS_HASH,
    HASHED_FIELDS,
    PendingEvent,
    RowInserter,
    append,
    append_many,
    canonical_json,
    current_actor,
    event_hash,
    format_ts,
)
from fleet.registry.audit.reading import (
    ActionFilter,
    count_audit_events,
    event_to_dict,
    iter_audit_events,
    iter_events,
)
from fleet.registry.audit.verification import (
    Anchor,
    ProgressCallback,
    VerifyResult,
    verify,
    verify_audit,
)

__all__ = [
    "GENESIS_HASH",
    "HASHED_FIELDS",
    "ActionFilter",
    "Anchor",
    "PendingEvent",
    "ProgressCallback",
    "RowInserter",
    "VerifyResult",
    "append",
    "append_many",
    "canonical_json",
    "count_audit_events",
    "current_actor",
    "event_hash",
    "event_to_dict",
    "format_ts",
    "iter_audit_events",
    "iter_events",
    "verify",
    "verify_audit",
]
