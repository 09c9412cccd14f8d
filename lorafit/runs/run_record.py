"""run.json, the run's external contract, as a typed record: every writer goes through `update`, every reader
through `read`, and a record written by an earlier lorafit is upgraded on reading (`migrate`).

Keys this schema does not know are kept as they are: a run directory copied from another lorafit version
loses nothing when this one rewrites its run.json."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError

# 2: exports as a mapping {"gguf_q8_0": report}; 1 (no schema_version): one top-level key per export, export_gguf_<type>
SCHEMA_VERSION = 2
EXPORT_PREFIX = "export_"


class Record(BaseModel):
    model_config = ConfigDict(extra="allow", validate_assignment=True)


class TrainStats(Record):
    """run.json's "train": what the fit did and how fast (DESIGN.md lists the public keys)."""

    steps: int | None = None
    tokens: int | None = None  # non-padding tokens trained on, summed over ranks
    seconds: float | None = None
    tokens_per_s: float | None = None
    peak_memory_mb: float | None = None
    train_loss: float | None = None
    first_logged_loss: float | None = None
    last_logged_loss: float | None = None


class RunRecord(Record):
    """Versions, seed, data, device, status and final metrics of one run; see DESIGN.md's run directory."""

    schema_version: int = SCHEMA_VERSION
    status: str | None = None  # errors.STATUS_EXIT_CODES names them
    started: str | None = None
    finished: str | None = None
    command: list[str] | None = None
    versions: dict[str, str] | None = None
    git_sha: str | None = None
    seed: int | None = None
    world_size: int | None = None
    device: dict[str, Any] | None = None
    model: dict[str, Any] | None = None
    data: dict[str, Any] | None = None
    adapter: dict[str, Any] | None = None
    train: TrainStats | None = None
    eval: dict[str, Any] | None = None
    eval_loss_before: float | None = None
    exports: dict[str, dict[str, Any]] = {}  # "gguf_q8_0", ...: the export's report (its "path" first of all)
    merge: dict[str, Any] | None = None
    lineage: dict[str, Any] | None = None  # adapter.init_from's run and adapter sha256, a preference run's reference

    def to_json(self) -> dict[str, Any]:
        """The record as run.json holds it: the keys that were written, schema_version first."""
        return {"schema_version": self.schema_version, **self.model_dump(exclude_unset=True)}


def migrate(data: dict[str, Any]) -> dict[str, Any]:
    """A run.json of any earlier schema in this one's shape (a copy; the file is rewritten only by `update`)."""
    data = dict(data)
    if data.get("schema_version", 1) < 2:
        exports = dict(data.get("exports") or {}) if isinstance(data.get("exports"), dict) else {}
        for key in [k for k in data if k.startswith(EXPORT_PREFIX) and isinstance(data[k], dict)]:
            exports[key.removeprefix(EXPORT_PREFIX)] = data.pop(key)
        if exports:
            data["exports"] = exports
    data["schema_version"] = SCHEMA_VERSION
    return data


def parse(data: dict[str, Any]) -> RunRecord:
    """The record of a run.json's data. A value of the wrong type (a hand-edited file) is left out, not a crash:
    the run directory's other facts stay readable."""
    data = migrate(data)
    while True:
        try:
            return RunRecord.model_validate(data)
        except ValidationError as exc:
            locs = [error["loc"] for error in exc.errors() if error["loc"]]
            if not locs:
                raise
            smaller = data
            for loc in locs:
                smaller = _without(smaller, loc)
            if smaller == data:
                raise
            data = smaller


def _without(data: Any, loc: tuple) -> Any:
    """`data` without the value at `loc` (a pydantic error location), copied on the way down."""
    if not isinstance(data, dict) or loc[0] not in data:
        return data
    if len(loc) == 1 or not isinstance(data[loc[0]], dict):
        return {k: v for k, v in data.items() if k != loc[0]}
    return {**data, loc[0]: _without(data[loc[0]], loc[1:])}


def merged(record: RunRecord, fields: dict[str, Any]) -> RunRecord:
    """The record with `fields` written over it, each checked against the schema."""
    return parse({**record.to_json(), **fields})
