"""The rollout library in one import (the CLI's twin): see fleet/firmware/rollout/."""

from __future__ import annotations

from fleet.firmware.rollout.control import (
    abort_rollout,
    pause_rollout,
    resume_rollout,
    retry_failed,
)
from fleet.firmware.rollout.create import RolloutSpec, create_rollout, start_rollout
from fleet.firmware.rollout.step import StepReport, step
from fleet.firmware.rollout.views import (
    RolloutView,
    count_rollouts,
    device_history,
    iter_rollouts,
    rollout_status,
)

__all__ = [
    "RolloutSpec",
    "RolloutView",
    "StepReport",
    "abort_rollout",
    "count_rollouts",
    "create_rollout",
    "device_history",
    "iter_rollouts",
    "pause_rollout",
    "resume_rollout",
    "retry_failed",
    "rollout_status",
    "start_rollout",
    "step",
]
