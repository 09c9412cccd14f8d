"""The run registry: one SQLite row per run directory, so a team can find which adapter came from what.

Run directories stay the source of truth (a row can always be rebuilt with `sync_from_dir`); the
registry only indexes them. SQLite in WAL mode with a busy timeout, every write one IMMEDIATE
transaction: concurrent runs queue for the write lock instead of corrupting the file, and a run that
crashes leaves the last committed row (status `running`, with its pid, so `runs list` can tell).
"""

from __future__ import annotations

import json
import os
import socket
import sqlite3
import time
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator

import yaml

from lorafit import runs
from lorafit.core.errors import STATUS_EXIT_CODES, LorafitError, MissingError, RecipeError, run_status_of
from lorafit.core.paths import registry_path
from lorafit.runs import run_record
from lorafit.runs.registry_db import COLUMNS, connect, transaction

if TYPE_CHECKING:
    from lorafit.recipe import Recipe

STATUSES = tuple(STATUS_EXIT_CODES)
EVAL_JSON = "eval.json"  # written by `lorafit eval` (lorafit.evaluate.EVAL_JSON; not imported: it pulls in torch)


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


def _key(run_dir: Path | str) -> str:
    return str(Path(run_dir).expanduser().resolve())


def _upsert(run_dir: Path | str, fields: dict[str, Any], keep_terminal: bool = False) -> dict:
    """Insert or update one row in a single transaction; JSON columns take Python values."""
    key = _key(run_dir)
    values = {
        k: (json.dumps(v, default=str) if k.endswith("_json") and v is not None else v)
        for k, v in fields.items()
        if k in COLUMNS
    }
    conn = connect()
    try:
        with transaction(conn):
            row = conn.execute("SELECT status FROM runs WHERE run_dir = ?", (key,)).fetchone()
            if keep_terminal and row and row["status"] != "running" and values.get("status") == "running":
                values = {k: v for k, v in values.items() if k not in ("status", "exit_code", "message")}
            values["updated"] = _now()
            if row is None:
                values = {
                    "name": Path(key).name,
                    "status": "running",
                    **values,
                    "run_dir": key,
                    "created": values["updated"],
                }
                conn.execute(
                    f"INSERT INTO runs ({', '.join(values)}) VALUES ({', '.join('?' * len(values))})",
                    list(values.values()),
                )
            else:
                conn.execute(
                    f"UPDATE runs SET {', '.join(f'{k} = ?' for k in values)} WHERE run_dir = ?",
                    [*values.values(), key],
                )
            return _decode(conn.execute("SELECT * FROM runs WHERE run_dir = ?", (key,)).fetchone())
    finally:
        conn.close()


def _decode(row: sqlite3.Row) -> dict:
    out = {}
    for k in row.keys():
        v = row[k]
        if k.endswith("_json"):
            out[k.removesuffix("_json")] = json.loads(v) if v else None
        else:
            out[k] = v
    return out


# ---------------------------------------------------------------- what a row says about a run


def _from_recipe(data: dict, recipe_text: str | None = None) -> dict:
    """Columns from a recipe as a mapping (read leniently: an imported run may come from another lorafit version)."""
    sec = lambda name: data.get(name) if isinstance(data.get(name), dict) else {}  # noqa: E731
    model, adapter, training, output = sec("model"), sec("adapter"), sec("training"), sec("output")
    return {
        "base_model": model.get("name"),
        "method": adapter.get("method"),
        "objective": training.get("objective", "sft"),  # recipes from before the preference objectives are SFT
        "parent": adapter.get("init_from"),
        "parent_adapter_sha256": adapter.get("init_sha256"),
        "reference": sec("preference").get("reference"),
        "r": adapter.get("r"),
        "alpha": adapter.get("alpha"),
        "lr": training.get("lr"),
        "batch_size": training.get("batch_size"),
        "grad_accum": training.get("grad_accum"),
        "max_steps": training.get("max_steps"),
        "epochs": training.get("epochs"),
        "max_length": training.get("max_length"),
        "seed": training.get("seed"),
        "tags_json": [t for t in output.get("tags") or [] if isinstance(t, str)]
        if isinstance(output.get("tags"), list)
        else [],
        "recipe": recipe_text if recipe_text is not None else yaml.safe_dump(data, sort_keys=False),
    }


