"""What every command shares: the consoles, the global flags, and the one place errors become exit codes.

Light on purpose (typer and rich only): `lorafit --help` must not import torch."""

from __future__ import annotations

from pathlib import Path
from typing import Callable, List, Optional

import typer
from rich.console import Console

from lorafit.core.errors import INTERRUPTED_BY_SHELL, LorafitError, OutOfMemory, exit_code_of, is_out_of_memory

# soft_wrap: a line with a path stays one line, so it can be copied (the terminal still folds it on screen)
console = Console(soft_wrap=True)
err_console = Console(stderr=True, soft_wrap=True)
state = {"debug": False, "quiet": False}

SetOption = typer.Option(None, "--set", help="Override a recipe field: section.field=value (value read as YAML).")
RecipeArgument = typer.Argument(..., help="Recipe YAML file.")
RunDirArgument = typer.Argument(
    ..., help="A run directory written by `lorafit train`, or its adapter folder copied anywhere."
)


def read_recipe(path: Path, overrides: Optional[List[str]]):
    """The recipe a command was given, with its --set overrides; imported here so `--help` never reads one."""
    from lorafit.recipe import load_recipe

    return load_recipe(path, overrides or [])


def _fail(exc: BaseException, code: int) -> None:
    from lorafit.core import dist
    from lorafit.core.errors import Diverged, Interrupted

    if isinstance(exc, (Interrupted, Diverged)) and not dist.is_main():
        raise typer.Exit(code)  # every rank stops together; rank 0 says why, once
    _report_exit_code(code)
    if state["debug"]:
        import traceback

        traceback.print_exception(exc)
    from rich.markup import escape

    err_console.print(
        f"[bold red]error[/] {escape(str(exc))}", highlight=False, soft_wrap=True
    )  # [a, b] is text, not markup
    raise typer.Exit(code)


def _report_exit_code(code: int) -> None:
    """Under `lorafit launch`, rank 0 leaves its exit code where the launcher reads it (torchrun says 1)."""
    import os

    from lorafit.core import dist

    path = os.environ.get(dist.EXIT_FILE_ENV)
    if path and dist.is_main():
        try:
            Path(path).write_text(f"{code}\n")
        except OSError:
            pass  # the launcher falls back to run.json


def guarded(fn: Callable[[], object]) -> object:
    """Run a command body, mapping lorafit errors to their exit codes (traceback only with --debug)."""
    try:
        return fn()
    except LorafitError as exc:
        _fail(exc, exit_code_of(exc))
    except KeyboardInterrupt:  # `lorafit train` turns its own signals into Interrupted (6); elsewhere: the shell's 130
        _fail(LorafitError("interrupted"), INTERRUPTED_BY_SHELL)
    except Exception as exc:
        if not is_out_of_memory(exc):
            raise
        oom = OutOfMemory(
            f"out of memory: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}",
            "lower training.batch_size or training.max_length",
        )
        _fail(oom, exit_code_of(oom))
