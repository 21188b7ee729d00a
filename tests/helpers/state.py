"""What a failed command must leave untouched, captured to compare before and after."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, inspect, text

from fleet.workspace import Workspace

SnapshotFn = Callable[..., dict[str, Any]]


def snapshot(ws: Workspace, *dirs: Path) -> dict[str, Any]:
    """Everything a failed command must leave untouched: every table's rows, every file."""
    state: dict[str, Any] = {}
    engine = create_engine(ws.registry_url)
    try:
        names = inspect(engine).get_table_names()
        with engine.connect() as conn:
            for name in sorted(names):
                rows = conn.execute(text(f'SELECT * FROM "{name}"')).all()
                state[f"table:{name}"] = sorted(repr(tuple(r)) for r in rows)
    finally:
        engine.dispose()
    for folder in (ws.home / "ca", *dirs):
        state[f"dir:{folder}"] = tree_digest(folder)
    return state


def tree_digest(folder: Path) -> dict[str, str]:
    """Relative path -> SHA-256 (files) or mode (folders), for every entry under ``folder``."""
    if not folder.exists():
        return {}
    result: dict[str, str] = {}
    for path in sorted(folder.rglob("*")):
        key = str(path.relative_to(folder))
        if path.is_file():
            result[key] = hashlib.sha256(path.read_bytes()).hexdigest()
        else:
            result[key] = oct(path.stat().st_mode)
    return result
