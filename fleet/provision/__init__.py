"""Bulk provisioning: turn a CSV or JSON Lines manifest into devices, identities and bundles.

Pipeline (one ``fleet provision`` process, driven by :mod:`.run`):

* the main process streams the file in groups of :data:`BATCH_SIZE` rows (:mod:`.source`),
  validates them (:mod:`.plan`: fields, duplicates inside the file, the registry, the bundle
  folder, CSR files), hands each group to a process pool and, in the order the groups were
  sent, commits what comes back;
* each pool worker (:mod:`.worker`; ``workers``, default: the number of cores) holds the
  issuing CA key in memory (handed over at start, never written to disk), generates keys or
  checks CSRs, signs certificates and stages each key and pending serial in a hidden folder
  ``OUT/.ID.tmp-PID-XXXXXX`` (so private keys never travel between processes; no
  certificate reaches the disk before it is recorded);
* :mod:`.commit` makes a batch durable in ONE registry transaction: bulk-insert the device
  and certificate rows, append one ``device.add`` audit event per device (one chain-head lock
  per batch), commit; then write each certificate into its staged folder and rename it into
  place (:mod:`.publish`); runs that share an output folder take turns at this step
  (``flock`` on ``OUT/.fleet-provision.lock``).

Crash safety (``kill -9`` at any moment; re-running the same command finishes the job):

* before the commit: only staging folders without certificates exist; a re-run deletes
  those whose process is gone;
* after the commit: the devices are registered; a re-run publishes their staged bundles
  (:func:`fleet.pki.bundles.recover`, also ``fleet doctor --fix``) and skips them;
* a bundle in place whose device is not registered (an older fleet killed between rename
  and commit) is recognised (its certificate names ID and was signed by this CA, and no
  registry row knows it) and replaced;
* ``manifest.csv`` (:mod:`.manifest`) is rebuilt at the end from the registry for every row
  of the file that is provisioned (now or by an earlier run) and renamed into place, so it
  never lacks a row.

Files are not fsynced: a killed process loses nothing the kernel already has, but a power
cut may lose bundles the registry (with its own durability settings) already records.
"""

from __future__ import annotations

from fleet.faults import FAULT_ENV, FAULT_POINTS
from fleet.provision.run import default_workers, provision
from fleet.provision.source import BATCH_SIZE, COLUMNS, FORMATS, RowError, detect_format
from fleet.provision.summary import Progress, ProvisionSummary

__all__ = [
    "BATCH_SIZE",
    "COLUMNS",
    "FAULT_ENV",
    "FAULT_POINTS",
    "FORMATS",
    "Progress",
    "ProvisionSummary",
    "RowError",
    "default_workers",
    "detect_format",
    "provision",
]
