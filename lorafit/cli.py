"""The `lorafit` command: one thin function per command; errors become exit codes.

Nothing heavy is imported here: `lorafit --help` and recipe validation stay instant.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Callable, List, Optional

import typer
from rich.console import Console

from lorafit.errors import LorafitError

app = typer.Typer(
    help="Fine-tune language models with LoRA and its family from YAML recipes.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console()
err_console = Console(stderr=True)
state = {"debug": False, "quiet": False}

SetOption = typer.Option(None, "--set", help="Override a recipe field: section.field=value (value read as YAML).")


def _fail(exc: BaseException, code: int) -> None:
    if state["debug"]:
        import traceback

        traceback.print_exception(exc)
    err_console.print(f"[bold red]error[/] {exc}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def guarded(fn: Callable[[], object]) -> object:
    """Run a command body, mapping lorafit errors to their exit codes (traceback only with --debug)."""
    try:
        return fn()
    except LorafitError as exc:
        _fail(exc, exc.exit_code)
    except KeyboardInterrupt as exc:
        _fail(LorafitError("interrupted"), 6)
        raise exc
    except MemoryError as exc:
        from lorafit.errors import OutOfMemory

        _fail(OutOfMemory("out of memory (host RAM)", "lower training.batch_size or training.max_length"), 4)
        raise exc


@app.callback()
def main(
    debug: bool = typer.Option(False, "--debug", help="Show the full traceback of any error."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Only warnings, errors and the final summary."),
) -> None:
    state["debug"] = debug
    state["quiet"] = quiet


def _recipe(path: Path, overrides: Optional[List[str]]):
    from lorafit.recipe import load_recipe

    return load_recipe(path, overrides or [])


@app.command()
def train(
    recipe: Path = typer.Argument(..., help="Recipe YAML file."),
    set_: Optional[List[str]] = SetOption,
) -> None:
    """Fine-tune the recipe's model and write the run directory."""

    def body():
        from lorafit import train as training

        r = _recipe(recipe, set_)
        final = training.run(r, console=console, quiet=state["quiet"]).record
        t = final["train"]
        ev = final.get("eval", {})
        console.print(
            f"[bold green]done[/] {r.run_dir}: {t['steps']} steps, {t['tokens']} tokens in {t['seconds']} s "
            f"({t['tokens_per_s']} tok/s), peak {t['peak_memory_mb']:.0f} MB"
            + (f", held-out loss {ev['loss_before']} -> {ev['loss_after']}" if ev.get("loss_after") is not None else ""),
            highlight=False,
        )

    guarded(body)


@app.command()
def validate(
    recipe: Path = typer.Argument(..., help="Recipe YAML file."),
    set_: Optional[List[str]] = SetOption,
    schema_only: bool = typer.Option(False, "--schema-only", help="Check the recipe only; skip the data scan."),
) -> None:
    """Check a recipe and its data without training: schema, every data record, token lengths."""

    def body():
        started = time.perf_counter()
        r = _recipe(recipe, set_)
        console.print(f"[green]recipe ok[/] ({time.perf_counter() - started:.2f} s)")
        if not state["quiet"]:
            console.print(r.to_yaml(), highlight=False, markup=False)
        if schema_only:
            return
        from lorafit import data, models
        from lorafit.recipe import check_hardware

        check_hardware(r)
        tokenizer = models.load_tokenizer(r)
        prepared = data.prepare(r, tokenizer)
        console.print_json(json.dumps(prepared.stats.summary()))
        console.print("[green]data ok[/]")

    guarded(body)


@app.command()
def schema() -> None:
    """Print the recipe's JSON Schema (for editor autocompletion of recipes)."""
    from lorafit.recipe import Recipe

    sys.stdout.write(json.dumps(Recipe.model_json_schema(), indent=2) + "\n")


if __name__ == "__main__":
    app()
