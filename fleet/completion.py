"""Names for shell completion, read cheaply: device IDs and cloud names from the registry,
profile names from their folders.

Completion runs a fresh ``fleet`` for every Tab press, so this loads as little as it can: a
SQLite registry (the default) is read with the standard library's ``sqlite3``, read-only,
by the primary key's index (a prefix range, at most :data:`LIMIT` names); any other
database through SQLAlchemy Core alone (no ORM models, no migrations). Profile names are the
``*.toml`` files of the profile folders (nothing is parsed). Any failure (no registry yet,
a locked or foreign database) completes nothing rather than printing an error into the
user's shell.
"""

from __future__ import annotations

import contextlib
import sqlite3
from pathlib import Path
from urllib.parse import unquote

from fleet.resources import RESERVED_PROFILES, data_dir

LIMIT = 200  # names offered at once: more would only scroll the terminal
_QUERIES = {  # table, key column: what each kind of name is
    "device": ("device", "id"),
    "cloud": ("cloud", "name"),
}


def _sqlite_path(url: str) -> Path | None:
    """The file of a ``sqlite:///FILE`` URL (``None`` for another database or in-memory)."""
    for prefix in ("sqlite+pysqlite:///", "sqlite:///"):
        if url.startswith(prefix):
            path = unquote(url[len(prefix) :].partition("?")[0])
            return Path(path) if path and path != ":memory:" else None
    return None


def _upper_bound(prefix: str) -> str | None:
    """The least string above every string starting with ``prefix`` (``None``: no bound)."""
    if not prefix:
        return None
    return prefix[:-1] + chr(ord(prefix[-1]) + 1)


def registry_names(registry_url: str, kind: str, prefix: str = "") -> list[str]:
    """Names of ``kind`` (``"device"`` or ``"cloud"``) starting with ``prefix``, in key order,
    at most :data:`LIMIT`; ``[]`` when the registry cannot be read."""
    table, column = _QUERIES[kind]
    upper = _upper_bound(prefix)
    sql = f"SELECT {column} FROM {table} WHERE {column} >= :low"
    if upper is not None:
        sql += f" AND {column} < :high"
    sql += f" ORDER BY {column} LIMIT {LIMIT}"
    params = {"low": prefix, "high": upper}
    path = _sqlite_path(registry_url)
    try:
        if path is not None:
            if not path.is_file():
                return []
            with sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=1.0) as conn:
                return [row[0] for row in conn.execute(sql, params)]
        from sqlalchemy import create_engine, text

        engine = create_engine(registry_url)
        try:
            with engine.connect() as conn:
                return [row[0] for row in conn.execute(text(sql), params)]
        finally:
            engine.dispose()
    except Exception:  # completion never prints an error into the shell
        return []


def profile_names(home: Path, prefix: str = "") -> list[str]:
    """Profile names (the workspace's ``profiles/`` and fleet's own) starting with
    ``prefix``, sorted; the files are not read."""
    names: set[str] = set()
    folders = [home / "profiles"]
    with contextlib.suppress(FileNotFoundError):
        folders.append(data_dir("certs") / "profiles")
    for folder in folders:
        try:
            names.update(p.stem for p in folder.glob("*.toml") if p.stem.startswith(prefix))
        except OSError:
            continue
    return sorted(names - RESERVED_PROFILES)
