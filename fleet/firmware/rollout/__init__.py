"""Phased firmware rollouts (docs/firmware.md, "Rollouts").

``create`` (options, selection at start) -> ``step`` (reads what devices report, notifies
pending devices of the current phase, advances, pauses or completes) -> ``targets`` (sets and
clears ``device_firmware.target_*``, audits them, queues ``firmware`` outbox jobs) ->
``control`` (pause, resume, abort, retry-failed) -> ``views`` (status counts, lists, a
device's history). ``machine`` holds the pure decisions the others apply.
"""
