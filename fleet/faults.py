"""Fault injection for the crash tests: stop a real run at a named point, like ``kill -9``.

``FLEET_FAULT_INJECT=POINT:N`` makes the process SIGKILL itself the Nth time it reaches
POINT (one of :data:`FAULT_POINTS`), so the tests can stop each issuing command (``fleet
device add``, ``fleet cert renew``, ``fleet provision``, the export signer) in each window
deterministically. Never set otherwise.

Points, in the order an issuance reaches them: ``after-stage`` (the new key is staged, no
certificate on disk), ``after-rename`` / ``before-commit`` (inside the registry
transaction), ``after-commit`` (recorded, nothing published), ``after-p12`` (a PKCS#12
bundle's ``bundle.p12`` written, its ``key.pem`` removed), ``after-complete`` (the staged
bundle holds its certificate), ``after-set-aside`` (a renewal moved the old bundle aside),
``after-publish`` (the new bundle is in place, the old one not yet removed), ``manifest``.
"""

from __future__ import annotations

import os
import signal
import sys

FAULT_ENV = "FLEET_FAULT_INJECT"
FAULT_POINTS = (
    "after-stage",
    "after-rename",
    "before-commit",
    "after-commit",
    "after-p12",
    "after-complete",
    "after-set-aside",
    "after-publish",
    "manifest",
)


class Faults:
    """The fault armed for this run (read from the environment when created), if any."""

    def __init__(self) -> None:
        spec = os.environ.get(FAULT_ENV, "")
        point, _, count = spec.partition(":")
        self.point = point if point in FAULT_POINTS else None
        self.remaining = int(count) if count.isdigit() else 1

    def hit(self, point: str) -> None:
        """SIGKILL this process if ``point`` is the armed one and its count is reached."""
        if point != self.point:
            return
        self.remaining -= 1
        if self.remaining <= 0:
            sys.stderr.flush()
            os.kill(os.getpid(), signal.SIGKILL)


_process: Faults | None = None


def hit(point: str) -> None:
    """:meth:`Faults.hit` on the process's own :class:`Faults` (made on first use)."""
    global _process
    if _process is None:
        _process = Faults()
    _process.hit(point)
