"""``fleet doctor``"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from fleet.cli._common import message, print_json, workspace

PROBLEMS_FOUND = 1


def doctor(
    ctx: typer.Context,
    out: Annotated[
        Path, typer.Option("--out", help="The bundle folder to check (the one given to --out).")
    ] = Path("."),
    fix: Annotated[
        bool, typer.Option("--fix", help="Finish what interrupted runs left (see below).")
    ] = False,
    json_out: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
) -> None:
    """Find what interrupted `device add`, `cert renew` or `provision` runs left in a bundle
    folder, and certificates the CA signed that the registry does not record.

    --fix publishes bundles whose certificate is recorded, removes staging folders whose
    certificate is not (they hold no certificate, only a key nothing vouches for) and
    renewals' set-aside bundles once the new one is in place. Unrecorded certificates are
    only reported (serial and path): destroy their key. Exits 1 while a problem remains.

    Example:

        fleet doctor --out ids --fix
    """
    from fleet import doctor as library

    report = library.check(workspace(ctx), out, fix=fix)
    if json_out:
        print_json(report.to_dict())
    else:
        verb = {"publish": "published", "remove": "removed", "restore": "restored"}
        for item in report.leftovers:
            done = verb.get(item.action, item.action) if fix else f"would {item.action}"
            message(f"{item.kind}: {item.path} ({item.device_id}): {done}")
        for found in report.unrecorded:
            message(f"unrecorded certificate {found.serial}: {found.path}")
        if report.ok:
            message(f"{out}: nothing to do")
    if not report.ok:
        raise typer.Exit(PROBLEMS_FOUND)
