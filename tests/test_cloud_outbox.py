"""The outbox: same-transaction enqueueing, offline queueing, backoff and Retry-After
timings (a fake timer and fleet.clock), the rate limiter, failure isolation, crash safety,
audit events. Registry tests run on SQLite and PostgreSQL; pushes go to a real local HTTP
registry."""

from __future__ import annotations

import bisect
import gc
import itertools
import random
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cloudserver import RegistryServer
from helpers import PASSPHRASE, add_devices, snapshot
from sqlmodel import select

from fleet import certs, clock, devices
from fleet.cloud import jobs as cloud_jobs
from fleet.cloud.base import retry_after_seconds
from fleet.cloud.clouds import add_cloud, list_clouds, remove_cloud, show_cloud
from fleet.cloud.models import CloudJob, CloudRegistration
from fleet.cloud.pacing import PushPolicy, RateLimiter, backoff_delay
from fleet.cloud.push import push, register
from fleet.cloud.status import sync
from fleet.cloud.views import RegisterResult, RemovedCloud
from fleet.errors import Conflict, NotFound
from fleet.pki.authority import init_workspace
from fleet.registry import audit
from fleet.registry.db import read_session, write_session
from fleet.statuses import JobState, RegistrationStatus
from fleet.workspace import Workspace

FAST = PushPolicy(base_delay=0.05, max_delay=0.2, max_wait=30.0)


class FakeClock:
    """A timer whose sleep advances time instantly (thread-safe); records every sleep. Its
    ``now`` moves with it: under :func:`fake_time` it is fleet's wall clock too."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._t = 1000.0
        # Starts at the real time: jobs queued just before are due, as in real use.
        self.start = datetime.now(UTC)
        self.sleeps: list[float] = []

    def monotonic(self) -> float:
        with self._lock:
            return self._t

    def now(self) -> datetime:
        with self._lock:
            return self.start + timedelta(seconds=self._t - 1000.0)

    def sleep(self, seconds: float) -> None:
        with self._lock:
            self.sleeps.append(seconds)
            self._t += max(0.0, seconds)


@contextmanager
def fake_time() -> Iterator[FakeClock]:
    """A FakeClock driving both the engine's waits and fleet.clock.now()."""
    fake = FakeClock()
    with clock.frozen(fake.now):
        yield fake


def add_http_cloud(ws: Workspace, server: RegistryServer, name: str = "reg", **kw: Any) -> None:
    add_cloud(ws, name, "http", {"url": server.url, "timeout": 2.0}, **kw)


def jobs(ws: Workspace) -> list[CloudJob]:
    with read_session(ws.open_registry()) as session:
        return list(session.exec(select(CloudJob).order_by(CloudJob.id)))  # type: ignore[arg-type]


def registrations(ws: Workspace) -> dict[str, CloudRegistration]:
    with read_session(ws.open_registry()) as session:
        return {r.device_id: r for r in session.exec(select(CloudRegistration))}


# --- same-transaction enqueueing -----------------------------------------------------------


def test_device_add_with_cloud_queues_in_its_transaction(
    ready_ws: Workspace, server: RegistryServer, tmp_path: Path
) -> None:
    add_http_cloud(ready_ws, server)
    add_devices(ready_ws, tmp_path, 1, clouds=("reg", "reg"))
    (job,) = jobs(ready_ws)
    assert (job.device_id, job.cloud, job.action, job.state) == (
        "dev-0000",
        "reg",
        "register",
        "pending",
    )
    assert registrations(ready_ws)["dev-0000"].status == "pending"


