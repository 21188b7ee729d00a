"""``fleet rollout ...``: phased firmware rollouts that stop themselves (docs/firmware.md)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any

import typer

from fleet.cli._common import message, print_json, render, table, workspace
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

if TYPE_CHECKING:
    from fleet.firmware.rollout.views import RolloutView

app = typer.Typer(
    help="Roll firmware out in phases: start, step, pause, resume, abort, retry, status.",
    no_args_is_help=True,
)

JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON on stdout.")]
NameArg = Annotated[str, typer.Argument(help="The rollout's name.", show_default=False)]


@app.command("create")
def create(
    ctx: typer.Context,
    name: NameArg,
    firmware: Annotated[
        str, typer.Option("--firmware", help="The image to roll out, as MODEL@VERSION.")
    ],
    phases: Annotated[
        str,
        typer.Option("--phases", help="Cumulative percentages of the devices, e.g. 1%,10%,100%."),
    ] = "100%",
    model: Annotated[
        str | None,
        typer.Option("--model", help="Select devices of this model.", show_default=False),
    ] = None,
    label: Annotated[
        list[str] | None,
        typer.Option("--label", help="Select devices with label K=V; repeat: all must match."),
    ] = None,
    status: Annotated[
        str | None,
        typer.Option(
            "--status", help="Select devices in this status (default active).", show_default=False
        ),
    ] = None,
    max_failure_rate: Annotated[
        str,
        typer.Option(
            "--max-failure-rate", help="Pause when (failed + timed-out) / executed exceeds it."
        ),
    ] = "5%",
    min_executed: Annotated[
        int, typer.Option("--min-executed", help="Executed devices before the rate counts.")
    ] = 20,
    max_per_minute: Annotated[
        int | None,
        typer.Option(
            "--max-per-minute", help="Notify at most N devices a minute.", show_default=False
        ),
    ] = None,
    timeout: Annotated[
        str | None,
        typer.Option(
            "--timeout",
            help="Time out devices not done this long after notification (24h).",
            show_default=False,
        ),
    ] = None,
    dynamic: Annotated[
        bool, typer.Option("--dynamic", help="Devices matching later join the current phase.")
    ] = False,
    cloud: Annotated[
        str | None,
        typer.Option(
            "--cloud",
            help="Deliver through this cloud only (default: every cloud the device is on).",
            show_default=False,
        ),
    ] = None,
    json_out: JsonOption = False,
) -> None:
    """Create a rollout of one catalogued image (not deprecated) to the devices the selector
    picks (frozen at start unless --dynamic). Exit 2: bad option; 3: unknown image or cloud;
    4: the name exists or the image is deprecated.

    Example:

        fleet rollout create spring --firmware p200@1.4.0 --phases 1%,10%,50%,100%
    """
    from fleet.firmware.rollout.views import RolloutView
    from fleet.firmware.rollouts import RolloutSpec, create_rollout
    from fleet.identifiers import parse_labels

    rollout = create_rollout(
        workspace(ctx),
        RolloutSpec(
            name=name,
            firmware=firmware,
            model=model,
            labels=parse_labels(label or []) or None,
            status=status,
            phases=phases,
            max_failure_rate=max_failure_rate,
            min_executed=min_executed,
            max_per_minute=max_per_minute,
            timeout=timeout,
            dynamic=dynamic,
            cloud=cloud,
        ),
    )
    view = RolloutView.of(rollout)
    if json_out:
        print_json(view.to_dict())
    else:
        message(
            f"rollout {name!r} created ({view.firmware}, phases {view.phases}); "
            f"`fleet rollout start {name}`"
        )


@app.command("start")
def start(ctx: typer.Context, name: NameArg, json_out: JsonOption = False) -> None:
    """Select the devices (each gets its phase, or skipped / already-installed with the
    reason) and run the rollout; the next `fleet rollout step` notifies its first phase.

    Example:

        fleet rollout start spring
    """
    from fleet.firmware.rollouts import start_rollout

    counts = start_rollout(workspace(ctx), name)
    if json_out:
        print_json({"rollout": name, "states": counts})
    else:
        shown = ", ".join(f"{count} {state}" for state, count in sorted(counts.items()))
        message(f"rollout {name!r} running: {shown or 'no devices'}")


@app.command("step")
def step_cmd(
    ctx: typer.Context,
    name: Annotated[
        str | None, typer.Argument(help="Only this rollout.", show_default=False)
    ] = None,
    json_out: JsonOption = False,
) -> None:
    """Advance every running rollout once: read what devices reported, time out the slow
    ones, pause on the failure rate, advance or complete phases, notify pending devices
    (targets queued for `fleet cloud sync`, which also steps). Run it from cron.

    Example:

        fleet rollout step --json
    """
    from fleet.firmware.rollouts import step

    reports = step(workspace(ctx), name)
    if json_out:
        print_json([r.to_dict() for r in reports])
        return
    for r in reports:
        moved = ", ".join(f"{n} {s}" for s, n in sorted(r.changed.items())) or "no changes"
        extra = f" ({r.reason})" if r.reason else ""
        message(
            f"{r.rollout}: {r.state}, phase {r.phase + 1}; {moved}; {r.notified} notified{extra}"
        )
    if not reports:
        message("no running rollouts")


def _simple(ctx: typer.Context, name: str, json_out: bool, verb: str) -> None:
    from fleet.firmware import rollouts

    ws = workspace(ctx)
    result: dict[str, Any]
    if verb == "pause":
        result = rollouts.pause_rollout(ws, name).model_dump(include={"name", "state", "reason"})
    elif verb == "resume":
        result = rollouts.resume_rollout(ws, name).model_dump(include={"name", "state"})
    elif verb == "abort":
        result = {"name": name, "state": "aborted", **rollouts.abort_rollout(ws, name)}
    else:
        result = {"name": name, "retried": rollouts.retry_failed(ws, name)}
    if json_out:
        print_json(result)
    else:
        message(", ".join(f"{k}: {v}" for k, v in result.items()))


@app.command("pause")
def pause(ctx: typer.Context, name: NameArg, json_out: JsonOption = False) -> None:
    """Pause a running rollout (steps leave it alone until resumed).

    Example:

        fleet rollout pause spring
    """
    _simple(ctx, name, json_out, "pause")


@app.command("resume")
def resume(ctx: typer.Context, name: NameArg, json_out: JsonOption = False) -> None:
    """Resume a paused rollout (it pauses again at the next step while the failure rate
    still exceeds the threshold: retry-failed first).

    Example:

        fleet rollout resume spring
    """
    _simple(ctx, name, json_out, "resume")


@app.command("abort")
def abort(ctx: typer.Context, name: NameArg, json_out: JsonOption = False) -> None:
    """Abort: devices not finished become cancelled and the targets delivered to them are
    cleared (the clearing is queued to their clouds).

    Example:

        fleet rollout abort spring
    """
    _simple(ctx, name, json_out, "abort")


@app.command("retry-failed")
def retry_failed(ctx: typer.Context, name: NameArg, json_out: JsonOption = False) -> None:
    """Move the failed and timed-out devices back to pending (counted once, attempts kept).

    Example:

        fleet rollout retry-failed spring && fleet rollout resume spring
    """
    _simple(ctx, name, json_out, "retry")


@app.command("status")
def status(
    ctx: typer.Context,
    name: NameArg,
    device: Annotated[
        str | None,
        typer.Option("--device", help="One device's history in the rollout.", show_default=False),
    ] = None,
    json_out: JsonOption = False,
) -> None:
    """Devices per state and per phase (devices, not attempts), the failure rate and why
    it paused; with --device, that device's transitions from the audit trail.

    Example:

        fleet rollout status spring --device pump-0042
    """
    from fleet.firmware.rollout.views import device_history, rollout_status

    ws = workspace(ctx)
    if device is not None:
        history = device_history(ws, name, device)
        if json_out:
            print_json(history)
            return
        reason = f" - {history['reason']}" if history["reason"] else ""
        message(
            f"{device} in {name}: {history['state']} (phase {history['phase'] + 1}, "
            f"{history['attempts']} attempts){reason}"
        )
        view = table("Time", "Event", "Value")
        for entry in history["history"]:
            value = entry.get("state") or entry.get("phase") or f"target {entry.get('target')}"
            view.add_row(entry["ts"], entry["action"], str(value))
        render(view)
        return
    shape = rollout_status(ws, name).to_dict()
    if json_out:
        print_json(shape)
        return
    message(
        f"{shape['name']}: {shape['firmware']} {shape['state']}, phase {shape['phase'] + 1} of "
        f"{len(shape['phases'])}; failure rate {shape['failure_rate']:.1%} of "
        f"{shape['executed']} executed" + (f"; {shape['reason']}" if shape["reason"] else "")
    )
    states = [s for s, n in shape["states"].items() if n]
    view = table("Phase", "%", *states, "Devices")
    for index, counts in enumerate(shape["phase_states"]):
        view.add_row(
            str(index + 1),
            f"{shape['phases'][index]:g}",
            *(str(counts.get(s, 0)) for s in states),
            str(sum(counts.values())),
        )
    view.add_row("all", "", *(str(shape["states"][s]) for s in states), str(shape["devices"]))
    render(view)


@app.command("list")
def list_cmd(
    ctx: typer.Context,
    limit: LimitOption = None,
    after: AfterOption = None,
    all_rows: AllOption = False,
    json_out: JsonListOption = False,
    jsonl: JsonlOption = False,
    count: CountOption = False,
) -> None:
    """List rollouts in name order.

    Example:

        fleet rollout list --json
    """
    from fleet.firmware.rollout.views import count_rollouts, iter_rollouts

    ws = workspace(ctx)
    options = ListOptions(limit, after, all_rows, json_out, jsonl, count)
    emit(
        Listing(
            fetch=lambda n: iter_rollouts(ws, after=after, limit=n),
            cursor=lambda view: view.name,
            to_dict=lambda view: view.to_dict(),
            count=lambda: count_rollouts(ws, after=after),
            count_after=lambda key: count_rollouts(ws, after=key),
            noun="rollouts",
        ),
        options,
        _rollout_table,
    )


def _rollout_table(rows: list[RolloutView]) -> None:
    view = table("Name", "Firmware", "State", "Phase", "Phases", "Reason")
    for row in rows:
        view.add_row(
            row.name,
            row.firmware,
            row.state,
            str(row.phase + 1),
            ",".join(f"{p:g}%" for p in row.phases),
            row.reason or "",
        )
    render(view)
