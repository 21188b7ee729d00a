"""The process-pool side: workers hold the issuing CA in memory, sign, and stage bundles.

Workers sign through the one issuance path (:func:`fleet.pki.issue.issue_certificate`) with
the issuer that :meth:`fleet.pki.issuer.Issuer.for_workers` makes for them: how the CA key
reaches a worker (in memory for the file issuer, a session of its own for an HSM) is the
issuer's decision, not provisioning's.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import sys
from concurrent.futures import ProcessPoolExecutor
from datetime import datetime
from typing import NamedTuple

from fleet.errors import FleetError
from fleet.pki.bundles import staging_name, write_staging
from fleet.pki.csr import load_csr
from fleet.pki.issue import IssuedCertificate, issue_certificate
from fleet.pki.issuer import Issuer, IssuerFactory
from fleet.pki.profiles import Profile
from fleet.processes import worker_context

_worker_issuer: Issuer | None = None
_CREATE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


class TaskRow(NamedTuple):
    """One row of a worker task."""

    device_id: str
    profile: str  # a key of the task's profiles
    csr: bytes | None  # the CSR file's content; None: generate a key
    csr_label: str | None  # the CSR file's path, for messages


def start_pool(issuer: Issuer, workers: int) -> ProcessPoolExecutor:
    """A pool of ``workers`` processes, each with the issuer ``issuer.for_workers()`` gives
    (started lazily)."""
    # fork where there is one: workers inherit the issuer factory in memory
    return ProcessPoolExecutor(
        max_workers=workers,
        mp_context=worker_context(),
        initializer=_init_worker,
        initargs=(issuer.for_workers(), os.getpid()),
    )


def _init_worker(issuer_factory: IssuerFactory, parent: int) -> None:
    """Pool initialiser: make this worker's issuer; die with the parent process."""
    global _worker_issuer
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG: never outlive a killed parent
        if os.getppid() != parent:
            os._exit(1)
    _worker_issuer = issuer_factory()


def sign_chunk(
    rows: list[TaskRow],
    profiles: dict[str, Profile],
    now: datetime,
    out_dir: str,
    token: str,
) -> list[IssuedCertificate | str]:
    """Worker task: issue identities for ``rows`` (:func:`fleet.pki.issue.issue_certificate`)
    and stage their keys in ``out_dir`` (under :func:`~fleet.pki.bundles.staging_name`; the
    certificate follows once recorded). Private keys stay there: what returns to the parent
    carries none. A row that fails is its error message instead."""
    issuer = _worker_issuer
    assert issuer is not None, "worker not initialised"
    results: list[IssuedCertificate | str] = []
    for task in rows:
        try:
            csr = (
                None
                if task.csr is None
                else load_csr(task.csr, task.device_id, source=f"CSR {task.csr_label}")
            )
            issued = issue_certificate(
                issuer, task.device_id, profiles[task.profile], csr=csr, now=now
            )
            folder = os.path.join(out_dir, staging_name(task.device_id, token))
            _stage(folder, issued.key_pem, issued.serial)
        except FleetError as exc:
            results.append(str(exc))
            continue
        except OSError as exc:
            results.append(f"cannot write the bundle in {out_dir}: {exc.strerror}")
            continue
        results.append(issued.without_key())
    return results


def _stage(folder: str, key_pem: bytes | None, serial: str) -> None:
    """Stage a bundle's key and pending serial in a new folder; its certificate is written
    by the parent once the registry records it."""
    os.mkdir(folder, 0o777)  # public: the umask decides, as for every folder fleet makes
    write_staging(folder, key_pem, serial)