def test_failed_device_add_leaves_no_job(
    ready_ws: Workspace, server: RegistryServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    add_http_cloud(ready_ws, server)
    before = snapshot(ready_ws, tmp_path / "out")
    with pytest.raises(NotFound, match="no cloud named 'nope'"):
        devices.add_device(ready_ws, "d1", out_dir=tmp_path / "out", clouds=["reg", "nope"])
    assert snapshot(ready_ws, tmp_path / "out") == before

    def broken_append(*args: Any, **kwargs: Any) -> None:
        raise OSError("disk full")

    # A failure after the job row was written (the audit event) rolls it back too.
    monkeypatch.setattr(devices.audit, "append", broken_append)
    with pytest.raises(OSError, match="disk full"):
        devices.add_device(ready_ws, "d1", out_dir=tmp_path / "out", clouds=["reg"])
    assert snapshot(ready_ws, tmp_path / "out") == before
    assert jobs(ready_ws) == []


def test_provisioner_batch_api_rolls_back_with_the_batch(
    ready_ws: Workspace, server: RegistryServer, tmp_path: Path
) -> None:
    add_http_cloud(ready_ws, server)
    ids = add_devices(ready_ws, tmp_path, 3)
    engine = ready_ws.open_registry()
    with pytest.raises(RuntimeError), write_session(engine) as session:
        assert cloud_jobs.enqueue_register(session, ids, ["reg"]) == 3
        raise RuntimeError("batch failed")
    assert jobs(ready_ws) == []
    with write_session(engine) as session:
        assert cloud_jobs.enqueue_register(session, ids, ["reg"]) == 3
        # Already queued: not queued twice.
        assert cloud_jobs.enqueue_register(session, ids, ["reg"]) == 0
    assert len(jobs(ready_ws)) == 3
    with write_session(engine) as session, pytest.raises(NotFound):
        cloud_jobs.enqueue_register(session, ["ghost"], ["reg"])


def test_register_refuses_decommissioned_devices(
    ready_sqlite_ws: Workspace, server: RegistryServer, tmp_path: Path
) -> None:
    ws = ready_sqlite_ws
    add_http_cloud(ws, server)
    ids = add_devices(ws, tmp_path, 2)
    devices.decommission_device(ws, ids[0])
    with pytest.raises(Conflict, match="decommissioned"):
        cloud_jobs.queue_registrations(ws, "reg", [ids[0]])
    assert cloud_jobs.queue_registrations(ws, "reg", all_devices=True) == 1
    assert [j.device_id for j in jobs(ws)] == [ids[1]]


# --- offline ---------------------------------------------------------------------------------


def test_queue_only_then_sync(ready_ws: Workspace, server: RegistryServer, tmp_path: Path) -> None:
    add_http_cloud(ready_ws, server)
    ids = add_devices(ready_ws, tmp_path, 3)
    result = register(ready_ws, "reg", ids, queue_only=True)
    assert result == RegisterResult(queued=3, push=None)
    assert result.to_dict() == {"queued": 3, "push": None}
    assert server.state.requests == []
    assert {r.status for r in registrations(ready_ws).values()} == {"pending"}
    seen: list[tuple[int, int]] = []
    (report,) = sync(ready_ws, "reg", policy=FAST, progress=lambda d, t: seen.append((d, t)))
    assert (report.push.done, report.push.left) == (3, 0)
    assert set(server.state.devices) == set(ids)
    assert seen[0] == (0, 3) and seen[-1] == (3, 3)  # what the CLI's progress bar shows
    # Registering again changes nothing: already registered with this certificate.
    assert register(ready_ws, "reg", ids).queued == 0


def test_unreachable_server_leaves_jobs_for_a_later_sync(
    ready_ws: Workspace, tmp_path: Path
) -> None:
    down = RegistryServer()
    port = down.server_address[1]
    down.server_close()  # nothing listens on the port now
    add_http_cloud(ready_ws, down)
    ids = add_devices(ready_ws, tmp_path, 3, clouds=("reg",))
    quick = PushPolicy(base_delay=0.01, max_delay=0.05, max_wait=0.3)
    (report,) = push(ready_ws, "reg", policy=quick)
    assert (report.done, report.failed, report.left) == (0, 0, 3)
    regs = registrations(ready_ws)
    assert {r.status for r in regs.values()} == {"pending"}
    # a refused connection ends the push at once: the jobs stay queued, unattempted
    assert report.unreachable is not None and "cannot connect" in report.unreachable
    assert {(j.state, j.attempts) for j in jobs(ready_ws)} == {("pending", 0)}

    up = RegistryServer(port).start()  # the network is back
    try:
        (report2,) = sync(ready_ws, "reg", policy=FAST)
        assert (report2.push.done, report2.push.left) == (3, 0)
        assert dict(up.state.creations) == dict.fromkeys(ids, 1)
    finally:
        up.stop()


# --- timings with a fake clock ------------------------------------------------------------------


def test_retry_after_and_backoff_schedule(
    ready_sqlite_ws: Workspace, server: RegistryServer, tmp_path: Path
) -> None:
    ws = ready_sqlite_ws
    add_http_cloud(ws, server, unlimited_rate=True)
    ids = add_devices(ws, tmp_path, 2, clouds=("reg",))
    server.state.faults = {ids[0]: ["429:7"], ids[1]: ["500", "500", "500"]}
    policy = PushPolicy(base_delay=1.0, max_delay=60.0, max_wait=0.0)
    rng = random.Random(42)
    expected = random.Random(42)
    with fake_time() as timer:
        push(ws, "reg", policy=policy, timer=timer, rng=rng)
        by_device = {j.device_id: j for j in jobs(ws)}
        assert by_device[ids[0]].next_attempt_at == clock.now() + timedelta(seconds=7)
        first_delay = expected.uniform(0.0, 1.0)  # attempt 1: ceiling base * 2**0
        scheduled = by_device[ids[1]].next_attempt_at
        assert scheduled is not None
        assert (scheduled - clock.now()).total_seconds() == pytest.approx(first_delay, abs=1e-5)
        # With time to wait, the run sleeps until each job is due and finishes them all.
        policy = PushPolicy(base_delay=1.0, max_delay=60.0, max_wait=120.0)
        (report,) = push(ws, "reg", policy=policy, timer=timer, rng=rng)
    assert (report.done, report.left) == (2, 0)
    by_device = {j.device_id: j for j in jobs(ws)}
    assert by_device[ids[1]].attempts == 4
    assert sum(timer.sleeps) <= 7.0 + 2.0 + 4.0 + 1e-6  # Retry-After, then jittered ceilings


def test_backoff_delay_is_full_jitter_capped() -> None:
    rng = random.Random(1)
    for attempts in range(1, 12):
        ceiling = min(10.0, 0.5 * 2 ** (attempts - 1))
        values = [backoff_delay(attempts, 0.5, 10.0, rng) for _ in range(200)]
        assert all(0.0 <= v <= ceiling for v in values)
        assert max(values) > ceiling * 0.8  # spread over the whole range, not fixed


def test_retry_after_parsing() -> None:
    now = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)
    assert retry_after_seconds("120", now=now) == 120.0
    assert retry_after_seconds("Wed, 25 Nov 2026 12:00:30 GMT", now=now) == 30.0
    assert retry_after_seconds("Wed, 25 Nov 2026 11:00:00 GMT", now=now) == 0.0
    assert retry_after_seconds("soon", now=now) is None
    assert retry_after_seconds(None) is None


