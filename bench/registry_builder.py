"""Build a large registry fast, with rows written the way fleet writes them.

Signing a million certificates takes longer than the benchmarks that need such a registry,
so a small pool of real certificates is signed by the workspace's issuing CA and each
device's certificate row reuses one of their PEMs under its own serial, fingerprint,
subject and dates. Everything else goes through fleet's own code: a ``fleet init``
workspace, ``write_session`` per batch (so the export cache is re-rendered and an audit
checkpoint signed per commit, as in ``fleet provision``), ``bulk_insert`` with the rows
``fleet provision`` builds (``certificate_values``, the ``device.add`` details) and
``audit.append_many``: the chain verifies. The device label index (``device_label``) is
filled by the registry's own triggers.

Each device gets two events: ``device.add``, then ``device.update`` (moved to another
rack) or, for 1 in 100, ``device.decommission`` (its certificate revoked); the rows hold
the state after both. Devices were provisioned in 100+ batches over the last ~2 years, with
730-day certificates: ~4 % expire within 30 days, ~1 % have expired while still active.

One core builds ~1,800-2,000 devices/s (100k in 56 s, 1M in 9.5 min on a busy 2-core
machine, 3.8 GB of SQLite); about a third each is SQLite with fleet's triggers, the export
cache's re-rendering, and building and hashing the rows.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
PASSPHRASE = "bench passphrase, not a secret"
BATCH = 10_000  # under the export cache's FULL_REFRESH, as a provisioning batch is
BATCHES = 100  # at least
POOL = 200  # real certificates signed; rows reuse their PEMs
VALIDITY = timedelta(days=730)
ISSUED_OVER = timedelta(days=735)  # oldest certificate issued this long (+5 days) ago
MODELS = (("p200", 40), ("p300", 30), ("p400", 15), ("g10", 10), ("s7", 5))
SITES = (("hh", 30), ("ber", 25), ("muc", 20), ("fra", 15), ("osl", 10))  # site=hh: 30 %
RACKS = 40  # rack=r07: 2.5 %
DECOMMISSION_EVERY = 100  # 1 %
LAYOUT = "everyday-1"  # change when the rows built change: cached registries are rebuilt


def _weighted(choices: tuple[tuple[str, int], ...]) -> list[str]:
    return [name for name, weight in choices for _ in range(weight)]


_MODEL_OF, _SITE_OF = _weighted(MODELS), _weighted(SITES)


def device_id(i: int) -> str:
    """The ID of device number ``i`` (ID order is creation order)."""
    return f"dev-{i:07d}"


def labels_of(i: int, moved: bool) -> dict[str, str]:
    """Device ``i``'s labels before (``moved=False``) and after its ``device.update``."""
    rack = (i * 7 + (1 if moved else 0)) % RACKS
    return {"site": _SITE_OF[(i * 37) % 100], "rack": f"r{rack:02d}"}


def child_env(db_url: str | None = None) -> dict[str, str]:
    """The environment for ``fleet`` child processes."""
    env = {**os.environ, "FLEET_CA_PASSPHRASE": PASSPHRASE, "FLEET_ACTOR": "bench"}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p)
    env.pop("FLEET_DATABASE_URL", None)
    if db_url:
        env["FLEET_DATABASE_URL"] = db_url
    return env


def empty_database(url: str) -> None:
    """Drop fleet's tables and trigger functions from the (PostgreSQL) database at ``url``."""
    from sqlalchemy import create_engine, inspect, text

    engine = create_engine(url)
    try:
        with engine.begin() as conn:
            for name in inspect(conn).get_table_names():
                conn.execute(text(f'DROP TABLE IF EXISTS "{name}" CASCADE'))
            if conn.dialect.name == "postgresql":
                for function in ("fleet_export_dirty", "fleet_device_label"):
                    conn.execute(text(f"DROP FUNCTION IF EXISTS {function}() CASCADE"))
    finally:
        engine.dispose()


