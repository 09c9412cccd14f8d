"""The run directory: layout and atomic writes.

Files and folders lorafit writes appear whole or not at all. Checkpoints are the exception the Trainer
imposes (it writes checkpoint-N in place): lorafit marks each one complete last, and ignores the rest."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from lorafit.runs import run_record
from lorafit.runs.run_record import RunRecord

RECIPE = "recipe.yaml"
RUN_JSON = "run.json"
ADAPTER = "adapter"
ADAPTER_RECIPE = "lorafit-recipe.yaml"  # in the adapter folder: the run's recipe, so a copied adapter stands alone
METRICS = "metrics.jsonl"
CHECKPOINTS = "checkpoints"
COMPLETE = "lorafit-complete.json"  # written last into a checkpoint: without it the checkpoint is ignored
WORSE_THAN_BASE = "worse_than_base"  # run.json status: finished and saved, but held-out loss above the base's
OUTPUT_MARKER = ".lorafit-output"  # in every folder atomic_dir writes: lorafit may replace such a folder later


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write to a temp file in the same directory, fsync, then rename over the target."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_json(path: Path, data: Any) -> None:
    atomic_write_text(path, json.dumps(data, indent=2, sort_keys=False, default=str) + "\n")


def check_replaceable(path: Path) -> None:
    """Refuse a destination holding files lorafit did not write: a mistyped --out must never delete them."""
    from lorafit.core.errors import RecipeError

    path = Path(path)
    if path.exists() and not path.is_dir():
        raise RecipeError(f"{path} is a file, not a directory", "choose a directory path for --out")
    if path.is_dir() and any(path.iterdir()) and not (path / OUTPUT_MARKER).is_file():
        raise RecipeError(
            f"{path} already holds files that lorafit did not write: not replacing it",
            "choose a new or empty directory for --out, or remove this one yourself",
        )


@contextmanager
def atomic_dir(path: Path, *, owned: bool = False) -> Iterator[Path]:
    """Yield a temp directory beside `path`; on success it replaces `path` in one rename.

    An existing `path` is replaced only when it is empty or lorafit wrote it (OUTPUT_MARKER), unless
    `owned`: a place inside a run directory or cache that only lorafit writes to."""
    path = Path(path)
    if not owned:
        check_replaceable(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        yield tmp
        (tmp / OUTPUT_MARKER).write_text("Written by lorafit: a later lorafit command may replace this folder.\n")
        os.chmod(tmp, 0o755)
        if path.exists():
            old = path.with_name(f".{path.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def append_jsonl(path: Path, record: dict) -> None:
    """One line per call in a single write, flushed: readers see whole records as they come."""
    line = json.dumps(record, default=str) + "\n"
    with open(path, "a", encoding="utf-8") as f:
        f.write(line)
        f.flush()


def read_metrics(run_dir: Path) -> list[dict]:
    """metrics.jsonl's rows, skipping a line being written (or cut short by a crash)."""
    path = Path(run_dir) / METRICS
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines() if path.is_file() else []:
        try:
            row = json.loads(line)
        except ValueError:
            continue
        if isinstance(row, dict):
            rows.append(row)
    return rows


def drop_metrics_after(run_dir: Path, step: int) -> None:
    """Resuming from checkpoint-N: rows a run logged after step N (it died before its next checkpoint) are
    trained again, so they go, with a line cut short by the crash; the chart then shows each step once."""
    path = Path(run_dir) / METRICS
    if not path.is_file():
        return
    lines = path.read_text(encoding="utf-8").splitlines()
    kept = []
    for line in lines:
        try:
            if json.loads(line)["step"] <= step:
                kept.append(line)
        except (ValueError, KeyError, TypeError):
            continue
    if len(kept) != len(lines):
        atomic_write_text(path, "".join(f"{line}\n" for line in kept))


def read_record(run_dir: Path) -> RunRecord:
    """run.json as its typed record (empty before a run has written one), upgraded from any earlier schema."""
    path = Path(run_dir) / RUN_JSON
    return run_record.parse(read_json_file(path) if path.is_file() else {})


def read_run_json(run_dir: Path) -> dict:
    """run.json as JSON data, read through its record: the keys it has, in the current schema."""
    path = Path(run_dir) / RUN_JSON
    return read_record(run_dir).to_json() if path.is_file() else {}


def read_json_file(path: Path) -> dict:
    """A JSON object lorafit wrote into a run directory (run.json, eval.json); DataError if it is not one any more."""
    from lorafit.core.errors import DataError
    from lorafit.core.textfiles import describe_bytes

    raw = Path(path).read_bytes()
    try:
        data = json.loads(raw.decode("utf-8-sig"))
    except UnicodeDecodeError:
        raise DataError(
            f"{path}: not UTF-8 JSON (it looks like {describe_bytes(raw[: 1 << 16])})",
            "the run directory was changed or damaged: restore this file from a copy, or remove it",
        ) from None
    except (ValueError, RecursionError) as exc:
        where = f"{path}:{exc.lineno}" if isinstance(exc, json.JSONDecodeError) else str(path)
        cut = " (cut off: truncated?)" if not raw.rstrip().endswith(b"}") else ""
        raise DataError(
            f"{where}: not valid JSON{cut}: {getattr(exc, 'msg', None) or 'nested too deeply'}",
            "the run directory was changed or damaged: restore this file from a copy, or remove it",
        ) from None
    if not isinstance(data, dict):
        raise DataError(
            f"{path}: expected a JSON object, got {type(data).__name__}", "restore this file from a copy, or remove it"
        )
    return data


