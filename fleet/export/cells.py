"""Cell text shared by every row source: times and labels as export rows hold them.

A row is a list of cells (:data:`Cells`, in :data:`~fleet.export.layout.CSV_COLUMNS` order),
each text or ``None``: the live SQL formats them, the audit replay produces the same text.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any

from fleet.registry import audit

Cells = list[Any]
ISO_FORMAT = "%Y-%m-%dT%H:%M:%SZ"


def iso_moment(moment: datetime) -> str:
    """``moment`` as export text; certificate ``not_after`` cells compare against it."""
    return moment.astimezone(UTC).strftime(ISO_FORMAT)


@lru_cache(maxsize=4096)
def canonical_labels(text: str | None) -> str:
    """Labels JSON text (any key order or spacing) in canonical form: sorted, compact."""
    return audit.canonical_json(json.loads(text) if text else {})


@lru_cache(maxsize=4096)
def labels_object(text: str) -> dict[str, str]:
    """A labels cell parsed (cached: fleets share a few label sets; do not change it)."""
    parsed: dict[str, str] = json.loads(text)
    return parsed