def device_count(home: Path, db_url: str | None) -> int:
    """Devices in the registry of ``home`` (or at ``db_url``); -1 if there is none."""
    from sqlalchemy import create_engine, text
    from sqlalchemy.exc import DBAPIError

    url = db_url or f"sqlite:///{home / 'registry.db'}"
    if not db_url and not (home / "registry.db").exists():
        return -1
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            return int(conn.execute(text("SELECT count(*) FROM device")).scalar_one())
    except DBAPIError:
        return -1
    finally:
        engine.dispose()


@dataclass
class Built:
    """What :func:`ensure_registry` found or built."""

    devices: int
    events: int
    labels: int
    expiring_30: int  # active certificates expiring within 30 days (what cert list shows)
    seconds: float | None  # None: reused
    size_mib: float


def ensure_registry(
    home: Path,
    devices: int,
    *,
    db_url: str | None = None,
    rebuild: bool = False,
    progress: Callable[[str], None] = print,
) -> Built:
    """The registry of ``devices`` devices in ``home`` (or at ``db_url``): reused when it is
    there with that many devices, else (re)built (``fleet init``, then :func:`fill`)."""
    sys.path.insert(0, str(REPO))
    from fleet.registry.migrations import SCHEMA_HEAD

    start = time.perf_counter()
    marker = home / "bench-layout"
    # which registry this home holds: a new schema or layout is rebuilt, not reused (the URL
    # hashed: it may hold a password)
    url_hash = hashlib.sha256((db_url or "").encode()).hexdigest()[:16]
    signature = f"{LAYOUT} schema {SCHEMA_HEAD} {devices} {url_hash}"
    fresh = marker.exists() and marker.read_text() == signature
    if rebuild or not fresh or device_count(home, db_url) != devices:
        if home.exists():
            shutil.rmtree(home)
        if db_url:
            empty_database(db_url)
        home.mkdir(parents=True)
        init = subprocess.run(
            [sys.executable, "-m", "fleet", "--home", str(home), "init", "--name", "Bench"],
            env=child_env(db_url),
            capture_output=True,
            text=True,
        )
        if init.returncode:
            raise SystemExit(f"fleet init failed: {init.stderr.strip()}")
        fill(home, devices, db_url=db_url, progress=progress)
        marker.write_text(signature)
        seconds: float | None = time.perf_counter() - start
    else:
        seconds = None
    return _describe(home, db_url, seconds)


def _describe(home: Path, db_url: str | None, seconds: float | None) -> Built:
    sys.path.insert(0, str(REPO))
    from sqlalchemy import and_, create_engine, func, select, text

    from fleet.registry.models import Certificate

    url = db_url or f"sqlite:///{home / 'registry.db'}"
    engine = create_engine(url)
    try:
        with engine.connect() as conn:

            def one(query: str) -> int:
                return int(conn.execute(text(query)).scalar_one())

            found = one("SELECT count(*) FROM device")
            events = one("SELECT seq FROM audit_head")
            labels = one("SELECT count(*) FROM device_label")
            c, now = Certificate.__table__.c, datetime.now(UTC)  # type: ignore[attr-defined]
            window = and_(c.status == "active", c.not_after > now)
            window = and_(window, c.not_after <= now + timedelta(days=30))
            expiring = int(conn.execute(select(func.count()).where(window)).scalar_one())
            if conn.dialect.name == "postgresql":
                size = one("SELECT pg_database_size(current_database())") / 2**20
            else:
                size = sum(p.stat().st_size for p in home.glob("registry.db*")) / 2**20
    finally:
        engine.dispose()
    return Built(found, events, labels, expiring, seconds, size)


