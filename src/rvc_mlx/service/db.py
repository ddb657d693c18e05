"""The embedded store: one SQLite file (``$RVC_MLX_HOME/rvc-mlx.sqlite3``) for jobs and presets.

WAL mode, so readers (progress streams) never block the writer; numbered migrations recorded in
``PRAGMA user_version``. Each call opens its own short-lived connection, so any thread may use a ``Database``.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from contextlib import contextmanager
from pathlib import Path

from ..errors import RvcMlxError
from ..hub import models_dir

DB_FILE = "rvc-mlx.sqlite3"
BUSY_TIMEOUT_S = 30

MIGRATIONS = (
    # 1: jobs and presets
    """
    CREATE TABLE jobs (
        id TEXT PRIMARY KEY,
        kind TEXT NOT NULL,
        state TEXT NOT NULL,
        request TEXT NOT NULL,
        progress TEXT NOT NULL DEFAULT '{}',
        log TEXT NOT NULL DEFAULT '',
        result TEXT,
        error TEXT,
        attempts INTEGER NOT NULL DEFAULT 0,
        created REAL NOT NULL,
        started REAL,
        finished REAL
    );
    CREATE INDEX jobs_state ON jobs (state, created);
    CREATE TABLE presets (
        name TEXT PRIMARY KEY,
        options TEXT NOT NULL,
        created REAL NOT NULL,
        updated REAL NOT NULL
    );
    CREATE TABLE voice_presets (
        voice TEXT PRIMARY KEY,
        preset TEXT NOT NULL REFERENCES presets (name) ON DELETE CASCADE
    );
    """,
)


class Database:
    def __init__(self, path: str | Path | None = None):
        self.path = Path(path) if path is not None else models_dir() / DB_FILE
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._migrate()

    @contextmanager
    def connect(self):
        """A connection in a transaction (committed on success, rolled back on error)."""
        try:
            conn = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_S, isolation_level=None)
        except sqlite3.Error as e:
            raise RvcMlxError(f"{self.path}: cannot open the database ({e})") from None
        conn.row_factory = sqlite3.Row
        conn.execute("PRAGMA foreign_keys = ON")
        try:
            conn.execute("BEGIN IMMEDIATE")
            yield conn
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        finally:
            conn.close()

    def _migrate(self) -> None:
        try:
            with self._lock, sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_S, isolation_level=None) as conn:
                conn.execute("PRAGMA journal_mode = WAL")
                version = conn.execute("PRAGMA user_version").fetchone()[0]
                if version > len(MIGRATIONS):
                    raise RvcMlxError(f"{self.path}: written by a newer rvc-mlx (schema {version})")
                for number in range(version, len(MIGRATIONS)):
                    conn.executescript(f"BEGIN; {MIGRATIONS[number]}; PRAGMA user_version = {number + 1}; COMMIT;")
        except sqlite3.DatabaseError as e:
            raise RvcMlxError(f"{self.path}: not a usable rvc-mlx database ({e})") from None


def dumps(value) -> str:
    return json.dumps(value, separators=(",", ":"))


def loads(text: str | None):
    return None if text is None else json.loads(text)
