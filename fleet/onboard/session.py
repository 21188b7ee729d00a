"""An onboarding session: the CA unlocked once, then one device after another through
:func:`fleet.devices.add_device` (the same checks, messages, transaction and bundle as
``fleet device add``), each with its label; a summary at the end.

Nothing here needs the network: registrations on ``clouds`` are queued in each device's
transaction (:mod:`fleet.cloud.jobs`) and pushed later by ``fleet cloud sync``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlmodel import col, select

from fleet.errors import Conflict, FleetError, InvalidInput
from fleet.identifiers import validate_device_id, validate_label, validate_text_field
from fleet.onboard.labels import Label, LabelFiles, label_of, write_label
from fleet.registry.db import read_session
from fleet.registry.models import Device
from fleet.workspace import Passphrase, Workspace, require_passphrase

if TYPE_CHECKING:
    from sqlalchemy.engine import Engine

    from fleet.pki.bundles import BundleFormat
    from fleet.views import DeviceView

KNOWN_MODELS_LIMIT = 20


def known_models(engine: Engine, limit: int = KNOWN_MODELS_LIMIT) -> list[str]:
    """The distinct device models in the registry, in order, at most ``limit``: one index
    seek each (``ix_device_model_id``), however many devices share a model."""
    found: list[str] = []
    with read_session(engine) as session:
        while len(found) < limit:
            query = select(Device.model).where(col(Device.model).is_not(None))
            if found:
                query = query.where(col(Device.model) > found[-1])
            model = session.exec(query.order_by(col(Device.model)).limit(1)).first()
            if model is None:
                break
            found.append(model)
    return found


@dataclass(frozen=True)
class Refused:
    """An entry the session refused, and why (the message ``device add`` gives)."""

    entry: str
    error: str

    def to_dict(self) -> dict[str, str]:
        """The JSON shape."""
        return {"entry": self.entry, "error": self.error}


@dataclass(frozen=True)
class Onboarded:
    """A device onboarded in this session."""

    device: DeviceView
    bundle: Path
    label: Label
    label_files: LabelFiles | None  # None: the label could not be written


@dataclass(frozen=True)
class OnboardSummary:
    """How a session went: devices onboarded, entries refused, registrations waiting."""

    onboarded: list[str]
    refused: list[Refused]
    clouds: list[str]
    queued: int  # registrations of this session's devices still waiting to be pushed
    out_dir: str

    def to_dict(self) -> dict[str, Any]:
        """The JSON shape (``fleet onboard --json``)."""
        return {
            "onboarded": self.onboarded,
            "refused": [item.to_dict() for item in self.refused],
            "clouds": self.clouds,
            "queued_registrations": self.queued,
            "out_dir": self.out_dir,
        }


@dataclass
class OnboardingSession:
    """A technician's bench session. :meth:`open` unlocks the CA once; then
    :meth:`check_id`, :meth:`check_serial`... as each answer comes, :meth:`onboard` per device,
    :meth:`summary` at the end. Refusals are remembered for the summary.
    """

    ws: Workspace
    out_dir: Path
    clouds: list[str]
    label_dir: Path | None
    profile: str
    bundle_format: BundleFormat | None
    issuer: Any  # fleet.pki.issuer.Issuer, kept unlocked for the session
    models: list[str]
    last_model: str | None = None
    last_labels: dict[str, str] = field(default_factory=dict)
    done: list[Onboarded] = field(default_factory=list)
    refused: list[Refused] = field(default_factory=list)

    @classmethod
    def open(
        cls,
        ws: Workspace,
        *,
        out_dir: Path,
        clouds: Sequence[str] = (),
        label_dir: Path | None = None,
        profile: str = "default",
        bundle_format: BundleFormat | None = None,
        passphrase: Passphrase | None = None,
    ) -> OnboardingSession:
        """Check the request (profile, clouds, registry), then unlock the CA (and ask the
        PKCS#12 password) once for the whole session. Example::

            session = OnboardingSession.open(Workspace(Path("~/fleet")), out_dir=Path("ids"))
            session.onboard("pump-0042", serial="SN-1", model="p200")
            print(session.summary().to_dict())
        """
        from fleet.cloud import jobs
        from fleet.pki import ca
        from fleet.pki.profiles import load_profile

        load_profile(profile, ws.home)
        engine = ws.open_registry()
        chosen: list[str] = []
        if clouds:
            with read_session(engine) as session:
                chosen = jobs.validate_clouds_exist(session, clouds)
        ready = bundle_format.ready() if bundle_format is not None else None
        issuer = ca.load_issuer(ws.home, require_passphrase(passphrase))
        return cls(
            ws=ws,
            out_dir=out_dir,
            clouds=chosen,
            label_dir=label_dir,
            profile=profile,
            bundle_format=ready,
            issuer=issuer,
            models=known_models(engine),
        )

    def _refuse(self, entry: str, exc: FleetError) -> None:
        self.refused.append(Refused(entry, str(exc)))

    def check_id(self, device_id: str) -> str:
        """Check a scanned ID as ``device add`` would before issuing: valid, not in the
        registry, no bundle folder in the way. A refusal is remembered and raised."""
        try:
            validate_device_id(device_id)
            with read_session(self.ws.open_registry()) as session:
                if session.get(Device, device_id) is not None:
                    raise Conflict(f"device {device_id!r} already exists")
            out = self.out_dir / device_id
            if os.path.lexists(out):
                raise Conflict(f"{out} already exists; move it away or choose another --out")
        except FleetError as exc:
            self._refuse(device_id, exc)
            raise
        return device_id

    def check_serial(self, serial: str | None) -> str | None:
        """Check a serial as ``device add`` does (a refusal is remembered and raised)."""
        return self._checked("serial", serial)

    def check_model(self, model: str | None) -> str | None:
        """Check a model as ``device add`` does (a refusal is remembered and raised)."""
        return self._checked("model", model)

    def check_labels(self, labels: dict[str, str]) -> dict[str, str]:
        """Check labels as ``device add`` does (a refusal is remembered and raised)."""
        try:
            for key, value in labels.items():
                validate_label(key, value)
        except FleetError as exc:
            self._refuse(", ".join(f"{k}={v}" for k, v in labels.items()), exc)
            raise
        return labels

    def _checked(self, name: str, value: str | None) -> str | None:
        try:
            return validate_text_field(name, value)
        except FleetError as exc:
            self._refuse(value or "", exc)
            raise

    def onboard(
        self,
        device_id: str,
        *,
        serial: str | None = None,
        model: str | None = None,
        labels: dict[str, str] | None = None,
    ) -> Onboarded:
        """Register one device and issue its identity (``device add`` with the session's
        issuer), write its bundle and its label; a refusal is remembered and raised (a label
        that cannot be written raises too, the device being onboarded)."""
        from fleet.devices import add_device

        try:
            device = add_device(
                self.ws,
                device_id,
                model=model,
                serial=serial,
                labels=labels,
                profile=self.profile,
                out_dir=self.out_dir,
                clouds=self.clouds,
                issuer=self.issuer,
                bundle_format=self.bundle_format,
            )
        except FleetError as exc:
            self._refuse(device_id, exc)
            raise
        if model and model not in self.models:
            self.models = sorted([*self.models, model])
        self.last_model = model
        self.last_labels = dict(labels or {})
        bundle = self.out_dir / device_id
        label = label_of(device)
        try:
            files = write_label(label, self.label_dir or bundle)
        except FleetError as exc:  # the device is onboarded all the same
            self.done.append(Onboarded(device, bundle, label, None))
            raise InvalidInput(f"{device_id} is onboarded, but not its label: {exc}") from exc
        result = Onboarded(device, bundle, label, files)
        self.done.append(result)
        return result

    def summary(self) -> OnboardSummary:
        """Devices onboarded, entries refused, and how many of their registrations still
        wait for the network."""
        from fleet.cloud import jobs

        ids = [item.device.id for item in self.done]
        queued = 0
        if ids and self.clouds:
            with read_session(self.ws.open_registry()) as session:
                queued = len(jobs.open_jobs(session, ids, self.clouds))
        return OnboardSummary(ids, list(self.refused), self.clouds, queued, str(self.out_dir))
