"""What a run did: the summary it returns, and the tally that keeps it as rows settle."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from fleet.provision.manifest import Report
from fleet.provision.source import Row, RowError

Progress = Callable[[int, int], None]
"""Called as ``progress(rows_done, rows_total)``; the total is counted before work starts."""


@dataclass
class ProvisionSummary:
    """What a provisioning run did. ``errors`` holds the first few failed rows."""

    provisioned: int = 0
    skipped: int = 0
    failed: int = 0
    would_provision: int = 0
    rows: int = 0
    elapsed_seconds: float = 0.0
    dry_run: bool = False
    workers: int = 0
    out_dir: str = ""
    manifest: str | None = None
    report: str | None = None
    errors: list[RowError] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)  # e.g. the unknown columns ignored

    def to_dict(self) -> dict[str, Any]:
        """The stable JSON summary ``fleet provision --json`` prints (``"warnings"`` only
        when there are some)."""
        rate = self.provisioned / self.elapsed_seconds if self.elapsed_seconds else 0.0
        extra = {"warnings": list(self.warnings)} if self.warnings else {}
        return {
            "provisioned": self.provisioned,
            "skipped": self.skipped,
            "failed": self.failed,
            "would_provision": self.would_provision,
            "rows": self.rows,
            "elapsed_seconds": round(self.elapsed_seconds, 3),
            "devices_per_second": round(rate, 1),
            "dry_run": self.dry_run,
            "workers": self.workers,
            "out_dir": self.out_dir,
            "manifest": self.manifest,
            "report": self.report,
            "errors": [{"line": e.line, "id": e.device_id, "error": e.error} for e in self.errors],
            **extra,
        }


class Tally:
    """Settles rows as the run goes: counts them in the summary, lists failures in the
    report and tells ``progress`` how many rows are done."""

    def __init__(
        self, summary: ProvisionSummary, report: Report, progress: Progress | None, total: int
    ) -> None:
        self.summary = summary
        self.report = report
        self.progress = progress
        self.total = total
        self.done = 0

    def row_read(self) -> None:
        """One more row of the file read (valid or not)."""
        self.summary.rows += 1

    def fail(self, error: RowError) -> None:
        """A row that will not be provisioned."""
        self.summary.failed += 1
        self.done += 1
        self.report.add(error)

    def fail_row(self, row: Row, error: str) -> None:
        """A valid row that cannot be provisioned, and why."""
        self.fail(RowError(row.line, row.device_id, error))

    def skip(self, count: int = 1) -> None:
        """Rows already provisioned (earlier, or by another run, or above in the file)."""
        self.summary.skipped += count
        self.done += count

    def provisioned(self, count: int) -> None:
        """Rows this run provisioned."""
        self.summary.provisioned += count
        self.done += count

    def would_provision(self, count: int) -> None:
        """Rows a dry run found ready."""
        self.summary.would_provision += count
        self.done += count

    def tick(self) -> None:
        """Report progress (the total grows if the file held more rows than counted)."""
        if self.progress is not None:
            self.progress(self.done, max(self.total, self.done))
