"""One ``fleet provision`` run: read, plan, sign in the pool, commit, write the manifest."""

from __future__ import annotations

import os
import time
from collections import deque
from collections.abc import Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from sqlalchemy.engine import Engine

from fleet import clock
from fleet.cloud import jobs
from fleet.errors import InvalidInput
from fleet.faults import Faults
from fleet.pki import ca
from fleet.pki.bundles import PEM, BundleFormat, process_token, recover, registry_lookup
from fleet.pki.issue import IssuedCertificate
from fleet.pki.issuer import Issuer
from fleet.pki.keys import cert_pem
from fleet.pki.profiles import load_profile
from fleet.provision.commit import BatchCommitter, SignedRow
from fleet.provision.manifest import Report, write_manifest
from fleet.provision.plan import Planner, Task
from fleet.provision.publish import OutDir
from fleet.provision.source import Source, batches, open_source
from fleet.provision.summary import Progress, ProvisionSummary, Tally
from fleet.provision.worker import sign_chunk, start_pool
from fleet.registry.db import read_session
from fleet.workspace import Passphrase, Workspace, require_passphrase


def default_workers() -> int:
    """Worker processes used when none are asked for: one per core."""
    return os.cpu_count() or 1


def provision(
    ws: Workspace,
    path: Path,
    *,
    out_dir: Path,
    fmt: str | None = None,
    workers: int | None = None,
    profile: str = "default",
    dry_run: bool = False,
    report: Path | None = None,
    passphrase: Passphrase | None = None,
    progress: Progress | None = None,
    clouds: Sequence[str] = (),
    bundle_format: BundleFormat | None = None,
    strict: bool = False,
) -> ProvisionSummary:
    """Provision every device listed in ``path`` (CSV or JSON Lines); see :mod:`fleet.provision`.

    ``clouds``: queue each provisioned device's registration on these clouds, in the
    transaction of the batch that creates it (pushed by ``fleet cloud sync``).
    ``bundle_format`` p12: each bundle holds ``bundle.p12`` (0600) in place of ``key.pem``.

    Rows already provisioned are skipped; rows that cannot be provisioned are listed in
    ``report`` (CSV ``line,id,error``) and counted as failed while the others go ahead.
    A CSV's delimiter (``,``, ``;``, tab) is sniffed; unknown columns are ignored and named
    in ``summary.warnings`` (refused with ``strict``); a fleet export CSV is read with its
    columns mapped. Problems with the whole request (unreadable file, unknown columns with
    ``strict``, unknown profile, wrong passphrase) raise before anything is written. Example::

        provision(Workspace(Path("~/fleet")), Path("batch-7.csv"), out_dir=Path("ids"))
    """
    started = time.monotonic()
    source = open_source(path, fmt, strict=strict)
    chosen_workers = default_workers() if workers is None else workers
    if chosen_workers < 1:
        raise InvalidInput("--workers must be at least 1")
    default_profile = load_profile(profile, ws.home)
    if out_dir.exists() and not out_dir.is_dir():
        raise InvalidInput(f"--out {out_dir} is not a folder")
    engine = ws.open_registry()
    if clouds:
        with read_session(engine) as session:
            clouds = jobs.validate_clouds_exist(session, clouds)
    issuing_cert, root = ca.load_ca_certificates(ws.home)
    chosen_format = PEM if dry_run or bundle_format is None else bundle_format.ready()
    issuer = None if dry_run else ca.load_issuer(ws.home, require_passphrase(passphrase))
    summary = ProvisionSummary(
        dry_run=dry_run,
        workers=0 if dry_run else chosen_workers,
        out_dir=str(out_dir),
        report=str(report) if report is not None else None,
    )
    if source.ignored:
        shown = ", ".join(repr(c) for c in source.ignored)
        summary.warnings.append(
            f"{path}: ignored unknown column(s) {shown} (--strict refuses them)"
        )
    sink = Report(report)
    tally = Tally(summary, sink, progress, source.total)
    out = OutDir(
        out_dir,
        process_token(),
        issuing_cert,
        cert_pem(issuing_cert) + cert_pem(root),
        chosen_format,
    )
    planner = Planner(ws.home, engine, source.path, out, default_profile, tally)
    run = _Run(engine, source, out, planner, tally)
    try:
        if issuer is None:
            run.dry_run()
        else:
            run.provision(issuer, chosen_workers, list(clouds))
        sink.finish()
    except BaseException:
        sink.abort()
        raise
    finally:
        planner.close()
    summary.errors = list(sink.kept)
    summary.elapsed_seconds = time.monotonic() - started
    return summary


