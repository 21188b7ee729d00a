"""``fleet cloud add/list/show/remove/check``: configure clouds and check them.

``fleet cloud add`` takes the options each installed backend declares
(:class:`fleet.cloud.base.BackendOption`), read when the command is parsed or its help shown.
Library functions are imported inside each command.
"""

from __future__ import annotations

import inspect
from types import GenericAlias
from typing import TYPE_CHECKING, Annotated, Any

import typer
from typer._click.core import Context as ClickContext
from typer._click.core import Parameter
from typer.core import TyperCommand

from fleet.cli._cloud import JsonOption, NameArg
from fleet.cli._common import message, print_json, print_json_array, render, table, workspace
from fleet.cli._help import tidy_parameters
from fleet.views import iso

if TYPE_CHECKING:
    from collections.abc import Mapping

    from fleet.cloud.base import BackendOption

app = typer.Typer()  # its commands join `fleet cloud` (fleet/cli/cloud_cmds.py)
_BACKEND_OPTIONS = "fleet.cloud.backend_options"  # ctx.meta key: the backend options given


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
