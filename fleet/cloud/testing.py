"""The contract every cloud backend passes (docs/cloud.md), for backends' own tests.

Shipped in the package so a third-party backend's test suite can run it too; it needs pytest,
imported only by whoever imports this module (fleet itself never does). Subclass
:class:`BackendContract` in a ``test_*.py`` module as ``Test<Backend>Contract`` and provide
these fixtures:

* ``backend``: a ready, prepared backend instance (``CloudBackend``);
* ``backend_state``: the state its ``prepare`` returned (default ``{}``);
* ``read_back(device_id) -> dict | None``: the platform's view of a device from an
  INDEPENDENT client (boto3, the test server's own state), with at least
  ``{"certificate_pem": str, "active": bool}``; None when the platform has no such device;
* ``secret_values``: strings that must never appear in an error message (default: none).

``make_device(device_id) -> DeviceRecord`` comes with the class: each call issues a NEW real
certificate (fresh key) from a real fleet CA, so two calls for one ID conflict. Example::

    from fleet.cloud.testing import BackendContract

    class TestMyBackendContract(BackendContract):
        @pytest.fixture
        def backend(self) -> Iterator[CloudBackend]: ...

        @pytest.fixture
        def read_back(self) -> ReadBack: ...
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from fleet.cloud.base import CloudBackend, CloudError, ConflictError, DeviceRecord
from fleet.pki import ca
from fleet.pki.issue import issue_certificate
from fleet.pki.issuer import Issuer
from fleet.pki.profiles import load_profile
from fleet.statuses import DeviceStatus

ReadBack = Callable[[str], dict[str, Any] | None]
MakeDevice = Callable[[str], DeviceRecord]


def device_record(issuer: Issuer, device_id: str, **attrs: Any) -> DeviceRecord:
    """A DeviceRecord with a freshly issued certificate (new key) for ``device_id``;
    ``model``, ``serial`` and ``labels`` may be given."""
    issued = issue_certificate(issuer, device_id, load_profile("default"))
    return DeviceRecord(
        device_id=device_id,
        model=attrs.get("model", "p200"),
        serial=attrs.get("serial", "SN-" + device_id),
        labels=attrs.get("labels", {"site": "hamburg"}),
        status=DeviceStatus.ACTIVE,
        certificate_pem=issued.cert_pem,
        certificate_serial=issued.serial,
        fingerprint_sha256=issued.fingerprint_sha256,
    )


class BackendContract:
    """Shared tests; not collected by itself (no ``Test`` prefix)."""

    @pytest.fixture(scope="class")
    def fleet_issuer(self, tmp_path_factory: pytest.TempPathFactory) -> Issuer:
        """A real fleet CA (root + issuing) for the class's devices."""
        home: Path = tmp_path_factory.mktemp("contract-ca")
        return ca.create_ca(home, "Contract CA", "ec-p256", "contract passphrase")

    @pytest.fixture
    def make_device(self, fleet_issuer: Issuer) -> MakeDevice:
        """Issue a new device certificate per call (see the module docstring)."""
        return lambda device_id: device_record(fleet_issuer, device_id)

    @pytest.fixture
    def backend_state(self) -> dict[str, Any]:
        """The state ``prepare`` returned; override for backends that need one."""
        return {}

    @pytest.fixture
    def secret_values(self) -> list[str]:
        """Strings no error message may contain; override with the backend's secrets."""
        return []

    def test_register_then_read_back(
        self,
        backend: CloudBackend,
        backend_state: dict[str, Any],
        make_device: MakeDevice,
        read_back: ReadBack,
    ) -> None:
        """A registered device is on the platform, active, with its certificate."""
        device = make_device("contract-1")
        remote = backend.register(device, backend_state)
        assert isinstance(remote, dict)
        found = read_back("contract-1")
        assert found is not None
        assert found["active"] is True
        assert found["certificate_pem"].strip() == device.certificate_pem.strip()

    def test_register_twice_is_success(
        self,
        backend: CloudBackend,
        backend_state: dict[str, Any],
        make_device: MakeDevice,
        read_back: ReadBack,
    ) -> None:
        """Registering again with the same certificate succeeds."""
        device = make_device("contract-2")
        backend.register(device, backend_state)
        backend.register(device, backend_state)
        found = read_back("contract-2")
        assert found is not None and found["active"] is True

    def test_different_certificate_is_a_conflict(
        self,
        backend: CloudBackend,
        backend_state: dict[str, Any],
        make_device: MakeDevice,
        read_back: ReadBack,
    ) -> None:
        """Another certificate under the same ID is a ConflictError; the first stays."""
        first = make_device("contract-3")
        backend.register(first, backend_state)
        with pytest.raises(ConflictError):
            backend.register(make_device("contract-3"), backend_state)
        found = read_back("contract-3")
        assert found is not None
        assert found["certificate_pem"].strip() == first.certificate_pem.strip()

    @pytest.mark.parametrize("times", [1, 2])
    def test_deregister_then_read_back(
        self,
        backend: CloudBackend,
        backend_state: dict[str, Any],
        make_device: MakeDevice,
        read_back: ReadBack,
        times: int,
    ) -> None:
        """A deregistered device is gone or inactive; deregistering again succeeds."""
        device_id = f"contract-{3 + times}"
        device = make_device(device_id)
        remote = backend.register(device, backend_state)
        for _ in range(times):
            backend.deregister(device, remote, backend_state)
        found = read_back(device_id)
        assert found is None or found["active"] is False

    def test_fetch_status_covers_registered_ids(
        self,
        backend: CloudBackend,
        backend_state: dict[str, Any],
        make_device: MakeDevice,
    ) -> None:
        """Registered ids have a status; unknown ones are absent."""
        for device_id in ("contract-6", "contract-7"):
            backend.register(make_device(device_id), backend_state)
        status = backend.fetch_status(["contract-6", "contract-7", "never-seen"], backend_state)
        assert {"contract-6", "contract-7"} <= set(status)
        assert "never-seen" not in status

    def test_secrets_never_in_error_messages(
        self,
        backend: CloudBackend,
        backend_state: dict[str, Any],
        make_device: MakeDevice,
        secret_values: list[str],
    ) -> None:
        """No secret appears in check messages or errors."""
        messages = [backend.check().message]
        backend.register(make_device("contract-8"), backend_state)
        try:
            backend.register(make_device("contract-8"), backend_state)
        except CloudError as exc:
            messages += [str(exc), repr(exc)]
        joined = "\n".join(messages)
        for secret in secret_values:
            assert secret not in joined