@dataclass
class _Batch:
    """A task sent to the pool, in the order batches are committed."""

    task: Task
    now: datetime
    future: Future[list[IssuedCertificate | str]]


class _Run:
    """Drives the pipeline: the planner validates, the pool signs, the committer commits."""

    def __init__(
        self, engine: Engine, source: Source, out: OutDir, planner: Planner, tally: Tally
    ) -> None:
        self.engine = engine
        self.source = source
        self.out = out
        self.planner = planner
        self.tally = tally
        self.faults = Faults()

    def dry_run(self) -> None:
        """Validate every row; write nothing but the report."""
        self.tally.tick()
        for group in batches(self.source):
            ready = self.planner.prepare(group, dry_run=True)
            self.tally.would_provision(len(ready))
            self.tally.tick()

    def provision(self, issuer: Issuer, workers: int, clouds: list[str]) -> None:
        """Provision every row: at most ``2 x workers`` batches in flight, committed in order."""
        self.out.path.mkdir(parents=True, exist_ok=True)
        lookup = registry_lookup(self.engine)
        # what killed runs left (published in this run's bundle format)
        recover(self.out.path, lookup, self.out.chain_pem, bundle_format=self.out.bundle_format)
        self.out.remove_stale_staging()
        planner = self.planner
        committer = BatchCommitter(
            self.engine, self.out, self.tally, planner.seen, self.faults, clouds
        )
        pool = start_pool(issuer, workers)
        inflight: deque[_Batch] = deque()
        try:
            pool.submit(int).result()  # start the workers now, before any other thread runs
            self.tally.tick()
            for group in batches(self.source):
                ready = planner.prepare(group, dry_run=False)
                batch = self._submit(pool, planner.task(ready)) if ready else None
                if batch is not None:
                    inflight.append(batch)
                while len(inflight) > 2 * workers:
                    self._finish(committer, inflight.popleft())
                self.tally.tick()
            while inflight:
                self._finish(committer, inflight.popleft())
            manifest = write_manifest(
                self.out.path, self.out.token, self.engine, planner.seen, self.faults
            )
            self.tally.summary.manifest = str(manifest)
        except BaseException:
            for batch in inflight:
                batch.future.cancel()
            pool.shutdown(wait=True, cancel_futures=True)
            self.out.remove_own_staging(lookup)
            raise
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
            self.out.close()

    def _submit(self, pool: ProcessPoolExecutor, task: Task) -> _Batch | None:
        if not task.task_rows:
            return None
        now = clock.now()
        future = pool.submit(
            sign_chunk, task.task_rows, task.profiles, now, self.out.text, self.out.token
        )
        return _Batch(task, now, future)

    def _finish(self, committer: BatchCommitter, batch: _Batch) -> None:
        """Wait for a batch's signatures; commit the rows that were signed."""
        task, results = batch.task, batch.future.result()
        signed: list[SignedRow] = []
        for row, task_row, result in zip(task.rows, task.task_rows, results, strict=True):
            if isinstance(result, str):
                self.tally.fail_row(row, result)
            else:
                signed.append(SignedRow(row, task_row.profile, result))
        self.faults.hit("after-stage")
        if signed:
            committer.commit(signed, batch.now)
        self.tally.tick()