def _from_run_json(record: dict) -> dict:
    record = run_record.migrate(record)
    sec = lambda name: record.get(name) if isinstance(record.get(name), dict) else {}  # noqa: E731 - lenient, as _from_recipe
    train, data, ev, lineage = sec("train"), sec("data"), sec("eval"), sec("lineage")
    exports = {name: report.get("path") for name, report in sec("exports").items() if isinstance(report, dict)}
    status = record.get("status")
    status = status if isinstance(status, str) else None
    out = {
        "status": status if status in STATUSES else None,
        "exit_code": STATUS_EXIT_CODES.get(status),
        "base_model": sec("model").get("name"),
        "method": sec("adapter").get("method"),
        "parent": lineage.get("parent"),
        "parent_adapter_sha256": lineage.get("parent_adapter_sha256"),
        "steps": train.get("steps"),
        "tokens": train.get("tokens"),
        "train_seconds": train.get("seconds"),
        "tokens_per_s": train.get("tokens_per_s"),
        "peak_memory_mb": train.get("peak_memory_mb"),
        "train_loss": train.get("last_logged_loss", train.get("train_loss")),
        "data_files_json": data.get("files"),
        "train_rows": data.get("train_rows"),
        "eval_rows": data.get("eval_rows"),
        "eval_loss_before": ev.get("loss_before", record.get("eval_loss_before")),
        "eval_loss": ev.get("loss_after"),
        "merged": sec("merge").get("path"),
        "exports_json": exports or None,
        "started": record.get("started"),
        "finished": record.get("finished"),
        "git_sha": record.get("git_sha"),
        "versions_json": record.get("versions"),
    }
    if status == "interrupted":
        out["message"] = (
            f"stopped after step {record.get('interrupted_at_step')}; checkpoint {record.get('checkpoint')}"
        )
    if status == "diverged":
        out["message"] = (record.get("divergence") or {}).get(
            "message"
        ) or f"loss or gradient norm became NaN/inf at step {record.get('failed_step')}"
    if status == runs.WORSE_THAN_BASE:
        out["message"] = f"held-out loss {ev.get('loss_before')} -> {ev.get('loss_after')}: worse than the base"
    return {k: v for k, v in out.items() if v is not None}


def read_dir(run_dir: Path) -> dict:
    """Every column a run directory can tell: recipe.yaml, run.json, eval.json."""
    run_dir = Path(run_dir)
    fields: dict[str, Any] = {"name": run_dir.resolve().name}
    recipe_file = run_dir / runs.RECIPE
    if recipe_file.is_file():
        from lorafit.recipe import parse_yaml_text

        text = runs.read_recipe_text(recipe_file)
        data = parse_yaml_text(text, str(recipe_file))
        if isinstance(data, dict):
            fields.update({k: v for k, v in _from_recipe(data, text).items() if v is not None})
    fields.update(_from_run_json(runs.read_run_json(run_dir)))
    eval_file = run_dir / EVAL_JSON
    if eval_file.is_file():
        report = runs.read_json_file(eval_file)
        fields["eval_metrics_json"] = eval_summary(report) if isinstance(report, dict) else None
    # Columns hold what SQLite can: a hand-edited file's list where a number belongs is left out, not a crash.
    return {k: v for k, v in fields.items() if k.endswith("_json") or _storable(v)}


def _storable(value: Any) -> bool:
    return value is None or isinstance(value, (str, float)) or (isinstance(value, int) and -(2**63) <= value < 2**63)


# ---------------------------------------------------------------- the API train/eval/merge/export call


def start(recipe: Recipe, run_dir: Path) -> dict:
    """A run begins (or resumes): status running, its settings, this process as its owner."""
    fields = _from_recipe(recipe.model_dump(mode="json"), recipe.to_yaml())
    fields.update(
        status="running",
        exit_code=None,
        message=None,
        finished=None,
        host=socket.gethostname(),
        pid=os.getpid(),
        started=_now(),
    )
    return _upsert(run_dir, fields)


def finish(run_dir: Path, record: dict | None = None) -> dict:
    """A run ended (exit code 0): everything run.json (or `record`, the final run.json) says; status finished, or
    worse_than_base when run.json says so."""
    fields = read_dir(run_dir)
    if record is not None:
        fields.update(_from_run_json(record))
    if fields.get("status") == runs.WORSE_THAN_BASE:
        fields.update(exit_code=0)
    else:
        fields.update(status="finished", exit_code=0, message=None)
    return _upsert(run_dir, fields)


def fail(run_dir: Path, status: str, exit_code: int, message: str) -> dict:
    """A run ended badly (failed, interrupted or diverged): what the run dir holds so far, and why it stopped."""
    if status not in ("failed", "interrupted", "diverged"):
        raise ValueError(f"fail() takes failed, interrupted or diverged, not {status!r}")
    fields = read_dir(run_dir)
    short = (
        "\n".join(message.strip().splitlines()[:4])[:1000] if message else None
    )  # the what and where, not a traceback
    fields.update(status=status, exit_code=exit_code, message=short, finished=_now())
    return _upsert(run_dir, fields)


