"""Errors a user can act on. Each class carries the CLI exit code documented in DESIGN.md."""

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


class OutOfMemory(LorafitError):
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
    return (isinstance(exc, MemoryError) or type(exc).__name__ == "OutOfMemoryError"
            or (isinstance(exc, RuntimeError) and "can't allocate memory" in str(exc)))


class MissingError(LorafitError):
    """A file, model, run directory or optional dependency is not there."""

    exit_code = 7
