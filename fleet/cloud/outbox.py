"""The cloud library API under its former name, for callers written before the split.

New code imports from the modules that define these: :mod:`fleet.cloud.clouds` (configure
clouds), :mod:`fleet.cloud.jobs` (queue jobs), :mod:`fleet.cloud.push` (push them),
:mod:`fleet.cloud.status` (sync, status) and :mod:`fleet.cloud.pacing` (policy).
"""

from __future__ import annotations

from fleet.cloud.clouds import add_cloud, check_cloud, list_clouds, remove_cloud, show_cloud
from fleet.cloud.pacing import PushPolicy
from fleet.cloud.push import PushReport, push, register
from fleet.cloud.status import SyncReport, iter_status, sync

__all__ = [
    "PushPolicy",
    "PushReport",
    "SyncReport",
    "add_cloud",
    "check_cloud",
    "iter_status",
    "list_clouds",
    "push",
    "register",
    "remove_cloud",
    "show_cloud",
    "sync",
]