def fill(
    home: Path,
    devices: int,
    *,
    db_url: str | None = None,
    progress: Callable[[str], None] = print,
) -> None:
    """Add ``devices`` devices (numbered 0..N-1) with certificates and two audit events each
    to the initialised, empty workspace ``home``."""
    sys.path.insert(0, str(REPO))
    from fleet.pki import ca
    from fleet.pki.issue import certificate_values, issue_certificate
    from fleet.pki.profiles import load_profile
    from fleet.provision.commit import _device_added, bulk_insert
    from fleet.registry import audit
    from fleet.registry.db import write_session
    from fleet.registry.models import Certificate, Device
    from fleet.workspace import Workspace

    ws = Workspace(home=home, db_url=db_url)
    issuer = ca.load_issuer(home, PASSPHRASE)
    profile = load_profile("default", home)
    pool = [issue_certificate(issuer, f"pool-{k}", profile).without_key() for k in range(POOL)]
    engine = ws.open_registry()
    now = datetime.now(UTC).replace(microsecond=0)
    oldest = now - ISSUED_OVER - timedelta(days=5)
    # Provisioning ran in at least BATCHES batches over those two years (a batch shares one
    # time, as in `fleet provision`), so expiry dates spread alike at every N; each device's
    # second event came a day after its batch.
    size = min(BATCH, max(100, -(-devices // BATCHES)))
    count = -(-devices // size)
    over = int(ISSUED_OVER.total_seconds())
    device_t, cert_t = Device.__table__, Certificate.__table__  # type: ignore[attr-defined]
    started = time.perf_counter()
    for number, first in enumerate(range(0, devices, size)):
        added_at = oldest + timedelta(seconds=over * number // count)
        changed_at = added_at + timedelta(days=1)
        rows: list[dict[str, Any]] = []
        certs: list[dict[str, Any]] = []
        adds: list[audit.PendingEvent] = []
        later: list[audit.PendingEvent] = []
        for i in range(first, min(first + size, devices)):
            ident = device_id(i)
            sample = pool[i % POOL]
            cert = certificate_values(
                ident,
                dataclasses.replace(
                    sample,
                    serial=hashlib.sha1(b"%d" % i).hexdigest()[:32].lstrip("0"),
                    fingerprint_sha256=hashlib.sha256(b"fp%d" % i).hexdigest(),
                    subject=sample.subject.replace(f"CN=pool-{i % POOL}", f"CN={ident}"),
                    not_before=added_at - timedelta(seconds=60),
                    not_after=added_at + VALIDITY,
                ),
                "default",
                added_at,
            )
            device = {
                "id": ident,
                "model": _MODEL_OF[(i * 13) % 100],
                "serial": f"SN{i:09d}",
                "labels": labels_of(i, moved=False),
                "status": "active",
                "created_at": added_at,
                "updated_at": added_at,
                "decommissioned_at": None,
                "decommission_reason": None,
            }
            adds.append(_device_added(device, cert))
            later.append(_second_event(device, cert, i, changed_at))
            rows.append(device)
            certs.append(cert)
        with write_session(engine) as session:
            bulk_insert(session, device_t, rows)
            bulk_insert(session, cert_t, certs)

            def insert_rows(table: Any, batch: list[dict[str, Any]]) -> None:
                bulk_insert(session, table, batch)

            audit.append_many(session, adds, actor="bench", at=added_at, insert_rows=insert_rows)
            audit.append_many(session, later, actor="bench", at=changed_at, insert_rows=insert_rows)
        done = min(first + size, devices)
        if done % 100_000 < size or done == devices:
            rate = done / (time.perf_counter() - started)
            progress(f"  {done:,}/{devices:,} devices, {rate:,.0f}/s")
    ws.close()


def _second_event(device: dict[str, Any], cert: dict[str, Any], i: int, at: datetime) -> Any:
    """Device ``i``'s second event, changing ``device`` and ``cert`` to match: what
    ``fleet device decommission`` or ``fleet device update --label rack=...`` records."""
    from fleet.pki.issue import device_details
    from fleet.registry.audit import PendingEvent

    device["updated_at"] = at
    if i % DECOMMISSION_EVERY == DECOMMISSION_EVERY - 1:
        device.update(status="decommissioned", decommissioned_at=at, decommission_reason="retired")
        cert.update(status="revoked", revoked_at=at, revocation_reason="cessationOfOperation")
        details = {"reason": "retired", "revoked": [cert["serial"]], "status": "decommissioned"}
        return PendingEvent("device.decommission", device["id"], details)
    before = device_details(device)
    device["labels"] = labels_of(i, moved=True)
    after = device_details(device)
    changes = {k: {"from": before[k], "to": after[k]} for k in after if after[k] != before[k]}
    return PendingEvent("device.update", device["id"], {**after, "changes": changes})
