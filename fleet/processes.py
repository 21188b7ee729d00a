"""Worker processes: how fleet starts them (provisioning's signers, ingest's parser)."""

from __future__ import annotations

import multiprocessing
from multiprocessing.context import BaseContext


def worker_context() -> BaseContext:
    """The multiprocessing context for fleet's workers: fork where the platform has it, so a
    worker starts without re-importing fleet and inherits what the parent holds in memory
    (spawn would re-run ``python -m fleet``'s entry point and pickle that state instead)."""
    methods = multiprocessing.get_all_start_methods()
    return multiprocessing.get_context("fork" if "fork" in methods else "spawn")
