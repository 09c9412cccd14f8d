"""The registry's SQLite file: its one table (a column per thing a run records), schema upgrades in place, and
the journal mode that suits the disk it lies on; every write is one IMMEDIATE transaction."""

from __future__ import annotations

import sqlite3
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from lorafit.core.paths import registry_path

COLUMNS = {  # name -> SQL type; *_json columns hold JSON text
    "name": "TEXT",
    "run_dir": "TEXT NOT NULL UNIQUE",
    "status": "TEXT NOT NULL",
    "exit_code": "INTEGER",
    "message": "TEXT",
    "base_model": "TEXT",
    "method": "TEXT",
    "objective": "TEXT",  # training.objective: sft, dpo, kto, orpo, simpo
    "parent": "TEXT",  # adapter.init_from: the run whose adapter this one continued
    "parent_adapter_sha256": "TEXT",  # that adapter's sha256 when this run started from it
    "reference": "TEXT",  # preference.reference: init, base or a run directory
    "r": "INTEGER",
    "alpha": "REAL",
    "lr": "REAL",
    "batch_size": "INTEGER",
    "grad_accum": "INTEGER",
    "max_steps": "INTEGER",
    "epochs": "REAL",
    "max_length": "INTEGER",
    "seed": "INTEGER",
    "steps": "INTEGER",
    "tokens": "INTEGER",
    "train_rows": "INTEGER",
    "eval_rows": "INTEGER",
    "data_files_json": "TEXT",
    "train_loss": "REAL",
    "eval_loss_before": "REAL",
    "eval_loss": "REAL",
    "eval_metrics_json": "TEXT",
    "merged": "TEXT",
    "exports_json": "TEXT",
    "started": "TEXT",
    "finished": "TEXT",
    "train_seconds": "REAL",
    "tokens_per_s": "REAL",
    "peak_memory_mb": "REAL",
    "git_sha": "TEXT",
    "versions_json": "TEXT",
    "tags_json": "TEXT",
    "recipe": "TEXT",
    "host": "TEXT",
    "pid": "INTEGER",
    "created": "TEXT",
    "updated": "TEXT",
}
SCHEMA_VERSION = 2  # 2: the lineage columns (objective, parent, parent_adapter_sha256, reference)


NETWORK_FILESYSTEMS = {"nfs", "nfs4", "cifs", "smb3", "smbfs", "lustre", "gpfs", "beegfs", "ceph", "fuse.sshfs", "9p"}


def on_network_filesystem(path: Path) -> bool:
    """Whether `path` lies on a shared filesystem (a cluster's NFS home): /proc/mounts, longest mount point."""
    try:
        mounts = [line.split()[1:3] for line in Path("/proc/mounts").read_text().splitlines()]
    except OSError:
        return False  # not Linux: assume a local disk
    path = str(Path(path).resolve())
    best = max(
        (m for m in mounts if path == m[0] or path.startswith(m[0].rstrip("/") + "/")),
        key=lambda m: len(m[0]),
        default=None,
    )
    return best is not None and best[1] in NETWORK_FILESYSTEMS


def connect(path: Path | None = None) -> sqlite3.Connection:
    """Open (and create) the registry: 30 s busy timeout, transactions managed explicitly, WAL journal on a
    local disk. SQLite's WAL needs shared memory between processes, which a network filesystem does not give
    (jobs on two nodes writing one NFS home): there it keeps the rollback journal, which needs only file locks."""
    path = Path(path) if path else registry_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(path, timeout=30.0, isolation_level=None)
    conn.row_factory = sqlite3.Row
    conn.execute("PRAGMA busy_timeout = 30000")
    _set_journal_mode(conn, "delete" if on_network_filesystem(path.parent) else "wal")
    conn.execute("PRAGMA synchronous = NORMAL")
    if conn.execute("PRAGMA user_version").fetchone()[0] < SCHEMA_VERSION:
        with transaction(conn):
            cols = ", ".join(f"{k} {v}" for k, v in COLUMNS.items())
            conn.execute(f"CREATE TABLE IF NOT EXISTS runs (id INTEGER PRIMARY KEY, {cols})")
            conn.execute("CREATE INDEX IF NOT EXISTS runs_name ON runs(name)")
            # an older registry: the columns added since, empty until its runs are synced (`lorafit runs import`)
            have = {row["name"] for row in conn.execute("PRAGMA table_info(runs)")}
            for name, kind in COLUMNS.items():
                if name not in have:
                    conn.execute(f"ALTER TABLE runs ADD COLUMN {name} {kind}")
            conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
    return conn


def _set_journal_mode(conn: sqlite3.Connection, mode: str) -> None:
    """Switch only when needed (the mode is stored in the file), retrying a lock: SQLite answers a journal-mode
    change or a WAL open that races another process's with "database is locked" at once, without its busy wait."""
    deadline = time.monotonic() + 30
    while True:
        try:
            if conn.execute("PRAGMA journal_mode").fetchone()[0].lower() != mode:
                conn.execute(f"PRAGMA journal_mode = {mode}")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.02)


@contextmanager
def transaction(conn: sqlite3.Connection) -> Iterator[None]:
    conn.execute("BEGIN IMMEDIATE")  # take the write lock now, so read-then-write cannot race another process
    try:
        yield
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")
