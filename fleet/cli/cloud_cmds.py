"""``fleet cloud ...``: configure clouds, queue and push registrations, show status.

Library functions are imported inside each command, from the module that defines them: only
the commands that push (register, sync, check) load a backend and with it httpx.
``fleet cloud add`` takes the options each installed backend declares
(:class:`fleet.cloud.base.BackendOption`), read when the command is parsed or its help shown.
"""

from __future__ import annotations

import inspect
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from types import GenericAlias
from typing import TYPE_CHECKING, Annotated, Any

import typer
from typer._click.core import Context as ClickContext
from typer._click.core import Parameter
from typer.core import TyperCommand

from fleet.cli import _complete
from fleet.cli._common import (
    ask_passphrase,
    message,
    print_json,
    print_json_array,
    render,
    table,
    workspace,
)
from fleet.cli._help import tidy_parameters
from fleet.cli._listing import (
    AfterOption,
    AllOption,
    CountOption,
    JsonlOption,
    LimitOption,
    Listing,
    ListOptions,
    emit,
)
from fleet.cli._listing import JsonOption as JsonListOption
from fleet.views import iso

if TYPE_CHECKING:
    from collections.abc import Mapping

    from fleet.cloud.base import BackendOption
    from fleet.cloud.drift import DriftReport
    from fleet.cloud.push import ProgressFn, PushReport
    from fleet.cloud.views import RegistrationView

app = typer.Typer(
    help="Register devices with cloud IoT platforms (queued, concurrent, rate-limited).",
    no_args_is_help=True,
)
JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON on stdout.")]
NameArg = Annotated[
    str,
    typer.Argument(
        help="The cloud's name (see `fleet cloud list`).", autocompletion=_complete.cloud_names
    ),
]
_BACKEND_OPTIONS = "fleet.cloud.backend_options"  # ctx.meta key: the backend options given


@contextmanager
def progress_bar(label: str) -> Iterator[ProgressFn | None]:
    """A progress bar on stderr when it is a terminal; otherwise no callback at all."""
    if not sys.stderr.isatty():
        yield None
        return
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
    )

    columns = (TextColumn(label), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=Console(stderr=True), transient=True) as bar:
        task = bar.add_task(label, total=None)

        def update(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total)

        yield update


def _declared_by_name() -> dict[str, tuple[BackendOption, list[str]]]:
    """Each option name any installed backend declares: its first declaration and the
    types declaring it. A backend that cannot be loaded offers none (``add`` says why)."""
    from fleet.cloud import plugins
    from fleet.errors import InvalidInput

    found: dict[str, tuple[BackendOption, list[str]]] = {}
    for type_name in plugins.available_types():
        try:
            declared = plugins.declared_options(type_name)
        except InvalidInput:
            continue
        for option in declared:
            found.setdefault(option.name, (option, []))[1].append(type_name)
    return found


def _signature_parameter(option: BackendOption, panel: str) -> inspect.Parameter:
    """``option`` as a typer parameter, in the help panel ``panel``."""
    info = typer.Option(option.flag, help=option.help, rich_help_panel=panel, show_default=False)
    if option.value_type is bool:
        annotation: Any = bool
        default: Any = False  # a flag: absent means not given
    else:
        value = GenericAlias(list, (option.value_type,)) if option.multiple else option.value_type
        annotation, default = value | None, None
    return inspect.Parameter(
        option.name,
        inspect.Parameter.KEYWORD_ONLY,
        default=default,
        annotation=Annotated[annotation, info],
    )


def _backend_parameters(taken_names: set[str], taken_flags: set[str]) -> list[Parameter]:
    """Click parameters for every backend option, grouped in a help panel per backend type
    (options whose name or flag ``add`` already has are left out)."""
    parameters = [
        _signature_parameter(option, f"{', '.join(types)} options")
        for name, (option, types) in _declared_by_name().items()
        if name not in taken_names and option.flag not in taken_flags
    ]
    if not parameters:
        return []

    def collect(**values: Any) -> None:  # only its signature is used
        """Backend options."""

    collect.__signature__ = inspect.Signature(parameters)  # type: ignore[attr-defined]
    builder = typer.Typer(add_completion=False)
    builder.command()(collect)
    return list(typer.main.get_command(builder).params)


