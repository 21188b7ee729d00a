"""``fleet onboard``: the onboarding station (a prompt loop over
:class:`fleet.onboard.session.OnboardingSession`)."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, TypeVar

import typer

from fleet.cli._bundle import P12_PASSWORD_ENV, FormatOption, P12EnvOption, bundle_format
from fleet.cli._common import ask_passphrase, message, print_json, workspace
from fleet.errors import FleetError
from fleet.identifiers import parse_labels

if TYPE_CHECKING:
    from fleet.onboard.session import OnboardingSession, OnboardSummary

T = TypeVar("T")
NONE = "-"  # typed for "no model" / "no labels" when a default is offered


def onboard(
    ctx: typer.Context,
    out: Annotated[Path, typer.Option(help="Write each bundle to OUT/DEVICE_ID/.")],
    cloud: Annotated[
        list[str] | None,
        typer.Option(
            "--cloud",
            help="Queue each device's registration on this cloud (works offline; pushed by "
            "`fleet cloud sync`); repeatable.",
            show_default=False,
        ),
    ] = None,
    label_dir: Annotated[
        Path | None,
        typer.Option(
            "--label-dir", help="Write labels here. Default: in each device's bundle folder."
        ),
    ] = None,
    profile: Annotated[str, typer.Option(help="Certificate profile name.")] = "default",
    fmt: FormatOption = "pem",
    p12_password_env: P12EnvOption = P12_PASSWORD_ENV,
    json_out: Annotated[
        bool, typer.Option("--json", help="Print the session's summary as JSON on stdout.")
    ] = False,
) -> None:
    """Onboard devices at a bench: unlock the CA once, then scan or type each ID and serial.

    A barcode scanner types a line and Enter, like a keyboard. Each device gets its bundle
    and a QR label (ID, serial, certificate fingerprint) shown here and written as PNG and
    SVG. Model and labels offer the last ones used; "-" means none. An empty ID or Ctrl-C
    ends the session with a summary.

    Example:

        fleet onboard --out ids --cloud plant --label-dir labels
    """
    from fleet.onboard.session import OnboardingSession

    session = OnboardingSession.open(
        workspace(ctx),
        out_dir=out,
        clouds=cloud or (),
        label_dir=label_dir,
        profile=profile,
        bundle_format=bundle_format(fmt, p12_password_env),
        passphrase=ask_passphrase,
    )
    message("Onboarding: scan or type each device's ID and serial; an empty ID or Ctrl-C ends.")
    if session.models:
        message(f"Known models: {', '.join(session.models)}")
    try:
        while _one_device(session):
            pass
    except (KeyboardInterrupt, EOFError):
        message("")
    summary = session.summary()
    if json_out:
        print_json(summary.to_dict())
    _print_summary(summary)


def _ask(question: str, default: str | None = None) -> str:
    """One line from the terminal (or scanner); empty: ``default``. EOF ends the session."""
    shown = f" [{default}]" if default else ""
    sys.stderr.write(f"{question}{shown}: ")
    sys.stderr.flush()
    line = sys.stdin.readline()
    if not line:
        raise EOFError
    answer = line.strip()
    return answer or (default or "")


def _until_valid(question: str, check: Callable[[str], T], default: str | None = None) -> T:
    """Ask until ``check`` accepts the answer; each refusal prints ``device add``'s message."""
    while True:
        try:
            return check(_ask(question, default))
        except FleetError as exc:
            _error(exc)


def _error(exc: FleetError) -> None:
    message(f"error: {' '.join(str(exc).split())}")


def _one_device(session: OnboardingSession) -> bool:
    """Onboard one device; False when the technician ends the session (an empty ID)."""
    while True:
        device_id = _ask("Device ID")
        if not device_id:
            return False
        try:
            session.check_id(device_id)
            break
        except FleetError as exc:
            _error(exc)
    serial = _until_valid("Serial", lambda text: session.check_serial(text or None))
    known = f" ({', '.join(session.models)})" if session.models else ""
    model = _until_valid(
        f"Model{known}",
        lambda text: session.check_model(None if text in ("", NONE) else text),
        session.last_model,
    )
    last = ",".join(f"{k}={v}" for k, v in sorted(session.last_labels.items()))
    labels = _until_valid(
        "Labels (k=v,k=v)",
        lambda text: session.check_labels(_labels(text)),
        last or None,
    )
    try:
        done = session.onboard(device_id, serial=serial, model=model, labels=labels)
    except FleetError as exc:
        _error(exc)
        return True
    message(done.label.terminal().rstrip("\n"))
    cert = done.device.certificates[0]
    message(f"Onboarded {device_id}: certificate {cert.serial}, bundle {done.bundle}/")
    if done.label_files is not None:
        message(f"  label: {done.label_files.png}, {done.label_files.svg}")
    return True


def _labels(text: str) -> dict[str, str]:
    if text in ("", NONE):
        return {}
    return parse_labels([part.strip() for part in text.split(",") if part.strip()])


def _print_summary(summary: OnboardSummary) -> None:
    count = len(summary.onboarded)
    noun = "device" if count == 1 else "devices"
    message(f"Session ended: {count} {noun} onboarded, {len(summary.refused)} entries refused")
    if summary.onboarded:
        message(f"  onboarded: {', '.join(summary.onboarded)}")
    for item in summary.refused:
        entry = item.entry if len(item.entry) <= 40 else f"{item.entry[:37]}..."
        message(f"  refused {entry!r}: {item.error}")
    if summary.clouds:
        clouds = ", ".join(summary.clouds)
        if summary.queued:
            message(
                f"  {summary.queued} registrations wait for the network on {clouds}: "
                f"run `fleet cloud sync` when online"
            )
        else:
            message(f"  no registrations waiting on {clouds}")