def test_rate_limiter_never_exceeds_the_limit() -> None:
    limiter = RateLimiter(50.0, FakeClock())
    slots: list[float] = []
    lock = threading.Lock()

    def worker() -> None:
        for _ in range(50):
            slot = limiter.acquire()
            with lock:
                slots.append(slot)

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    slots.sort()
    assert len(slots) == 400
    # Any k+1 consecutive starts span at least k intervals: no window beats the rate.
    gaps = [b - a for a, b in itertools.pairwise(slots)]
    assert min(gaps) >= 1 / 50 - 1e-9

    # ... and it stays close to the limit: 0.5% safety margin, no more. (One caller: the
    # fake clock advances shared time once per concurrent sleeper, real sleepers overlap.)
    alone = RateLimiter(50.0, FakeClock())
    grants = [alone.acquire() for _ in range(400)]
    assert grants[-1] - grants[0] == pytest.approx(399 / 50 * RateLimiter.SAFETY)


class LateClock(FakeClock):
    """A FakeClock whose sleeps land late, as on a loaded machine (a sleep overshoots, the
    woken thread waits for the GIL): the n-th sleep by ``lateness(n)`` seconds."""

    def __init__(self, lateness: Any) -> None:
        super().__init__()
        self.lateness = lateness

    def sleep(self, seconds: float) -> None:
        super().sleep(max(0.0, seconds) + self.lateness(len(self.sleeps)))


def busiest_window(times: list[float], width: float) -> int:
    """The most of ``times`` (sorted) within any window of ``width`` seconds."""
    return max(bisect.bisect_left(times, t + width) - i for i, t in enumerate(times))


def test_rate_limiter_holds_the_rate_when_wakeups_come_late() -> None:
    # Every wake-up half a millisecond late: the schedule moves on from the slot that was
    # due, so the delays do not add up (spacing from the late grant lost 10% at 200/s).
    limiter = RateLimiter(200.0, LateClock(lambda n: 0.0005))
    grants = [limiter.acquire() for _ in range(1001)]
    assert grants[-1] - grants[0] == pytest.approx(1000 * limiter.interval, abs=0.001)
    # 1 ms: the tolerance of RateLimiter
    assert min(b - a for a, b in itertools.pairwise(grants)) >= limiter.interval - 0.001 - 1e-9
    assert busiest_window(grants, 1.0) <= 200


