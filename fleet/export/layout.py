"""Where each cell sits in a row: the CSV columns and the cell positions of :data:`SECTIONS`,
computed once (:data:`LAYOUT`)."""

from __future__ import annotations

import json

from fleet.export.section import Section
from fleet.export.sections import SECTIONS

# a section's CSV columns are its prefix + field; the device's own ID is ``device_id``
CSV_COLUMNS: tuple[str, ...] = tuple(
    ("device_id" if s.key is None and f == "id" else f if s.key is None else s.csv_prefix + f)
    for s in SECTIONS
    for f in s.fields
)


class _Layout:
    """Cell positions derived from :data:`SECTIONS`, computed once."""

    def __init__(self, sections: tuple[Section, ...]) -> None:
        self.sections = sections
        self.spans: list[tuple[Section, int, int]] = []
        start = 0
        for section in sections:
            self.spans.append((section, start, start + len(section.fields)))
            start += len(section.fields)
        self.width = start
        self.index = {
            (s.key, f): start + i for s, start, _ in self.spans for i, f in enumerate(s.fields)
        }
        self.kinds = [s.kinds.get(f, "plain") for s in sections for f in s.fields]
        # what json.dumps writes for each field name, and the colon after it
        self.json_keys = [
            json.encoder.encode_basestring(f) + ":" for s in sections for f in s.fields
        ]
        self.labels = self.index[(None, "labels")]
        self.cert_status = self.index[("certificate", "status")]
        self.cert_not_after = self.index[("certificate", "not_after")]
        self.replay_actions = sorted({a for s in sections for a in s.replay})

    def cell(self, section: str | None, name: str) -> int:
        """The position of ``section``'s field ``name`` (``None``: the device's own)."""
        return self.index[(section, name)]


LAYOUT = _Layout(SECTIONS)
