"""``fleet firmware ...``: the signed catalogue, device reports, compliance."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from fleet.cli._common import ask_passphrase, message, print_json, render, table, workspace
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
from fleet.errors import InvalidInput
from fleet.views import iso

if TYPE_CHECKING:
    from fleet.firmware.images import FirmwareImageView

app = typer.Typer(
    help="Catalogue signed firmware images; record and check what devices run.",
    no_args_is_help=True,
)

JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON on stdout.")]
ModelOption = Annotated[
    str | None, typer.Option("--model", help="Only this model.", show_default=False)
]


@app.command("add")
def add(
    ctx: typer.Context,
    file: Annotated[Path, typer.Argument(help="The image file.", show_default=False)],
    version: Annotated[
        str, typer.Option("--version", help="Its semantic version (1.2.3, 1.2.3-rc.1).")
    ],
    model: Annotated[
        list[str], typer.Option("--model", help="A device model it is for; repeat for several.")
    ],
    requires_min: Annotated[
        str | None,
        typer.Option(
            "--requires-min", help="The lowest version it upgrades from.", show_default=False
        ),
    ] = None,
    notes: Annotated[str | None, typer.Option(help="Release notes.", show_default=False)] = None,
    url: Annotated[
        str | None,
        typer.Option(
            help="Where devices fetch it (else it is copied into <home>/firmware/).",
            show_default=False,
        ),
    ] = None,
    json_out: JsonOption = False,
) -> None:
    """Catalogue a firmware image: SHA-256 and size, a content-addressed copy in
    <home>/firmware/ (unless --url), and a detached CMS signature by fleet's firmware-signing
    certificate (codeSigning only, issued by the issuing CA on first use; needs the CA
    passphrase). Exit 2: bad version, URL or file; 4: MODEL@VERSION has other content.

    Example:

        fleet firmware add build/p200-1.4.0.bin --version 1.4.0 --model p200 --model p210
    """
    from fleet.firmware.images import add_image

    result = add_image(
        workspace(ctx),
        file,
        version=version,
        models=model,
        requires_min=requires_min,
        notes=notes,
        url=url,
        passphrase=ask_passphrase,
    )
    if json_out:
        print_json(result.to_dict())
        return
    image = result.image
    if not result.added_models:
        message(f"{version} ({', '.join(image.models)}) is already catalogued: nothing changed")
        return
    where = image.url or str(image.path)
    message(
        f"added {version} for {', '.join(result.added_models)}: sha256 {image.sha256}, "
        f"{image.size} bytes, {where}"
    )


@app.command("list")
def list_(
    ctx: typer.Context,
    model: ModelOption = None,
    limit: LimitOption = None,
    after: AfterOption = None,
    all_rows: AllOption = False,
    json_out: JsonListOption = False,
    jsonl: JsonlOption = False,
    count: CountOption = False,
) -> None:
    """List catalogued images in the order they were added.

    Example:

        fleet firmware list --model p200 --json
    """
    from fleet.firmware.images import count_images, iter_images

    ws = workspace(ctx)
    options = ListOptions(
        limit=limit, after=after, all=all_rows, json=json_out, jsonl=jsonl, count=count
    )
    start = _cursor(after)
    emit(
        Listing(
            fetch=lambda n: iter_images(ws, model=model, after=start, limit=n),
            cursor=lambda image: str(image.id),
            to_dict=lambda image: image.to_dict(signature=False),
            count=lambda: count_images(ws, model=model, after=start),
            count_after=lambda key: count_images(ws, model=model, after=_cursor(key)),
            noun="images",
        ),
        options,
        _image_table,
    )


def _cursor(after: str | None) -> int | None:
    if after is None:
        return None
    if not after.isdigit():
        raise InvalidInput(f"invalid --after {after!r}: expected an image ID")
    return int(after)


def _image_table(rows: list[FirmwareImageView]) -> None:
    view = table("ID", "Version", "Models", "Size", "SHA-256", "Where", "Deprecated")
    for image in rows:
        view.add_row(
            str(image.id),
            image.version,
            ", ".join(image.models),
            str(image.size),
            image.sha256[:16],
            image.url or "stored",
            iso(image.deprecated_at) or "-",
        )
    render(view)


@app.command("show")
def show(
    ctx: typer.Context,
    version: Annotated[str, typer.Argument(help="The version.", show_default=False)],
    model: Annotated[
        str | None,
        typer.Option(
            "--model", help="The model, where the version has several images.", show_default=False
        ),
    ] = None,
    signature: Annotated[
        bool, typer.Option("--signature", help="Print only the detached CMS signature (PEM).")
    ] = False,
    json_out: JsonOption = False,
) -> None:
    """Show a catalogued image (with its signature in --json).

    Example:

        fleet firmware show 1.4.0 --model p200 --json

        fleet firmware show 1.4.0 --signature > p200-1.4.0.bin.p7s
    """
    from fleet.firmware.images import show_image

    image = show_image(workspace(ctx), version, model)
    if signature:
        typer.echo(image.signature_pem, nl=False)
        return
    if json_out:
        print_json(image.to_dict())
        return
    view = table("Field", "Value")
    for key, value in image.to_dict(signature=False).items():
        shown = ", ".join(value) if isinstance(value, list) else value
        view.add_row(key, "-" if shown is None or shown == "" else str(shown))
    render(view)


@app.command("deprecate")
def deprecate(
    ctx: typer.Context,
    version: Annotated[str, typer.Argument(help="The version.", show_default=False)],
    model: Annotated[
        str | None,
        typer.Option(
            "--model", help="Only the image this model uses at VERSION.", show_default=False
        ),
    ] = None,
    json_out: JsonOption = False,
) -> None:
    """Deprecate a version: compliance flags devices on it and no rollout targets it.

    Example:

        fleet firmware deprecate 1.3.0
    """
    from fleet.firmware.images import deprecate_image

    images = deprecate_image(workspace(ctx), version, model)
    if json_out:
        print_json([image.to_dict(signature=False) for image in images])
        return
    if not images:
        message(f"{version} was already deprecated: nothing changed")
    for image in images:
        message(f"deprecated {version} ({', '.join(image.models)})")


@app.command("verify")
def verify(
    ctx: typer.Context,
    version: Annotated[str, typer.Argument(help="The version.", show_default=False)],
    model: Annotated[
        str | None,
        typer.Option(
            "--model", help="The model, where the version has several images.", show_default=False
        ),
    ] = None,
    file: Annotated[
        Path | None,
        typer.Option("--file", help="The image to check (for --url images).", show_default=False),
    ] = None,
    json_out: JsonOption = False,
) -> None:
    """Check an image's SHA-256 and its signature against the root (exit 7 if either fails).

    Example:

        fleet firmware verify 1.4.0 --model p200
    """
    from fleet.errors import IntegrityError
    from fleet.firmware.images import verify_image

    result = verify_image(workspace(ctx), version, model, file)
    if json_out:
        print_json(result.to_dict())
    elif result.ok:
        message(f"{result.path}: sha256 and signature verify ({version})")
    if not result.ok:
        raise IntegrityError(f"{result.path}: {result.problem}")


@app.command("report")
def report(
    ctx: typer.Context,
    device_id: Annotated[str, typer.Argument(metavar="ID", help="The device.", show_default=False)],
    version: Annotated[
        str | None,
        typer.Argument(
            help="The version it runs (leave out with --state failed).", show_default=False
        ),
    ] = None,
    state: Annotated[
        str | None,
        typer.Option(
            "--state", help="An update under way: in-progress or failed.", show_default=False
        ),
    ] = None,
    detail: Annotated[
        str | None, typer.Option("--detail", help="What the device said.", show_default=False)
    ] = None,
    json_out: JsonOption = False,
) -> None:
    """Record what a device runs, as if it had reported it (source manual; not audited,
    like every report). Exit 3 if the device is unknown or decommissioned.

    Example:

        fleet firmware report pump-0042 1.4.0

        fleet firmware report pump-0042 --state failed --detail "flash write error"
    """
    from fleet.firmware.pins import report_manual

    result = report_manual(workspace(ctx), device_id, version, state=state, detail=detail)
    if json_out:
        print_json(result.to_dict())
    elif result.recorded:
        message(f"recorded {device_id}: {version or '-'}{f' ({state})' if state else ''}")
    else:
        message(f"{device_id} has a newer report: nothing changed")


@app.command("compliance")
def compliance(
    ctx: typer.Context,
    model: ModelOption = None,
    json_out: JsonOption = False,
) -> None:
    """What the active fleet runs: devices per version per model, and those behind their
    target, on deprecated or uncatalogued versions, or that never reported one.

    Example:

        fleet firmware compliance --model p200 --json
    """
    from fleet.firmware.compliance import compliance as compliance_of

    result = compliance_of(workspace(ctx), model=model)
    if json_out:
        print_json(result.to_dict())
        return
    view = table("Model", "Version", "Devices", "Catalogue")
    for entry in result.models:
        name = entry.model or "-"
        for version in entry.versions:
            view.add_row(name, version.version, str(version.devices), version.status)
        if entry.no_report:
            view.add_row(name, "-", str(entry.no_report), "never reported")
    render(view)
    totals = result.totals()
    message(
        f"{totals['devices']} devices: {totals['behind_target']} behind their target, "
        f"{totals['deprecated']} on deprecated versions, {totals['unknown']} on versions not "
        f"in the catalogue, {totals['no_report']} never reported"
    )