def test_rate_limiter_stall_does_not_burst() -> None:
    # One wake-up 100 ms late (a long commit, a GC pause): the slots it missed are gone,
    # not fired together afterwards; later slots follow the schedule again.
    limiter = RateLimiter(200.0, LateClock(lambda n: 0.1 if n == 50 else 0.0))
    grants = [limiter.acquire() for _ in range(400)]
    gaps = [b - a for a, b in itertools.pairwise(grants)]
    assert max(gaps) == pytest.approx(limiter.interval + 0.1)
    assert min(gaps) >= limiter.interval - 0.001 - 1e-9
    assert busiest_window(grants, 1.0) <= 200
    assert busiest_window(grants, 0.05) <= 0.05 * 200 + 1


def test_push_respects_rate_limit_on_the_wire(
    ready_sqlite_ws: Workspace, server: RegistryServer, tmp_path: Path
) -> None:
    ws = ready_sqlite_ws
    add_http_cloud(ws, server, rate_per_second=20.0, concurrency=8)
    add_devices(ws, tmp_path, 21, clouds=("reg",))
    push(ws, "reg", policy=FAST)
    times = sorted(t for m, _, _, t in server.state.requests if m == "PUT")
    assert len(times) == 21
    assert times[-1] - times[0] >= 20 / 20.0 - 0.05  # 21 starts need >= 1 s at 20/s


def test_push_leaves_older_objects_out_of_full_collections(
    ready_sqlite_ws: Workspace, server: RegistryServer, tmp_path: Path
) -> None:
    # A full garbage collection stops every thread for as long as it traverses the process's
    # objects (the bench: ~100 ms, 20 slots of a 200/s push lost); during a push the objects
    # made before it are frozen out of them, and given back when it ends.
    ws = ready_sqlite_ws
    add_http_cloud(ws, server)
    add_devices(ws, tmp_path, 3, clouds=("reg",))
    before = gc.get_freeze_count()
    seen: list[int] = []
    (report,) = push(ws, "reg", policy=FAST, progress=lambda *_: seen.append(gc.get_freeze_count()))
    assert report.done == 3
    assert seen[-1] > before  # reported from inside the run
    assert gc.get_freeze_count() == before


# --- isolation, crash safety -----------------------------------------------------------------


def test_permanent_failure_does_not_block_others(
    ready_ws: Workspace, server: RegistryServer, tmp_path: Path
) -> None:
    add_http_cloud(ready_ws, server)
    ids = add_devices(ready_ws, tmp_path, 5, clouds=("reg",))
    server.state.faults[ids[0]] = ["400"]
    (report,) = push(ready_ws, "reg", policy=FAST)
    assert (report.done, report.failed) == (4, 1)
    assert report.failures[0]["device_id"] == ids[0]
    assert set(server.state.devices) == set(ids[1:])
    states = {j.device_id: j.state for j in jobs(ready_ws)}
    assert states[ids[0]] == "failed"


def test_crash_mid_push_loses_nothing(
    ready_ws: Workspace, server: RegistryServer, tmp_path: Path
) -> None:
    add_http_cloud(ready_ws, server, concurrency=1)
    ids = add_devices(ready_ws, tmp_path, 6, clouds=("reg",))

    def crash(done: int, total: int) -> None:
        if done >= 2:
            raise KeyboardInterrupt

    policy = PushPolicy(base_delay=0.05, max_delay=0.2, max_wait=5.0, commit_every=1)
    with pytest.raises(KeyboardInterrupt):
        push(ready_ws, "reg", policy=policy, progress=crash)
    done_before = [j.device_id for j in jobs(ready_ws) if j.state == "done"]
    assert len(done_before) >= 2
    (report,) = push(ready_ws, "reg", policy=policy)
    assert report.left == 0 and {j.state for j in jobs(ready_ws)} == {"done"}
    assert dict(server.state.creations) == dict.fromkeys(ids, 1)


# --- deregistration hooks --------------------------------------------------------------------


def test_revoke_deregisters_only_where_that_certificate_is_registered(
    ready_ws: Workspace, server: RegistryServer, tmp_path: Path
) -> None:
    add_http_cloud(ready_ws, server, name="a")
    add_http_cloud(ready_ws, server, name="b")
    ids = add_devices(ready_ws, tmp_path, 2, clouds=("a",))
    push(ready_ws, "a", policy=FAST)
    serial = registrations(ready_ws)[ids[0]].certificate_serial
    assert serial is not None
    certs.revoke_certificate(ready_ws, serial, reason="keyCompromise")
    open_jobs = [(j.device_id, j.cloud, j.action) for j in jobs(ready_ws) if j.state == "pending"]
    assert open_jobs == [(ids[0], "a", "deregister")]


