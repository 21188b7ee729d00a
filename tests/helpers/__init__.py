"""What tests share besides fixtures (those are in ``tests/conftest.py``).

Import from here (``from helpers import Cli, PASSPHRASE``): pytest puts ``tests/`` on
``sys.path``, so this package imports the same way under ``pytest`` and ``python -m pytest``.
"""

from helpers.cli import Cli, child_env, run_fleet
from helpers.clock import FrozenClock
from helpers.devices import add_devices, device_record
from helpers.env import IN_CI, PASSPHRASE, REPO, require_service
from helpers.sources import FLEET_DIR, modules_under
from helpers.state import SnapshotFn, snapshot, tree_digest

__all__ = [
    "FLEET_DIR",
    "IN_CI",
    "PASSPHRASE",
    "REPO",
    "Cli",
    "FrozenClock",
    "SnapshotFn",
    "add_devices",
    "child_env",
    "device_record",
    "modules_under",
    "require_service",
    "run_fleet",
    "snapshot",
    "tree_digest",
]
