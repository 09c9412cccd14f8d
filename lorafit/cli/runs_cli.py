"""`lorafit runs ...` (the run registry) and `lorafit reproduce`. Nothing heavy at import: `lorafit --help` stays instant."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer
from rich.console import Console

from lorafit.cli.common import console, err_console, guarded, state

runs_app = typer.Typer(
    help="The run registry: list, show, compare, plot, import and remove runs.", no_args_is_help=True
)


def _console() -> Console:
    return Console()  # created per command so COLUMNS and the terminal are read when the command runs


def _num(value, digits: int = 4) -> str:
    if value is None:
        return "-"
    if isinstance(value, float) and value != 0:
        return f"{value:.{digits}g}" if abs(value) < 1e-3 or abs(value) >= 1e5 else f"{round(value, digits)}"
    return str(value)


def _status(row: dict) -> str:
    from lorafit.runs import registry

    status = row["status"]
    if status == "running" and registry.alive(row) is False:
        return "[red]running, process gone[/]"
    color = {"finished": "green", "running": "cyan", "interrupted": "yellow", "worse_than_base": "yellow"}.get(
        status, "red"
    )
    code = f" ({row['exit_code']})" if row.get("exit_code") not in (None, 0) else ""
    return f"[{color}]{status}{code}[/]"


@runs_app.command("list")
def list_(
    model: Optional[str] = typer.Option(None, "--model", help="Base model contains this text."),
    method: Optional[str] = typer.Option(None, "--method", help="Adapter method, e.g. lora, dora."),
    status: Optional[str] = typer.Option(
        None, "--status", help="running | finished | worse_than_base | failed | interrupted | diverged."
    ),
    tag: Optional[str] = typer.Option(None, "--tag", help="Runs carrying this output.tags entry."),
    objective: Optional[str] = typer.Option(
        None, "--objective", help="training.objective: sft, dpo, kto, orpo, simpo."
    ),
) -> None:
    """Every registered run, newest first (`runs show` has the rest)."""

    def body():
        from rich import box
        from rich.table import Table

        from lorafit.core import paths
        from lorafit.runs import registry

        if status is not None and status not in registry.STATUSES:
            from difflib import get_close_matches

            from lorafit.core.errors import RecipeError

            near = get_close_matches(status, registry.STATUSES, n=1)
            raise RecipeError(
                f"--status {status!r} is not a run status" + (f"; did you mean {near[0]!r}?" if near else ""),
                f"use one of {', '.join(registry.STATUSES)}",
            )
        rows = registry.list_runs(model=model, method=method, status=status, tag=tag, objective=objective)
        table = Table(
            title=f"{len(rows)} runs in {paths.registry_path()}",
            title_justify="left",
            box=box.SIMPLE_HEAD,
            pad_edge=False,
            collapse_padding=True,
        )
        for name, justify, wrap in (
            ("id", "right", False),
            ("name", "left", True),
            ("status", "left", False),
            ("model", "left", True),
            ("method", "left", False),
            ("objective", "left", False),
            ("parent", "left", True),
            ("r", "right", False),
            ("lr", "right", False),
            ("steps", "right", False),
            ("loss", "right", False),
            ("held-out", "right", False),
            ("tags", "left", True),
        ):
            table.add_column(name, justify=justify, overflow="fold", no_wrap=not wrap, min_width=6 if wrap else None)
        for r in rows:
            table.add_row(
                str(r["id"]),
                r["name"],
                _status(r),
                str(r.get("base_model") or "-").rsplit("/", 1)[-1],
                r.get("method") or "-",
                r.get("objective") or "-",
                Path(r["parent"]).name if r.get("parent") else "-",  # the run it continued (adapter.init_from)
                _num(r.get("r")),
                _num(r.get("lr")),
                _num(r.get("steps")),
                _num(r.get("train_loss")),
                _num(r.get("eval_loss")),
                ", ".join(r.get("tags") or []),
            )
        _console().print(table)

    guarded(body)


@runs_app.command()
def show(
    run: str = typer.Argument(..., help="Run name, registry id (#N) or run directory."),
    recipe: bool = typer.Option(False, "--recipe", help="Also print the resolved recipe."),
) -> None:
    """Everything the registry knows about one run."""

    def body():
        from rich.table import Table

        from lorafit.runs import registry

        row = registry.get(run)
        table = Table(show_header=False, title=f"#{row['id']} {row['name']}", title_justify="left")
        table.add_column("field", style="bold")
        table.add_column("value", overflow="fold")
        skip = {
            "recipe",
            "id",
            "name",
            "status",
            "exit_code",
            "data_files",
            "versions",
            "eval_metrics",
            "exports",
            "tags",
            *LINEAGE,  # below, with the sha256 shortened and the reference explained
        }
        table.add_row("status", _status(row) + (f"  {row['message']}" if row.get("message") else ""))
        for key, value in row.items():
            if key not in skip and value is not None:
                table.add_row(key, _num(value))
        table.add_row("tags", ", ".join(row.get("tags") or []) or "-")
        for field, value in _lineage(row):
            table.add_row(field, value)
        for name, path in (row.get("exports") or {}).items():
            table.add_row(f"export {name}", str(path))
        for name, digest in (row.get("data_files") or {}).items():
            table.add_row("data", f"{name}  {str(digest)[:16]}")
        evaluation = dict(row.get("eval_metrics") or {})
        harness, harness_info = evaluation.pop("harness", None) or {}, evaluation.pop("harness_info", None) or {}
        categories, general = evaluation.pop("categories", None) or {}, evaluation.pop("general", None) or {}
        for side, metrics in evaluation.items():
            if isinstance(metrics, dict):
                table.add_row(f"eval {side}", ", ".join(f"{k} {_num(v)}" for k, v in metrics.items()))
        for name, c in categories.items():  # task accuracy per category: base -> adapter
            if isinstance(c, dict):
                table.add_row(
                    f"eval {name}", f"{_num(c.get('base'))} -> {_num(c.get('adapter'))} ({c.get('examples')} examples)"
                )
        if general:
            table.add_row(
                f"off-task drift from the {general.get('against', 'base')}",
                f"KL {_num(general.get('kl'))}, loss {_num(general.get(general.get('against', 'base') + '_loss'))} -> "
                f"{_num(general.get('adapter_loss'))}, unchanged answers {_num(general.get('same_answer'))}",
            )
        for task, values in harness.items():  # lorafit eval --harness: base -> adapter (delta) per metric
            table.add_row(
                f"harness {task}",
                ", ".join(
                    f"{m} {_num(v.get('base'))} -> {_num(v.get('adapter'))} ({_num(v.get('delta'))})"
                    for m, v in values.items()
                    if isinstance(v, dict)
                ),
            )
        if harness_info:
            table.add_row("harness lm-eval", str(harness_info.get("lm_eval_version", "-")))
        table.add_row("versions", ", ".join(f"{k} {v}" for k, v in (row.get("versions") or {}).items()) or "-")
        console = _console()
        console.print(table)
        if recipe and row.get("recipe"):
            console.print(row["recipe"], markup=False, highlight=False)

    guarded(body)


LINEAGE = ("objective", "parent", "parent_adapter_sha256", "reference")


def _lineage(row: dict) -> list[tuple[str, str]]:
    """The objective, parent run (adapter.init_from, with its adapter's sha256) and reference of a run: the
    registry's lineage columns, or for a row written before they existed, its resolved recipe (kept whole)."""
    import yaml

    found = {key: row.get(key) for key in LINEAGE}
    if found["objective"] is None:
        try:
            recipe = yaml.safe_load(row.get("recipe") or "") or {}
        except yaml.YAMLError:
            recipe = {}
        recipe = recipe if isinstance(recipe, dict) else {}
        section = lambda name: recipe.get(name) if isinstance(recipe.get(name), dict) else {}  # noqa: E731
        adapter = section("adapter")
        found = {
            "objective": section("training").get("objective", "sft"),
            "parent": adapter.get("init_from"),
            "parent_adapter_sha256": adapter.get("init_sha256"),
            "reference": section("preference").get("reference"),
        }
    out = []
    if found["objective"] not in (None, "sft"):
        out.append(("objective", str(found["objective"])))
    if found["parent"]:
        sha = found["parent_adapter_sha256"] or "?"
        out.append(("parent", f"{found['parent']}  adapter sha256 {sha[:16]}"))
    if found["reference"]:
        reference = found["reference"]
        if reference == "init":
            reference = "init: base + the parent's adapter" if found["parent"] else "init: the base"
        out.append(("reference", str(reference)))
    return out


@runs_app.command()
def compare(
    runs: List[str] = typer.Argument(..., help="Two or more runs (name, #id or directory)."),
) -> None:
    """Runs side by side: the recipe settings and data that differ, then metrics (training, held-out task
    accuracy per category, off-task drift, lm-eval harness), with the change from the first run to the last."""

    def body():
        from rich.table import Table

        from lorafit.core.errors import RecipeError
        from lorafit.runs import comparison, registry

        if len(runs) < 2:
            raise RecipeError(
                "runs compare needs at least two runs", "name two or more runs, e.g. lorafit runs compare a b"
            )
        rows = [registry.get(r) for r in runs]
        diff = comparison.compare(*rows)
        console = _console()
        letters = [chr(ord("A") + i) if i < 26 else str(i + 1) for i in range(len(rows))]
        labels = [f"{x}: {row['name']} (#{row['id']})" for x, row in zip(letters, rows)]
        recipe = Table(title="recipe differences", title_justify="left")
        for col in ("setting", *labels):
            recipe.add_column(col, overflow="fold")
        for key, values in diff["recipe"] + diff["data"]:
            recipe.add_row(key, *map(_num, values))
        if diff["recipe"] or diff["data"]:
            console.print(recipe)
        else:
            console.print("recipes and data are identical")
        metrics = Table(title="metrics", title_justify="left")
        change = f"{letters[-1]} - A"
        for col, justify in (("metric", "left"), *((label, "right") for label in labels), (change, "right")):
            metrics.add_column(col, justify=justify, overflow="fold")
        for name, values, d in diff["metrics"]:
            metrics.add_row(name, *map(_num, values), "-" if d is None else "0" if d == 0 else f"{d:+.4g}")
        console.print(metrics)

    guarded(body)


@runs_app.command("rm")
def rm(
    run: str = typer.Argument(..., help="Run name, registry id (#N) or run directory."),
    yes: bool = typer.Option(False, "--yes", "-y", help="Do not ask."),
    delete_files: bool = typer.Option(False, "--delete-files", help="Also delete the run directory from disk."),
) -> None:
    """Remove a run from the registry (its directory stays unless --delete-files)."""

    def body():
        import shutil

        from lorafit import runs
        from lorafit.core.errors import RecipeError
        from lorafit.runs import registry

        row = registry.get(run)
        run_dir = Path(row["run_dir"])
        what = f"run #{row['id']} {row['name']} ({run_dir})" + (
            " and DELETE its directory" if delete_files else " from the registry"
        )
        if not yes and not typer.confirm(f"remove {what}?", default=False):
            _console().print("nothing removed", highlight=False)
            return  # declining is not an error
        if delete_files and run_dir.exists():
            if not ((run_dir / runs.RECIPE).is_file() or (run_dir / runs.RUN_JSON).is_file()):
                raise RecipeError(
                    f"{run_dir} does not look like a lorafit run directory; not deleting it",
                    "remove it yourself if you mean to",
                )
            shutil.rmtree(run_dir)
        registry.remove(str(row["id"]))
        _console().print(f"removed {what}", highlight=False)

    guarded(body)


@runs_app.command("import")
def import_(dirs: List[Path] = typer.Argument(..., help="Run directories (e.g. copied from another machine).")) -> None:
    """Add run directories to the registry, or refresh their rows, from their recipe.yaml, run.json and eval.json."""

    def body():
        from lorafit.runs import registry

        console = _console()
        for d in dirs:
            row = registry.sync_from_dir(d)
            console.print(f"#{row['id']} {row['name']}: {row['status']} ({row['run_dir']})", highlight=False)

    guarded(body)


@runs_app.command()
def plot(
    run_list: List[str] = typer.Argument(..., help="Runs to overlay: names, #ids or run directories."),
    out: Path = typer.Option(Path("runs.png"), "--out", "-o", help="PNG file to write."),
) -> None:
    """Overlay several runs' loss, held-out loss and learning rate in one PNG."""

    def body():
        from lorafit.runs import plots, registry

        dirs = [Path(r) if Path(r).is_dir() else Path(registry.get(r)["run_dir"]) for r in run_list]
        path = plots.overlay(dirs, out)
        _console().print(f"wrote {path}", highlight=False)

    guarded(body)


# ---------------------------------------------------------------- lorafit reproduce


def reproduce(
    run_dir: Path = typer.Argument(..., help="A run directory written by `lorafit train`."),
    out: Optional[Path] = typer.Option(None, "--out", help="Directory for the new run (default RUN_DIR-repro)."),
) -> None:
    """Train again from RUN_DIR's resolved recipe and seed; warn about every version or data hash that differs."""

    def body():
        from lorafit import runs
        from lorafit.core.errors import MissingError
        from lorafit.recipe import recipe_from_yaml_text
        from lorafit.train import pipeline, reproduce

        recipe_file = run_dir / runs.RECIPE
        if not recipe_file.is_file():
            raise MissingError(
                f"{run_dir} is not a lorafit run directory (no {runs.RECIPE})",
                "pass the output.dir of a `lorafit train` run",
            )
        recipe = recipe_from_yaml_text(runs.read_recipe_text(recipe_file), str(recipe_file))
        target = out or reproduce.default_out(run_dir)
        recipe = recipe.model_copy(update={"output": recipe.output.model_copy(update={"dir": str(target)})})
        from lorafit.core import device

        device.configure_memory(
            recipe.training.keep_freed_memory, recipe.training.huge_pages
        )  # the checks import torch
        warned = reproduce.checks(run_dir)
        for line in warned:
            err_console.print(f"[yellow]warning[/] {line}", highlight=False)
        console.print(f"reproducing {run_dir} (seed {recipe.training.seed}) into {target}", highlight=False)
        record = pipeline.run(recipe, console=console, quiet=state["quiet"]).record
        before = runs.read_run_json(run_dir).get("data", {}).get("files", {})
        for name, digest in record.get("data", {}).get("files", {}).items():
            if before.get(name) != digest and not any(name in w for w in warned):
                err_console.print(
                    f"[yellow]warning[/] data {name}: fingerprint {digest[:16]} differs from the original {str(before.get(name))[:16]}",
                    highlight=False,
                )
        console.print(reproduce.compare_adapters(run_dir, target), highlight=False)

    guarded(body)
