"""``fleet provision FILE``"""

from __future__ import annotations

import sys
from contextlib import ExitStack
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from fleet.cli import _complete
from fleet.cli._bundle import P12_PASSWORD_ENV, P12EnvOption, bundle_format
from fleet.cli._common import ask_passphrase, message, print_json, workspace

if TYPE_CHECKING:
    from rich.progress import Progress, TaskID


class _Bar:
    """A rich progress bar on stderr, started at the first update (after the workers)."""

    def __init__(self, stack: ExitStack) -> None:
        self.stack = stack
        self.bar: Progress | None = None
        self.task: TaskID | None = None

    def __call__(self, done: int, total: int) -> None:
        if self.bar is None:
            from rich.console import Console
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeElapsedColumn,
                TimeRemainingColumn,
            )

            self.bar = Progress(
                TextColumn("provisioning"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[rate]} devices/s"),
                TimeElapsedColumn(),
                TextColumn("ETA"),
                TimeRemainingColumn(),
                console=Console(stderr=True),
                transient=False,
            )
            self.stack.enter_context(self.bar)
            self.task = self.bar.add_task("provision", total=total, rate="-")
        assert self.task is not None
        elapsed = self.bar.tasks[0].elapsed or 0.0
        rate = f"{done / elapsed:,.0f}" if elapsed > 0 else "-"
        self.bar.update(self.task, completed=done, total=total, rate=rate)


def provision(
    ctx: typer.Context,
    file: Annotated[Path, typer.Argument(help="CSV or JSON Lines file listing the devices.")],
    fmt: Annotated[
        str | None,
        typer.Option("--format", help="csv or jsonl. Default: from the file name."),
    ] = None,
    out: Annotated[
        Path | None,
        typer.Option(help="Write bundles to OUT/ID/ and OUT/manifest.csv. Default: current dir."),
    ] = None,
    workers: Annotated[
        int | None,
        typer.Option(help="Processes for key generation and signing. Default: one per core."),
    ] = None,
    profile: Annotated[
        str,
        typer.Option(
            help="Certificate profile for rows without a profile column.",
            autocompletion=_complete.profile_names,
        ),
    ] = "default",
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Validate every row; write nothing.")
    ] = False,
    report: Annotated[
        Path | None, typer.Option(help="Write failed rows to this CSV (line,id,error).")
    ] = None,
    cloud: Annotated[
        list[str] | None,
        typer.Option(
            "--cloud",
            help="Queue each new device's registration on this cloud (in its batch's "
            "transaction); repeatable. Pushed by `fleet cloud sync`.",
            show_default=False,
            autocompletion=_complete.cloud_names,
        ),
    ] = None,
    bundle_fmt: Annotated[
        str,
        typer.Option(
            "--bundle-format",
            metavar="pem|p12",
            help="Bundle format: pem (key.pem, cert.pem, chain.pem) or p12 (bundle.p12 with "
            "key, certificate and chain, password-protected, instead of key.pem). --format "
            "names the input file's format here.",
        ),
    ] = "pem",
    p12_password_env: P12EnvOption = P12_PASSWORD_ENV,
    strict: Annotated[
        bool, typer.Option("--strict", help="Refuse a file with unknown columns (exit 2).")
    ] = False,
    json_out: Annotated[bool, typer.Option("--json", help="Print a JSON summary.")] = False,
) -> None:
    """Provision every device listed in a CSV or JSON Lines file.

    Columns (CSV) or keys (JSONL): id (required), model, serial, labels
    (CSV "k=v;k=v", JSONL an object), profile, csr (a CSR file relative to
    FILE; the device keeps its key). The CSV delimiter (comma, semicolon or
    tab) is detected; unknown columns are ignored with a warning (--strict
    refuses them); fleet's own export CSV is accepted as is. Devices already
    provisioned are skipped: re-run the same command after an interruption to
    finish the batch. OUT/manifest.csv keeps the rows of earlier files run into
    OUT and lists this file's. Failed rows go to --report and make the exit
    code 1; the rest go ahead.

    Example:

        fleet provision batch-7.csv --out ids --report failed.csv --cloud plant

        FLEET_P12_PASSWORD=... fleet provision batch-8.csv --out ids --bundle-format p12
    """
    from fleet import provision as provisioning

    ws = workspace(ctx)
    show_bar = not json_out and sys.stderr.isatty()
    with ExitStack() as stack:
        summary = provisioning.provision(
            ws,
            file,
            fmt=fmt,
            out_dir=out or Path.cwd(),
            workers=workers,
            profile=profile,
            dry_run=dry_run,
            report=report,
            passphrase=ask_passphrase,
            progress=_Bar(stack) if show_bar else None,
            clouds=cloud or (),
            bundle_format=bundle_format(bundle_fmt, p12_password_env),
            strict=strict,
        )
    for warning in summary.warnings:
        message(f"warning: {warning}")
    if json_out:
        print_json(summary.to_dict())
    else:
        if dry_run:
            message(
                f"Dry run: {summary.would_provision} to provision, {summary.skipped} already "
                f"provisioned, {summary.failed} failed, of {summary.rows} rows"
            )
        else:
            rate = summary.provisioned / summary.elapsed_seconds if summary.elapsed_seconds else 0
            message(
                f"Provisioned {summary.provisioned}, skipped {summary.skipped}, failed "
                f"{summary.failed} in {summary.elapsed_seconds:.1f} s ({rate:,.0f} devices/s)"
            )
            if summary.manifest:
                message(f"  manifest: {summary.manifest}")
        for error in summary.errors:
            message(f"  line {error.line} ({error.device_id or 'no id'}): {error.error}")
        if summary.failed > len(summary.errors):
            message(f"  ... and {summary.failed - len(summary.errors)} more")
        if summary.report:
            message(f"  report: {summary.report}")
    if summary.failed:
        raise typer.Exit(1)
