"""Where the tests run: the repository, the test passphrase, and whether this is CI."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PASSPHRASE = "correct horse battery staple"
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def require_service(reason: str) -> None:
    """Skip a test that needs a missing service, except under CI where that is a failure."""
    if IN_CI:
        pytest.fail(f"{reason} (CI=true: service tests must not skip)")
    pytest.skip(reason)