def test_decommission_supersedes_a_queued_registration(
    ready_ws: Workspace, server: RegistryServer, tmp_path: Path
) -> None:
    add_http_cloud(ready_ws, server)
    (device_id,) = add_devices(ready_ws, tmp_path, 1, clouds=("reg",))
    devices.decommission_device(ready_ws, device_id)
    states = [(j.action, j.state, j.last_error) for j in jobs(ready_ws)]
    assert states == [
        ("register", "failed", "superseded by a deregistration"),
        ("deregister", "pending", None),
    ]
    (report,) = push(ready_ws, "reg", policy=FAST)
    assert (report.done, report.failed) == (1, 0)  # DELETE of an absent device is success
    assert registrations(ready_ws)[device_id].status == "deregistered"
    assert server.state.creations == {}


# --- clouds ----------------------------------------------------------------------------------


def test_remove_cloud_refuses_with_queued_jobs(
    ready_ws: Workspace, server: RegistryServer, tmp_path: Path
) -> None:
    add_http_cloud(ready_ws, server)
    add_devices(ready_ws, tmp_path, 2, clouds=("reg",))
    with pytest.raises(Conflict, match="2 queued job"):
        remove_cloud(ready_ws, "reg")
    result = remove_cloud(ready_ws, "reg", force=True)
    assert result == RemovedCloud(name="reg", dropped_jobs=2, dropped_registrations=2)
    assert list_clouds(ready_ws) == [] and jobs(ready_ws) == []


def test_clouds_are_typed_views(
    ready_ws: Workspace, server: RegistryServer, tmp_path: Path
) -> None:
    added = add_cloud(ready_ws, "reg", "http", {"url": server.url}, concurrency=3)
    assert (added.name, added.type, added.prepared, added.concurrency) == ("reg", "http", False, 3)
    assert added.options["url"] == server.url and added.rate_per_second is not None
    assert list_clouds(ready_ws) == [added]
    ids = add_devices(ready_ws, tmp_path, 2, clouds=("reg",))
    server.state.faults[ids[1]] = ["400"]
    push(ready_ws, "reg", policy=FAST)
    shown = show_cloud(ready_ws, "reg")
    assert shown.cloud == replace(added, prepared=True)
    assert shown.jobs == {JobState.DONE: 1, JobState.FAILED: 1}
    assert shown.registrations == {
        RegistrationStatus.REGISTERED: 1,
        RegistrationStatus.FAILED: 1,
    }
    flat = shown.to_dict()
    assert list(flat) == [*added.to_dict(), "jobs", "registrations"]
    assert flat["jobs"] == {"done": 1, "failed": 1} and flat["prepared"] is True


def test_audit_trail_records_cloud_events(
    ready_ws: Workspace, server: RegistryServer, tmp_path: Path
) -> None:
    add_http_cloud(ready_ws, server)
    ids = add_devices(ready_ws, tmp_path, 2, clouds=("reg",))
    server.state.faults[ids[1]] = ["400"]
    push(ready_ws, "reg", policy=FAST)
    remove_cloud(ready_ws, "reg", force=True)
    with read_session(ready_ws.open_registry()) as session:
        events = [audit.event_to_dict(e) for e in audit.iter_events(session)]
    actions = [(e["action"], e["target"]) for e in events]
    assert ("cloud.add", "reg") in actions
    assert ("cloud.prepare", "reg") in actions
    assert ("cloud.register", ids[0]) in actions
    assert ("cloud.failed", ids[1]) in actions
    assert actions[-1] == ("cloud.remove", "reg")
    failed = next(e for e in events if e["action"] == "cloud.failed")
    assert failed["details"]["cloud"] == "reg" and "HTTP 400" in failed["details"]["error"]
    with read_session(ready_ws.open_registry()) as session:
        assert audit.verify(session).ok


def test_add_cloud_validation(sqlite_ws: Workspace) -> None:
    init_workspace(sqlite_ws, name="T", passphrase=PASSPHRASE)
    from fleet.errors import InvalidInput

    with pytest.raises(InvalidInput, match="invalid cloud name"):
        add_cloud(sqlite_ws, "bad name", "http", {"url": "http://h/{id}"})
    with pytest.raises(InvalidInput, match="unknown cloud type 'azure'"):
        add_cloud(sqlite_ws, "x", "azure", {})
    with pytest.raises(InvalidInput, match="concurrency"):
        add_cloud(sqlite_ws, "x", "http", {"url": "http://h/{id}"}, concurrency=0)
    add_cloud(sqlite_ws, "x", "http", {"url": "http://h/{id}", "region": None})
    with pytest.raises(Conflict, match="already exists"):
        add_cloud(sqlite_ws, "x", "http", {"url": "http://h/{id}"})