def read_recipe_text(path: Path) -> str:
    """A run directory's recipe.yaml as text; RecipeError if it is too large or not UTF-8."""
    from lorafit.core.errors import RecipeError
    from lorafit.core.textfiles import describe_bytes
    from lorafit.recipe import MAX_RECIPE_BYTES

    path = Path(path)
    if path.stat().st_size > MAX_RECIPE_BYTES:
        raise RecipeError(
            f"{path}: {path.stat().st_size:,} bytes is more than a recipe can be ({MAX_RECIPE_BYTES:,} bytes at most)",
            "the run directory was changed or damaged: restore its recipe.yaml",
        )
    raw = path.read_bytes()
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise RecipeError(
            f"{path}: not UTF-8 text (it looks like {describe_bytes(raw[: 1 << 16])})",
            "the run directory was changed or damaged: restore its recipe.yaml",
        ) from None


def write_record(run_dir: Path, record: RunRecord) -> dict:
    data = record.to_json()
    atomic_write_json(Path(run_dir) / RUN_JSON, data)
    return data


def update_run_json(run_dir: Path, **fields: Any) -> dict:
    """Write `fields` into run.json (checked against its schema) and return the whole record as JSON data."""
    return write_record(run_dir, run_record.merged(read_record(run_dir), fields))


def record_export(run_dir: Path, name: str, report: dict) -> dict:
    """One export's report under run.json's "exports" (name: e.g. gguf_q8_0)."""
    record = read_record(run_dir)
    return update_run_json(run_dir, exports={**record.exports, name: report})


def checkpoint_step(path: Path) -> int | None:
    """N of a `checkpoint-N` folder; None for anything else (a stray `checkpoint-old`)."""
    suffix = Path(path).name.rsplit("-", 1)[-1]
    return int(suffix) if suffix.isdigit() else None


def latest_checkpoint(run_dir: Path) -> Path | None:
    """The newest complete checkpoint; partial ones (killed mid-save) have no marker and are skipped."""
    folder = Path(run_dir) / CHECKPOINTS
    done = [p for p in folder.glob("checkpoint-*") if (p / COMPLETE).is_file() and checkpoint_step(p) is not None]
    return max(done, key=checkpoint_step, default=None)


def rotate_checkpoints(folder: Path, keep: int) -> None:
    """Delete all but the newest `keep` complete checkpoints, and partial ones older than the newest complete."""
    numbered = [p for p in Path(folder).glob("checkpoint-*") if checkpoint_step(p) is not None]
    done = sorted((p for p in numbered if (p / COMPLETE).is_file()), key=checkpoint_step)
    if not done:
        return
    newest = checkpoint_step(done[-1])
    partial = [p for p in numbered if not (p / COMPLETE).is_file() and checkpoint_step(p) < newest]
    for old in done[:-keep] + partial:
        shutil.rmtree(old, ignore_errors=True)


def refuse_worse_than_base(run_dir: Path, record: dict, command: str, force: bool) -> None:
    """merge / export: an adapter that made the held-out loss worse than the base's is not shipped by accident."""
    if record.get("status") != WORSE_THAN_BASE or force:
        return
    from lorafit.core.errors import Diverged

    ev = record.get("eval") or {}
    raise Diverged(
        f"{run_dir}: held-out loss after training {ev.get('loss_after')} is above the base's {ev.get('loss_before')} "
        f"(run.json status {WORSE_THAN_BASE}): lorafit {command} refuses this adapter",
        f"retrain with a lower training.lr or fewer steps, or {command} it anyway: lorafit {command} {run_dir} --force",
    )


def is_adapter_folder(path: Path) -> bool:
    """An adapter folder lorafit saved (RUN/adapter, or a copy of it anywhere): it carries its run's recipe."""
    return (Path(path) / "adapter_config.json").is_file() and (Path(path) / ADAPTER_RECIPE).is_file()


def adapter_path(run_dir: Path) -> Path:
    """A run directory's adapter, or the folder itself when it is a copied adapter folder."""
    return (
        Path(run_dir)
        if is_adapter_folder(run_dir) and not (Path(run_dir) / RECIPE).is_file()
        else Path(run_dir) / ADAPTER
    )


def load_run(run_dir: Path):
    """The resolved recipe and run.json of a finished run (or the recipe a copied adapter folder carries, and no
    run.json); later commands never guess settings."""
    from lorafit.core.errors import MissingError
    from lorafit.recipe import recipe_from_yaml_text

    run_dir = Path(run_dir)
    if adapter_path(run_dir) == run_dir:
        recipe_file = run_dir / ADAPTER_RECIPE
        return recipe_from_yaml_text(read_recipe_text(recipe_file), str(recipe_file)), {}
    recipe_file = run_dir / RECIPE
    if not recipe_file.is_file():
        raise MissingError(
            f"{run_dir} is not a lorafit run directory (no {RECIPE})", "pass the output.dir of a `lorafit train` run"
        )
    if not (run_dir / ADAPTER / "adapter_config.json").is_file():
        raise MissingError(f"{run_dir} has no trained adapter yet", f"train it first: lorafit train {recipe_file}")
    return recipe_from_yaml_text(read_recipe_text(recipe_file), str(recipe_file)), read_run_json(run_dir)