class BackendOptionsCommand(TyperCommand):
    """``cloud add``: its own options plus every installed backend's, loaded on first use
    (not when ``fleet`` starts); the backend options given land in ``ctx.meta``."""

    _backend: list[Parameter] | None = None

    def backend_parameters(self) -> list[Parameter]:
        """The backend options, added to this command's parameters on the first call."""
        if self._backend is None:
            names = {p.name for p in self.params if p.name}
            flags = {flag for p in self.params for flag in p.opts} | {"--help", "-h"}
            self._backend = _backend_parameters(names, flags)
            tidy_parameters(self._backend)
            self.params.extend(self._backend)
        return self._backend

    def get_params(self, ctx: ClickContext) -> list[Parameter]:
        """Every parameter, backend options included."""
        self.backend_parameters()
        return super().get_params(ctx)

    def invoke(self, ctx: ClickContext) -> Any:
        """Move the backend options given from the parameters to ``ctx.meta``."""
        names = {p.name for p in self.backend_parameters()}
        ctx.meta[_BACKEND_OPTIONS] = {
            name: ctx.params.pop(name) for name in list(ctx.params) if name in names
        }
        return super().invoke(ctx)


def _given_backend_options(ctx: typer.Context) -> dict[str, Any]:
    # An absent flag is False and an absent repeatable option empty: neither is given.
    values: dict[str, Any] = ctx.meta.get(_BACKEND_OPTIONS, {})
    return {k: v for k, v in values.items() if v is not None and v is not False and v != []}


@app.command("add", cls=BackendOptionsCommand)
def add(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="A name for this cloud, e.g. plant-aws.")],
    type_name: Annotated[
        str, typer.Option("--type", help="Backend: aws-iot or http (or an installed plugin).")
    ],
    concurrency: Annotated[
        int | None, typer.Option(help="Requests in flight at once. Default: the backend's.")
    ] = None,
    rate: Annotated[
        float | None,
        typer.Option(help="Max operations per second. Default: below the platform's quota."),
    ] = None,
    no_rate_limit: Annotated[
        bool, typer.Option("--no-rate-limit", help="No rate limit (local servers, benches).")
    ] = False,
    json_out: JsonOption = False,
) -> None:
    """Configure a cloud. No network access: one-time setup runs at the first push.

    Secrets are never given here: AWS credentials come from the standard AWS sources, and
    HTTP headers name an environment variable holding the value. Each backend's own options
    are listed under its name; a backend refuses the others.

    Example:

        fleet cloud add plant --type http --url https://reg.example/devices/{id}
        --header Authorization=REG_TOKEN

        fleet cloud add prod --type aws-iot --region eu-central-1 --policy fleet-device
    """
    from fleet.cloud.clouds import add_cloud

    result = add_cloud(
        workspace(ctx),
        name,
        type_name,
        _given_backend_options(ctx),
        concurrency=concurrency,
        rate_per_second=rate,
        unlimited_rate=no_rate_limit,
    )
    if json_out:
        print_json(result.to_dict())
        return
    rate_text = (
        "no rate limit" if result.rate_per_second is None else f"{result.rate_per_second:g}/s"
    )
    message(f"Added cloud {name} ({type_name}): concurrency {result.concurrency}, {rate_text}")


@app.command("list")
def list_(ctx: typer.Context, json_out: JsonOption = False) -> None:
    """List configured clouds.

    Example:

        fleet cloud list --json
    """
    from fleet.cloud.clouds import list_clouds

    clouds = list_clouds(workspace(ctx))
    if json_out:
        print_json_array(c.to_dict() for c in clouds)
        return
    view = table("Name", "Type", "Prepared", "Concurrency", "Rate/s", "Options")
    for cloud in clouds:
        view.add_row(
            cloud.name,
            cloud.type,
            "yes" if cloud.prepared else "no",
            str(cloud.concurrency),
            "-" if cloud.rate_per_second is None else f"{cloud.rate_per_second:g}",
            _options_text(cloud.options),
        )
    render(view)
    message(f"{len(clouds)} cloud(s)")


