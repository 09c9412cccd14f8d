"""The commands that look at a recipe before any training: `validate`, `data`, `plan`, `schema`.

They load a tokenizer at most, never weights: checking a recipe stays quick on a login node."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import List, Optional

import typer

from lorafit.cli.common import RecipeArgument, SetOption, console, err_console, guarded, read_recipe, state


def validate(
    recipe: Path = RecipeArgument,
    set_: Optional[List[str]] = SetOption,
    schema_only: bool = typer.Option(False, "--schema-only", help="Check the recipe only; skip the data scan."),
) -> None:
    """Check a recipe and its data without training: schema, every data record, token lengths."""

    def body():
        started = time.perf_counter()
        r = read_recipe(recipe, set_)
        console.print(f"[green]recipe ok[/] ({time.perf_counter() - started:.2f} s)")
        if not state["quiet"]:
            console.print(r.to_yaml(), highlight=False, markup=False)
        if schema_only:
            return
        from lorafit import models
        from lorafit.data import preference
        from lorafit.recipe import check_hardware
        from lorafit.train import tracking

        check_hardware(r)
        tracking.check(r)  # a tracker train would refuse (not installed, no login) fails validate too
        from lorafit.models import targets

        tokenizer = models.load_tokenizer(r)  # first: a model that cannot be found fails here, with its fix
        targets.check_targets_on_config(r, models.model_config(r))  # a listed module the model lacks
        prepared = preference.prepare_for(r, tokenizer)
        for warning in prepared.stats.warnings:
            err_console.print(f"[yellow]warning[/] {warning}", highlight=False)
        console.print_json(json.dumps(prepared.stats.summary()))
        console.print("[green]data ok[/]")
        _say_cadence(r, prepared.stats.train_rows)
        from lorafit.models import recipe_plan

        try:
            recipe_plan.show(
                r, models.model_config(r), console, **prepared.stats.plan_inputs(r.training.max_length, r.data.packing)
            )
        except ValueError as exc:  # the recipe and data are fine; only the memory estimate is unavailable
            err_console.print(f"[yellow]warning[/] no memory plan for this model: {exc}", highlight=False)

    guarded(body)


def _say_cadence(r, rows: int) -> None:
    """Per-epoch eval_every / save_every as the steps they will be; with packing, train resolves them once the
    data is packed (fewer, longer rows)."""
    from lorafit.recipe.training import epoch_fraction, steps_for, steps_per_epoch

    t = r.training
    forms = {name: every for name, every in (("eval_every", t.eval_every), ("save_every", t.save_every))}
    forms = {name: every for name, every in forms.items() if epoch_fraction(every) is not None}
    if not forms:
        return
    if r.data.packing:
        console.print(
            f"{', '.join(f'training.{n} {e}' for n, e in forms.items())}: resolved to steps by train, once the data is packed"
        )
        return
    per_epoch = steps_per_epoch(rows, t.batch_size, t.grad_accum)
    said = ", ".join(f"training.{n} {e} = every {steps_for(e, per_epoch)} steps" for n, e in forms.items())
    console.print(f"{said} ({per_epoch} steps per epoch on one device: {rows:,} examples)")


def data_cmd(
    recipe: Path = RecipeArgument,
    set_: Optional[List[str]] = SetOption,
    n: int = typer.Option(3, "-n", help="Rendered examples to show."),
) -> None:
    """Show what will be trained on: examples with trained tokens highlighted, lengths, sources (tokenizer only)."""

    def body():
        from lorafit import models
        from lorafit.data import data_report

        r = read_recipe(recipe, set_)
        data_report.report(r, models.load_tokenizer(r), console, n=n)

    guarded(body)


def plan(
    recipe: Path = RecipeArgument,
    set_: Optional[List[str]] = SetOption,
) -> None:
    """Estimate peak memory before loading any weights: breakdown, fit, largest micro-batch, full vs LoRA vs QLoRA."""

    def body():
        from lorafit import models
        from lorafit.core.errors import RecipeError
        from lorafit.data import preference
        from lorafit.models import recipe_plan

        r = read_recipe(recipe, set_)
        # The longest example bounds the padded batch length; a tokenizer is enough to know it.
        try:
            recipe_plan.show(
                r,
                models.model_config(r),
                console,
                **preference.prepare_for(r, models.load_tokenizer(r)).stats.plan_inputs(
                    r.training.max_length, r.data.packing
                ),
            )
        except ValueError as exc:
            raise RecipeError(
                f"no memory plan for {r.model.name}: {exc}", "lorafit plan reads Llama-style decoder configs"
            ) from None

    guarded(body)


def import_cmd(
    config: Path = typer.Argument(..., help="An axolotl, LLaMA-Factory, torchtune or TRL (trl sft) YAML config."),
    from_: Optional[str] = typer.Option(
        None, "--from", help="axolotl | llamafactory | torchtune | trl; detected from the config's keys when left out."
    ),
    out: Optional[Path] = typer.Option(None, "-o", "--out", help="Write the recipe here (else to stdout)."),
    dataset_info: Optional[Path] = typer.Option(
        None,
        "--dataset-info",
        help="LLaMA-Factory: the dataset_info.json that names its datasets (default: dataset_dir's).",
    ),
) -> None:
    """Convert another tool's config into a lorafit recipe, each value commented with its origin; report the rest."""

    def body():
        from rich.table import Table

        from lorafit.recipe import importer

        text, imported = importer.import_config(config, from_, out, dataset_info)
        report = console if out else err_console
        if out:
            out.write_text(text, encoding="utf-8")
            report.print(f"[green]wrote[/] {out} ({importer.TOOLS[imported.tool]}: {len(imported.settings)} settings)")
        else:
            sys.stdout.write(text)
        if imported.skipped:
            table = Table(
                "key", "value", "in lorafit", title=f"not mapped ({len(imported.skipped)})", title_justify="left"
            )
            for row in imported.skipped:
                table.add_row(*row)
            report.print(table)
        report.print(f"next: lorafit validate {out or 'recipe.yaml'}", highlight=False)

    guarded(body)


def schema() -> None:
    """Print the recipe's JSON Schema (for editor autocompletion of recipes)."""
    from lorafit.recipe import Recipe

    sys.stdout.write(json.dumps(Recipe.model_json_schema(), indent=2) + "\n")
