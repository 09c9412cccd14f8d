"""Errors a user can act on, and the exit codes documented in DESIGN.md: one map from an error or a run's
status to its exit code, which the CLI, the run registry and `lorafit launch` all read."""

from __future__ import annotations


class LorafitError(Exception):
    """Base class: a one- or two-line message, an optional hint, and an exit code."""

    exit_code = 1

    def __init__(self, message: str, hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message if not self.hint else f"{self.message}\n  fix: {self.hint}"


class RecipeError(LorafitError):
    """Bad recipe or bad command-line usage."""

    exit_code = 2


class DataError(LorafitError):
    """Bad data: unreadable file, malformed record, nothing to train on."""

    exit_code = 3


class AdapterNotLive(DataError):
    """A served adapter does not answer as PEFT does with it, or answers as the base does (`lorafit serve`)."""


class OutOfMemory(LorafitError):
    """Host or accelerator memory ran out."""

    exit_code = 4


class Diverged(LorafitError):
    """Loss or gradient norm became NaN or inf."""

    exit_code = 5


class Interrupted(LorafitError):
    """Stopped by a signal after writing a resumable checkpoint."""

    exit_code = 6


def is_out_of_memory(exc: BaseException) -> bool:
    """Host or accelerator memory ran out: MemoryError, torch's OutOfMemoryError (matched by name, so callers
    need not import torch), or the RuntimeError torch's CPU allocator raises ("can't allocate memory")."""
    return (
        isinstance(exc, MemoryError)
        or type(exc).__name__ == "OutOfMemoryError"
        or (isinstance(exc, RuntimeError) and "can't allocate memory" in str(exc))
    )


class MissingError(LorafitError):
    """A file, model, run directory or optional dependency is not there."""

    exit_code = 7


INTERRUPTED_BY_SHELL = 130  # Ctrl-C outside `lorafit train`, which turns its own signals into Interrupted (6)

# A run's status (run.json, the registry) -> the exit code the run ended with; None: whatever error ended it.
STATUS_EXIT_CODES: dict[str, int | None] = {
    "running": None,
    "finished": 0,
    "worse_than_base": 0,  # finished and saved, but the held-out loss ended above the base's
    "failed": None,
    "interrupted": Interrupted.exit_code,
    "diverged": Diverged.exit_code,
}


def exit_code_of(exc: BaseException) -> int:
    """The exit code an exception ends a command with: its own for lorafit's errors, 4 for any out-of-memory
    error, 1 (a bug) for the rest."""
    if isinstance(exc, LorafitError):
        return exc.exit_code
    if is_out_of_memory(exc):
        return OutOfMemory.exit_code
    return LorafitError.exit_code


def run_status_of(exc: BaseException) -> tuple[str, int]:
    """The status and exit code an exception ends a training run with (registry and run.json)."""
    if isinstance(exc, Diverged):
        return "diverged", exc.exit_code
    if isinstance(exc, (Interrupted, KeyboardInterrupt)):
        return "interrupted", Interrupted.exit_code
    return "failed", exit_code_of(exc)
