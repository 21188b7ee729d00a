"""A rollout end to end against the moto server: targets delivered as the desired state of
the ``firmware`` named shadow, devices simulated by a helper that reads that desired state
and writes the reported state with boto3 (an independent client), ``fleet cloud sync``
pulling the reports and stepping the rollout. Phases advance, a failure rate pauses it,
retry-failed recovers, a device added under --dynamic joins, a pinned device is skipped,
timeouts fire with the injected clock."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from helpers import PASSPHRASE, FrozenClock, require_service
from helpers.moto import ACCESS_KEY, REGION, SECRET_KEY, fake_aws_env, moto_server, reset_moto

from fleet import clock, devices
from fleet.cloud.clouds import add_cloud
from fleet.cloud.status import sync
from fleet.firmware.images import add_image
from fleet.firmware.pins import pin_device
from fleet.firmware.rollouts import (
    RolloutSpec,
    create_rollout,
    device_history,
    resume_rollout,
    retry_failed,
    rollout_status,
    start_rollout,
)
from fleet.workspace import Workspace

pytestmark = pytest.mark.slow

KEYS = {"aws_access_key_id": ACCESS_KEY, "aws_secret_access_key": SECRET_KEY}

try:
    import boto3
except ImportError:  # pragma: no cover - depends on the environment
    boto3 = None


@pytest.fixture(scope="module")
def moto_url() -> Iterator[str]:
    if boto3 is None:
        require_service("boto3 is not installed (pip install -e .[test])")
    yield from moto_server()


@pytest.fixture
def aws(moto_url: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> str:
    """A reset moto and fake credentials (tests/helpers/moto.py)."""
    fake_aws_env(monkeypatch, tmp_path)
    return reset_moto(moto_url, monkeypatch)


class Devices:
    """The devices' side: reads ``desired.firmware`` of the ``firmware`` shadow and reports."""

    def __init__(self, iot_data: Any) -> None:
        self.iot_data = iot_data

    def desired(self, device_id: str) -> dict[str, Any] | None:
        try:
            payload = self.iot_data.get_thing_shadow(thingName=device_id, shadowName="firmware")
        except self.iot_data.exceptions.ResourceNotFoundException:
            return None
        state = json.loads(payload["payload"].read())["state"]
        firmware: dict[str, Any] | None = state.get("desired", {}).get("firmware")
        return firmware

    def act(self, device_ids: list[str], behaviour: dict[str, str]) -> list[str]:
        """Each device with a desired version does what ``behaviour`` says (default
        "install"; "fail"; "silent"); returns the devices that had a target."""
        acted = []
        for device_id in device_ids:
            target = self.desired(device_id)
            if target is None:
                continue
            acted.append(device_id)
            what = behaviour.get(device_id, "install")
            if what == "silent":
                continue
            if what == "fail":
                reported: dict[str, Any] = {
                    "firmware_update": {"state": "failed", "detail": "flash write error"}
                }
            else:
                reported = {"firmware_version": target["version"], "firmware_update": None}
            self.iot_data.update_thing_shadow(
                thingName=device_id,
                shadowName="firmware",
                payload=json.dumps({"state": {"reported": reported}}),
            )
        return acted


def _states(ws: Workspace) -> dict[str, int]:
    return {k: v for k, v in (rollout_status(ws, "r").states or {}).items() if v}


def test_rollout_end_to_end_against_moto(
    ready_sqlite_ws: Workspace, aws: str, tmp_path: Path
) -> None:
    ws = ready_sqlite_ws
    iot_data = boto3.client("iot-data", endpoint_url=aws, region_name=REGION, **KEYS)
    fleet_devices = Devices(iot_data)
    frozen = FrozenClock(datetime.now(UTC).replace(microsecond=0))
    with clock.frozen(frozen):
        add_cloud(
            ws, "aws", "aws-iot", {"region": REGION, "endpoint_url": aws}, unlimited_rate=True
        )
        ids = [f"pump-{i:03d}" for i in range(60)]
        for device_id in ids:
            devices.add_device(ws, device_id, model="p200", out_dir=tmp_path / "o", clouds=["aws"])
        image = tmp_path / "p200-2.0.0.bin"
        image.write_bytes(b"\x7fELF firmware 2.0.0" * 100)
        add_image(
            ws, image, version="2.0.0", models=["p200"], url="https://fw.example/p200-2.0.0.bin",
            passphrase=PASSPHRASE,
        )  # fmt: skip
        pin_device(ws, "pump-059", "1.0.0")
        create_rollout(
            ws,
            RolloutSpec(
                "r", "p200@2.0.0", phases="10%,50%,100%", max_failure_rate="10%",
                min_executed=5, timeout="2h", dynamic=True, cloud="aws",
            ),
        )  # fmt: skip
        assert start_rollout(ws, "r") == {"pending": 59, "skipped": 1}
        assert "pinned to 1.0.0" in (device_history(ws, "r", "pump-059")["reason"] or "")

        def round_trip(behaviour: dict[str, str] | None = None, **advance: float) -> list[str]:
            acted = fleet_devices.act(ids, behaviour or {})
            frozen.advance(**(advance or {"minutes": 1}))
            [report] = sync(ws, "aws")
            assert report.push.error is None and report.push.failed == 0, report.to_dict()
            return acted

        round_trip()  # registers the devices, steps: phase 1 notified and delivered
        first = [d for d in ids if fleet_devices.desired(d)]
        assert first == ids[:6]
        desired = fleet_devices.desired("pump-000")
        assert desired is not None and desired["version"] == "2.0.0"
        assert desired["sha256"] == hashlib.sha256(image.read_bytes()).hexdigest()
        assert desired["url"].endswith("p200-2.0.0.bin") and "BEGIN" in desired["signature"]

        round_trip()  # phase 1 installs -> phase 2 (to 50%) notified
        assert rollout_status(ws, "r").phase == 1
        second = [d for d in ids[6:30]]
        failing = {d: "fail" for d in second[:5]}
        round_trip(failing)
        status = rollout_status(ws, "r")
        assert status.state == "paused" and "exceeds" in (status.reason or "")
        assert _states(ws)["failed"] == 5
        assert device_history(ws, "r", second[0])["reason"] == "flash write error"

        assert retry_failed(ws, "r") == 5
        resume_rollout(ws, "r")
        round_trip()  # failed devices notified again (attempt 2)
        round_trip()  # they install; phase 3 notified
        assert device_history(ws, "r", second[0])["attempts"] == 2
        assert rollout_status(ws, "r").phase == 2
        devices.add_device(ws, "pump-100", model="p200", out_dir=tmp_path / "o", clouds=["aws"])
        ids.append("pump-100")
        round_trip({d: "silent" for d in ids[30:33]})  # registers and joins pump-100
        round_trip({d: "silent" for d in ids[30:33]})
        assert device_history(ws, "r", "pump-100")["state"] == "succeeded"
        assert _states(ws) == {"succeeded": 57, "notified": 3, "skipped": 1}
        round_trip({d: "silent" for d in ids[30:33]}, hours=2, seconds=1)
        status = rollout_status(ws, "r")
        assert _states(ws) == {"succeeded": 57, "timed-out": 3, "skipped": 1}
        assert status.state == "completed"
        assert fleet_devices.desired("pump-059") is None  # pinned: never targeted
