"""The `lorafit` command: one thin function per command; errors become exit codes.

The commands live by stage: check_cli.py (validate, data, plan, import, schema), train_cli.py (train, launch,
slurm), artifacts_cli.py (eval, merge, export, generate), serve_cli.py (serve), runs_cli.py (runs, reproduce); they
are registered here in the order `--help` lists them. Nothing heavy is imported: `lorafit --help` and recipe validation stay instant.
"""

from __future__ import annotations

import typer

from lorafit.cli.artifacts_cli import eval_, export, generate, merge
from lorafit.cli.check_cli import data_cmd, import_cmd, plan, schema, validate
from lorafit.cli.common import guarded, state
from lorafit.cli.runs_cli import reproduce, runs_app
from lorafit.cli.serve_cli import serve
from lorafit.cli.train_cli import launch, slurm, train

__all__ = ["app", "guarded"]

app = typer.Typer(
    help="Fine-tune language models with LoRA and its family from YAML recipes.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@app.callback()
def main(
    debug: bool = typer.Option(False, "--debug", help="Show the full traceback of any error."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Only warnings, errors and the final summary."),
) -> None:
    state["debug"] = debug
    state["quiet"] = quiet


for name, command in [
    ("train", train),
    ("validate", validate),
    ("data", data_cmd),
    ("plan", plan),
    ("eval", eval_),
    ("merge", merge),
    ("export", export),
    ("generate", generate),
    ("serve", serve),
    ("launch", launch),
    ("slurm", slurm),
    ("import", import_cmd),
    ("schema", schema),
    ("reproduce", reproduce),
]:
    app.command(name)(command)
app.add_typer(runs_app, name="runs")