def test_plugins_are_found_through_entry_points(monkeypatch: pytest.MonkeyPatch) -> None:
    from importlib.metadata import EntryPoint

    from fleet.cloud import plugins
    from fleet.cloud.http import HttpBackend
    from fleet.errors import InvalidInput

    assert {"aws-iot", "http"} <= set(plugins.available_types())
    assert plugins.load_backend_class("http") is HttpBackend
    broken = {
        "gone": EntryPoint("gone", "fleet_no_such_module:Backend", plugins.GROUP),
        "odd": EntryPoint("odd", "fleet.errors:InvalidInput", plugins.GROUP),
    }
    monkeypatch.setattr(plugins, "_entry_points", lambda: broken)
    with pytest.raises(InvalidInput, match="fleet_no_such_module is missing"):
        plugins.load_backend_class("gone")
    with pytest.raises(InvalidInput, match="is not a CloudBackend"):
        plugins.load_backend_class("odd")


def test_provision_with_cloud_queues_per_batch_and_sync_registers(
    ready_ws: Workspace, server: RegistryServer, tmp_path: Path
) -> None:
    """`fleet provision --cloud`: each new device's job is written with its batch; sync
    registers every one exactly once; a re-run queues nothing new."""
    from fleet.provision import provision

    add_http_cloud(ready_ws, server)
    manifest = tmp_path / "batch.csv"
    manifest.write_text("id,model\n" + "".join(f"pv-{i:03d},m1\n" for i in range(25)))
    summary = provision(
        ready_ws, manifest, out_dir=tmp_path / "ids", workers=1, passphrase=PASSPHRASE,
        clouds=["reg"],
    )  # fmt: skip
    assert summary.provisioned == 25
    assert {r.status for r in registrations(ready_ws).values()} == {"pending"}
    assert len(registrations(ready_ws)) == 25
    (report,) = sync(ready_ws, "reg", policy=FAST)
    assert (report.push.done, report.push.failed) == (25, 0)
    assert sorted(server.state.devices) == [f"pv-{i:03d}" for i in range(25)]
    again = provision(
        ready_ws, manifest, out_dir=tmp_path / "ids", workers=1, passphrase=PASSPHRASE,
        clouds=["reg"],
    )  # fmt: skip
    assert (again.provisioned, again.skipped) == (0, 25)
    with read_session(ready_ws.open_registry()) as session:
        assert len(list(session.exec(select(CloudJob)))) == 25


def test_provision_with_unknown_cloud_writes_nothing(
    ready_sqlite_ws: Workspace, tmp_path: Path
) -> None:
    from fleet.provision import provision

    manifest = tmp_path / "batch.csv"
    manifest.write_text("id\nq-1\n")
    before = snapshot(ready_sqlite_ws, tmp_path / "ids")
    with pytest.raises(NotFound, match="nowhere"):
        provision(
            ready_sqlite_ws, manifest, out_dir=tmp_path / "ids", passphrase=PASSPHRASE,
            clouds=["nowhere"],
        )  # fmt: skip
    assert snapshot(ready_sqlite_ws, tmp_path / "ids") == before


def test_backends_declare_their_options() -> None:
    from fleet.cloud import plugins
    from fleet.cloud.aws import AwsIotBackend
    from fleet.cloud.base import BackendOption
    from fleet.cloud.http import HttpBackend

    # Read from the light BACKEND_OPTIONS of the entry point's module: the class's own.
    assert plugins.declared_options("http") is HttpBackend.declared_options
    assert plugins.declared_options("aws-iot") is AwsIotBackend.declared_options
    header = next(o for o in HttpBackend.declared_options if o.name == "header")
    assert (header.flag, header.multiple, header.value_type) == ("--header", True, str)
    with pytest.raises(ValueError, match="lowercase"):
        BackendOption("Thing-Group", "x")
    with pytest.raises(ValueError, match="value_type"):
        BackendOption("when", "x", value_type=dict)
    with pytest.raises(ValueError, match="cannot be repeated"):
        BackendOption("loud", "x", value_type=bool, multiple=True)