def sync_from_dir(run_dir: Path, export: dict | None = None) -> dict:
    """Re-read a run directory into its row (import, and after eval / merge / export); `export`: {format: path}."""
    run_dir = Path(run_dir)
    if not (run_dir / runs.RECIPE).is_file() and not (run_dir / runs.RUN_JSON).is_file():
        raise MissingError(f"{run_dir} is not a lorafit run directory (no {runs.RECIPE} or {runs.RUN_JSON})")
    fields = read_dir(run_dir)
    if export:
        existing = _find(_key(run_dir))
        fields["exports_json"] = {
            **((existing or {}).get("exports") or {}),
            **(fields.get("exports_json") or {}),
            **export,
        }
    return _upsert(run_dir, fields, keep_terminal=True)


def safe_sync(run_dir: Path, warn: Callable[[str], None] = print, export: dict | None = None) -> None:
    """`sync_from_dir` after eval / merge / export: a registry problem is one warning, the command still succeeds."""
    try:
        sync_from_dir(run_dir, export=export)
    except (sqlite3.Error, OSError, ValueError, LorafitError) as exc:
        warn(f"run registry {registry_path()}: {exc} (the command itself succeeded)")


@contextmanager
def recording(recipe: Recipe, run_dir: Path, warn: Callable[[str], None] = print) -> Iterator[None]:
    """Keep a training run's row in step: running, then finished or why it stopped.

    The registry is an index, never a reason for a run to fail: its own errors become one warning."""

    def guarded(fn: Callable[[], Any]) -> None:
        try:
            fn()
        except (sqlite3.Error, OSError, ValueError) as exc:
            warn(f"run registry {registry_path()}: {exc} (the run itself is unaffected)")

    guarded(lambda: start(recipe, run_dir))
    try:
        yield
    except BaseException as exc:
        status, code = run_status_of(exc)
        message = getattr(exc, "message", None) or str(exc) or type(exc).__name__
        guarded(lambda: fail(run_dir, status, code, message))
        raise
    guarded(lambda: finish(run_dir))


# ---------------------------------------------------------------- reading


def _find(key: str) -> dict | None:
    conn = connect()
    try:
        row = conn.execute("SELECT * FROM runs WHERE run_dir = ?", (key,)).fetchone()
        return _decode(row) if row else None
    finally:
        conn.close()


def alive(row: dict) -> bool | None:
    """For a `running` row: is its process still there? None when it ran on another host (unknown)."""
    if row.get("host") != socket.gethostname() or not row.get("pid"):
        return None
    try:
        os.kill(int(row["pid"]), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def list_runs(
    model: str | None = None,
    method: str | None = None,
    status: str | None = None,
    tag: str | None = None,
    objective: str | None = None,
) -> list[dict]:
    """Rows, newest first; `model` matches a substring of the base model."""
    where, args = [], []
    if model:
        where.append("base_model LIKE ?")
        args.append(f"%{model}%")
    for column, value in (("method", method), ("status", status), ("objective", objective)):
        if value:
            where.append(f"{column} = ?")
            args.append(value)
    conn = connect()
    try:
        sql = (
            "SELECT * FROM runs"
            + (f" WHERE {' AND '.join(where)}" if where else "")
            + " ORDER BY created DESC, id DESC"
        )
        rows = [_decode(r) for r in conn.execute(sql, args)]
    finally:
        conn.close()
    return [r for r in rows if not tag or tag in (r.get("tags") or [])]


def get(ref: str) -> dict:
    """A run by its registry id, its run directory, or its name (which must then be unique)."""
    ref = str(ref)
    conn = connect()
    try:
        rows = []
        if ref.lstrip("#").isdigit():
            rows = conn.execute("SELECT * FROM runs WHERE id = ?", (int(ref.lstrip("#")),)).fetchall()
        if not rows:
            rows = conn.execute("SELECT * FROM runs WHERE run_dir = ?", (_key(ref),)).fetchall()
        if not rows:
            rows = conn.execute("SELECT * FROM runs WHERE name = ? ORDER BY id", (ref,)).fetchall()
    finally:
        conn.close()
    if not rows:
        raise MissingError(
            f"no run {ref!r} in the registry {registry_path()}",
            "see `lorafit runs list`, or add it: lorafit runs import RUN_DIR",
        )
    if len(rows) > 1:
        dirs = ", ".join(f"#{r['id']} {r['run_dir']}" for r in rows)
        raise RecipeError(f"{len(rows)} runs are named {ref!r}: {dirs}", "name it by id (#N) or by its directory")
    return _decode(rows[0])


def remove(ref: str) -> dict:
    row = get(ref)
    conn = connect()
    try:
        with transaction(conn):
            conn.execute("DELETE FROM runs WHERE id = ?", (row["id"],))
    finally:
        conn.close()
    return row


def eval_summary(report: dict) -> dict:
    """eval.json without the long lists (samples, failing examples, changed general answers)."""
    out = {k: v for k, v in report.items() if k not in ("samples", "failures")}
    if isinstance(out.get("general"), dict):
        out["general"] = {k: v for k, v in out["general"].items() if k != "changed"}
    return out
