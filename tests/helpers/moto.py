"""The AWS emulator for the tests: a moto server on 127.0.0.1 (port chosen by the OS), reset
between tests, and an environment that gives fleet's AWS backend and boto3 fake credentials
only (the developer's own AWS configuration is never read)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from helpers.env import require_service

REGION = "eu-west-1"
ACCESS_KEY = "AKIAFLEETTEST0000001"
SECRET_KEY = "fleet-test-secret"


def moto_server() -> Iterator[str]:
    """Run a moto server for the duration of a fixture: ``yield from moto_server()``."""
    try:
        from moto.server import ThreadedMotoServer
    except ImportError:  # pragma: no cover - depends on the environment
        require_service("moto[server] is not installed (pip install -e .[test])")
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield f"http://{host}:{port}"
    finally:
        server.stop()


def reset_moto(url: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """Empty the emulator and make its certificate ids AWS-accurate (SHA-256 of the DER).

    moto's HTTP config API does not expose that IoT switch; the server runs in this process,
    so it is set in moto's own config dict."""
    from moto.core.config import default_user_config

    httpx.post(f"{url}/moto-api/reset").raise_for_status()
    monkeypatch.setitem(default_user_config, "iot", {"use_valid_cert": True})
    return url


def fake_aws_env(
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    *,
    access_key: str = ACCESS_KEY,
    secret_key: str = SECRET_KEY,
    region: str | None = REGION,
) -> None:
    """Fake credentials in the environment; no profile, config file, endpoint or instance
    metadata of the machine's own is read."""
    for name in ("AWS_PROFILE", "AWS_DEFAULT_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "aws-credentials"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", access_key)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", secret_key)
    if region is not None:
        monkeypatch.setenv("AWS_DEFAULT_REGION", region)
