"""``fleet cloud drift``: a cloud's own inventory against the registry, and the jobs that
reconcile them. The library (and with it the backend) is imported inside the command."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

import typer

from fleet.cli._cloud import JsonOption, NameArg, progress_bar
from fleet.cli._common import message, print_json, render, table, workspace

if TYPE_CHECKING:
    from fleet.cloud.drift import DriftReport

app = typer.Typer()  # its commands join `fleet cloud` (fleet/cli/cloud_cmds.py)

DRIFT_FOUND = 8  # `cloud drift`: the cloud and the registry disagree (README, docs/cloud.md)
_DRIFT_TABLE_ROWS = 100


@app.command("drift")
def drift(
    ctx: typer.Context,
    name: NameArg,
    fix: Annotated[
        bool,
        typer.Option(
            "--fix", help="Queue the register/deregister jobs that reconcile (push: sync)."
        ),
    ] = False,
    delete_unknown: Annotated[
        bool,
        typer.Option(
            "--delete-unknown",
            help="With --fix: delete the devices only the cloud knows, now (audited).",
        ),
    ] = False,
    json_out: JsonOption = False,
) -> None:
    """Compare a cloud's own inventory with the registry: devices missing in the cloud,
    unknown to fleet, with another or an extra certificate, decommissioned but still
    enabled there (a security finding), or disabled there but active in fleet.

    Reads the whole inventory within the platform's list-rate limits (a progress bar on a
    terminal). Exit code 8 when drift is found (also with --fix: the jobs are only queued;
    `fleet cloud sync` pushes them), 0 when the cloud and the registry agree.

    Example:

        fleet cloud drift aws --json

        fleet cloud drift aws --fix; fleet cloud sync aws
    """
    from fleet.cloud.drift import drift as check_drift

    with progress_bar(f"drift {name}: devices read") as progress:
        report = check_drift(
            workspace(ctx), name, fix=fix, delete_unknown=delete_unknown, progress=progress
        )
    if json_out:
        print_json(report.to_dict())
    else:
        _render_drift(report)
    if not report.clean:
        raise typer.Exit(DRIFT_FOUND)


def _render_drift(report: DriftReport) -> None:
    findings = report.findings
    if findings:
        view = table("Device", "Finding", "Security", "Detail", "Fix")
        for finding in findings[:_DRIFT_TABLE_ROWS]:
            view.add_row(
                finding.device_id,
                str(finding.kind),
                "YES" if finding.security else "",
                finding.detail,
                finding.fix or "",
            )
        render(view)
        if len(findings) > _DRIFT_TABLE_ROWS:
            message(f"... and {len(findings) - _DRIFT_TABLE_ROWS} more (--json lists all)")
    counts = ", ".join(f"{n} {kind}" for kind, n in report.counts().items() if n)
    message(
        f"{report.cloud}: {report.remote_devices} device(s) in the cloud, "
        f"{report.registrations} registration(s) in fleet: "
        + (f"drift: {counts}" if findings else "no drift")
    )
    security = sum(1 for f in findings if f.security)
    if security:
        message(f"  SECURITY: {security} device(s) accepted by the cloud that fleet disabled")
    if report.fix is not None:
        fixed = report.fix
        message(
            f"  queued {fixed.register} register and {fixed.deregister} deregister job(s): "
            "push them with `fleet cloud sync`"
        )
        if fixed.deleted:
            message(f"  deleted {len(fixed.deleted)} unknown device(s)")
        for failure in fixed.delete_failed[:20]:
            message(f"  could not delete {failure['device_id']}: {failure['error']}")
        for skipped in fixed.skipped[:20]:
            message(f"  skipped {skipped['device_id']}: {skipped['reason']}")