def _options_text(options: Mapping[Any, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in sorted(options.items()))


@app.command("show")
def show(ctx: typer.Context, name: NameArg, json_out: JsonOption = False) -> None:
    """Show a cloud with its job and registration counts.

    Example:

        fleet cloud show plant
    """
    from fleet.cloud.clouds import show_cloud

    detail = show_cloud(workspace(ctx), name)
    if json_out:
        print_json(detail.to_dict())
        return
    cloud = detail.cloud
    view = table("Field", "Value", title=f"Cloud {name}")
    view.add_row("name", cloud.name)
    view.add_row("type", cloud.type)
    view.add_row("prepared", str(cloud.prepared))
    view.add_row("concurrency", str(cloud.concurrency))
    view.add_row("rate_per_second", str(cloud.rate_per_second))
    view.add_row("created_at", str(iso(cloud.created_at)))
    view.add_row("options", _options_text(cloud.options))
    view.add_row("jobs", _options_text(detail.jobs) or "none")
    view.add_row("registrations", _options_text(detail.registrations) or "none")
    render(view)


@app.command("remove")
def remove(
    ctx: typer.Context,
    name: NameArg,
    force: Annotated[
        bool,
        typer.Option("--force", help="Also forget its queued jobs and registration records."),
    ] = False,
) -> None:
    """Forget a cloud (nothing changes on the platform). Refused while it has queued jobs or
    registered devices unless --force.

    Example:

        fleet cloud remove old-registry --force
    """
    from fleet.cloud.clouds import remove_cloud

    result = remove_cloud(workspace(ctx), name, force=force)
    message(
        f"Removed cloud {name} (dropped {result.dropped_jobs} job(s), "
        f"{result.dropped_registrations} registration record(s))"
    )


@app.command("check")
def check(ctx: typer.Context, name: NameArg) -> None:
    """Check that the cloud is reachable and the credentials work (exit 1 if not).

    Example:

        fleet cloud check plant
    """
    from fleet.cloud.clouds import check_cloud

    result = check_cloud(workspace(ctx), name)
    if result.ok:
        message(f"ok: {result.message}")
        return
    message(f"error: {result.message}")
    raise typer.Exit(1)


def _render_push(report: PushReport) -> None:
    if report.unreachable is not None:
        message(
            f"{report.cloud}: cloud unreachable: {report.left} jobs stay queued "
            f"({report.unreachable}); retry with `fleet cloud sync` once it is back"
        )
        return
    if report.error:
        message(f"{report.cloud}: {report.error}")
    message(
        f"{report.cloud}: {report.done} done, {report.failed} failed, {report.left} still queued"
    )
    for failure in report.failures[:20]:
        message(f"  failed {failure['action']} {failure['device_id']}: {failure['error']}")
    if len(report.failures) > 20:
        message(f"  ... and {len(report.failures) - 20} more (see `fleet cloud status`)")
    if report.left:
        message("  queued jobs are retried by `fleet cloud sync`")


def _exit_code(reports: list[PushReport]) -> int:
    from fleet.errors import CLOUD_UNREACHABLE_EXIT

    if any(r.unreachable is not None for r in reports):
        return CLOUD_UNREACHABLE_EXIT
    return 1 if any(r.failed or r.error for r in reports) else 0


@app.command("register")
def register(
    ctx: typer.Context,
    name: NameArg,
    device_ids: Annotated[
        list[str] | None,
        typer.Argument(help="Device IDs.", show_default=False, autocompletion=_complete.device_ids),
    ] = None,
    all_devices: Annotated[bool, typer.Option("--all", help="Every active device.")] = False,
    queue_only: Annotated[
        bool, typer.Option("--queue-only", help="Only queue the jobs; push later with sync.")
    ] = False,
    json_out: JsonOption = False,
) -> None:
    """Queue registration of devices on a cloud and push the cloud's queue now.

    Exit code 1 when any job failed, 8 when the cloud could not be reached at all
    (connection refused: the push stops at once); jobs that could not be pushed yet
    (offline, throttled) stay queued for `fleet cloud sync`.

    Example:

        fleet cloud register plant pump-0042 pump-0043

        fleet cloud register plant --all --queue-only
    """
    from fleet.cloud.push import register as register_devices

    with progress_bar(f"register on {name}") as progress:
        result = register_devices(
            workspace(ctx),
            name,
            device_ids or (),
            all_devices=all_devices,
            queue_only=queue_only,
            progress=progress,
            passphrase=ask_passphrase,
        )
    if json_out:
        print_json(result.to_dict())
    else:
        message(f"{name}: queued {result.queued} registration(s)")
        if result.skipped:
            shown = ", ".join(result.skipped[:20])
            more = f" and {len(result.skipped) - 20} more" if len(result.skipped) > 20 else ""
            message(
                f"{name}: skipped {len(result.skipped)} device(s) without an active "
                f"certificate: {shown}{more}"
            )
        if result.push is not None:
            _render_push(result.push)
    if result.push is not None and _exit_code([result.push]):
        raise typer.Exit(_exit_code([result.push]))


@app.command("sync")
def sync(
    ctx: typer.Context,
    name: Annotated[
        str | None, typer.Argument(help="Only this cloud (default: all).", show_default=False)
    ] = None,
    json_out: JsonOption = False,
) -> None:
    """Push every pending or retryable job, then pull device status from the platform.

    Exit code 1 when any job failed, 8 when a cloud could not be reached at all (its push
    stops at once; its jobs stay queued).

    Example:

        fleet cloud sync plant
    """
    from fleet.cloud.status import sync as sync_clouds

    ws = workspace(ctx)
    with progress_bar(f"sync {name or 'all clouds'}") as progress:
        results = sync_clouds(ws, name, progress=progress, passphrase=ask_passphrase)
    if json_out:
        print_json([r.to_dict() for r in results])
    else:
        for report in results:
            _render_push(report.push)
            message(f"{report.push.cloud}: status updated for {report.status_updated} device(s)")
            for error in report.status_errors:
                message(f"  status: {error}")
        if not results:
            message("no clouds configured")
    if _exit_code([r.push for r in results]):
        raise typer.Exit(_exit_code([r.push for r in results]))


@app.command("status")
def status(
    ctx: typer.Context,
    name: Annotated[
        str | None, typer.Argument(help="Only this cloud (default: all).", show_default=False)
    ] = None,
    limit: LimitOption = None,
    after: AfterOption = None,
    all_rows: AllOption = False,
    json_out: JsonListOption = False,
    jsonl: JsonlOption = False,
    count: CountOption = False,
) -> None:
    """Show where each device stands on each cloud: pending, registered, failed (with
    attempts and last error) or deregistered, plus what the platform last reported.
    Ordered by cloud and device; a table shows the first 100 (the cursor is the device ID,
    or CLOUD/DEVICE across clouds).

    Example:

        fleet cloud status plant --json

        fleet cloud status plant --limit 500 --after pump-0500 --jsonl
    """
    from fleet.cloud.status import count_status, iter_status, status_cursor

    ws = workspace(ctx)
    one_cloud = name is not None
    emit(
        Listing(
            fetch=lambda n: iter_status(ws, name, after=after, limit=n),
            cursor=lambda row: status_cursor(row, one_cloud=one_cloud),
            to_dict=lambda row: row.to_dict(),
            count=lambda: count_status(ws, name, after=after),
            count_after=lambda key: count_status(ws, name, after=key),
            noun="registrations",
        ),
        ListOptions(
            limit=limit, after=after, all=all_rows, json=json_out, jsonl=jsonl, count=count
        ),
        _status_table,
    )


def _status_table(rows: list[RegistrationView]) -> None:
    view = table(
        "Cloud", "Device", "Status", "Queued", "Attempts", "Connected", "Firmware", "Last error"
    )
    for row in rows:
        queued = row.queued
        view.add_row(
            row.cloud,
            row.device_id,
            row.status,
            f"{queued.action} ({queued.state})" if queued else "",
            str(row.attempts),
            "" if row.connected is None else ("yes" if row.connected else "no"),
            row.firmware_version or "",
            row.last_error or "",
        )
    render(view)


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
