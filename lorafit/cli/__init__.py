"""The `lorafit` command: one thin function per command; errors become exit codes.

Nothing heavy is imported here: `lorafit --help` and recipe validation stay instant.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import List, Optional

import typer

from lorafit.artifacts.evaluate import DRIFT_KL
from lorafit.cli.common import SetOption, console, err_console, guarded, state
from lorafit.cli.runs_cli import reproduce, runs_app

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


def _registry_sync(run_dir: Path, export: Optional[dict] = None) -> None:
    """Refresh the run's registry row after eval / merge / export (a registry problem is only a warning)."""
    from lorafit.runs import registry

    registry.safe_sync(run_dir, lambda m: err_console.print(f"[yellow]warning[/] {m}", highlight=False), export=export)


def _recipe(path: Path, overrides: Optional[List[str]]):
    from lorafit.recipe import load_recipe

    return load_recipe(path, overrides or [])


@app.command()
def train(
    recipe: Path = typer.Argument(..., help="Recipe YAML file."),
    set_: Optional[List[str]] = SetOption,
    resume: bool = typer.Option(
        True,
        "--resume/--no-resume",
        help="Resume from output.dir's newest complete checkpoint (default); --no-resume starts fresh in a new <dir>-N.",
    ),
    force: bool = typer.Option(
        False, "--force", help="Resume even though the recipe or data changed since the checkpoint."
    ),
) -> None:
    """Fine-tune the recipe's model and write the run directory (also under torchrun / accelerate launch)."""

    def body():
        from lorafit import runs
        from lorafit.core import dist
        from lorafit.train import pipeline as training

        r = _recipe(recipe, set_)
        try:
            result = training.run(r, console=console, quiet=state["quiet"], resume=resume, force=force)
        except BaseException:
            dist.shutdown(failed=True)
            raise
        dist.shutdown()
        if not dist.is_main():
            return  # rank 0 reports for the whole job
        final = result.record
        t = final["train"]
        ev = final.get("eval", {})
        worse = final.get("status") == runs.WORSE_THAN_BASE
        first, last = t.get("first_logged_loss"), t.get("last_logged_loss")
        console.print(
            ("[bold yellow]worse than base[/]" if worse else "[bold green]done[/]")
            + f" {result.run_dir or r.run_dir}: {t['steps']} steps, {t['tokens']} tokens in {t['seconds']} s "
            f"({t['tokens_per_s']} tok/s), peak {t['peak_memory_mb']:.0f} MB"
            + (f", train loss {first:.4f} -> {last:.4f}" if first is not None and last is not None else "")
            + (f", held-out loss {ev['loss_before']} -> {ev['loss_after']}" if ev.get("loss_after") is not None else "")
            + (
                f"; over-fitting from step {final['overfit_from_step']}"
                if final.get("overfit_from_step") is not None
                else ""
            ),
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
        from lorafit import models
        from lorafit.data import preference
        from lorafit.recipe import check_hardware
        from lorafit.train import tracking

        check_hardware(r)
        tracking.check(r)  # a tracker train would refuse (not installed, no login) fails validate too
        tokenizer = models.load_tokenizer(r)
        prepared = preference.prepare_for(r, tokenizer)
        for warning in prepared.stats.warnings:
            err_console.print(f"[yellow]warning[/] {warning}", highlight=False)
        console.print_json(json.dumps(prepared.stats.summary()))
        console.print("[green]data ok[/]")
        from lorafit.models import plan as planning

        try:
            planning.show(
                r, models.model_config(r), console, **prepared.stats.plan_inputs(r.training.max_length, r.data.packing)
            )
        except ValueError as exc:  # the recipe and data are fine; only the memory estimate is unavailable
            err_console.print(f"[yellow]warning[/] no memory plan for this model: {exc}", highlight=False)

    guarded(body)


@app.command("data")
def data_cmd(
    recipe: Path = typer.Argument(..., help="Recipe YAML file."),
    set_: Optional[List[str]] = SetOption,
    n: int = typer.Option(3, "-n", help="Rendered examples to show."),
) -> None:
    """Show what will be trained on: examples with trained tokens highlighted, lengths, sources (tokenizer only)."""

    def body():
        from lorafit import models
        from lorafit.data import data_report

        r = _recipe(recipe, set_)
        data_report.report(r, models.load_tokenizer(r), console, n=n)

    guarded(body)


@app.command()
def plan(
    recipe: Path = typer.Argument(..., help="Recipe YAML file."),
    set_: Optional[List[str]] = SetOption,
) -> None:
    """Estimate peak memory before loading any weights: breakdown, fit, largest micro-batch, full vs LoRA vs QLoRA."""

    def body():
        from lorafit import models
        from lorafit.core.errors import RecipeError
        from lorafit.data import preference
        from lorafit.models import plan as planning

        r = _recipe(recipe, set_)
        # The longest example bounds the padded batch length; a tokenizer is enough to know it.
        try:
            planning.show(
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


@app.command("eval")
def eval_(
    run_dir: Path = typer.Argument(..., help="A run directory written by `lorafit train`."),
    data: Optional[Path] = typer.Option(
        None, "--data", help="Evaluate on this file instead of the run's held-out split."
    ),
    samples: int = typer.Option(3, "--samples", help="Sample generations to show, base vs adapter."),
    limit: int = typer.Option(
        200, "--limit", help="Held-out examples to generate answers for (the task metric); 0 for all."
    ),
    max_new_tokens: int = typer.Option(96, "--max-new-tokens", help="Generation length for the task metric."),
    show_failures: bool = typer.Option(
        False, "--show-failures", help="Print every held-out example the adapter gets wrong."
    ),
    general: Optional[str] = typer.Option(
        None,
        "--general",
        help="Chat JSONL of off-task prompts with reference answers for the drift check (default: lorafit's own "
        "120 general prompts); `none` skips it.",
    ),
    max_kl: float = typer.Option(
        DRIFT_KL,
        "--max-kl",
        help="Warn when the adapter's KL from the base on general prompts exceeds this (nats/token).",
    ),
    harness: Optional[str] = typer.Option(
        None,
        "--harness",
        help="Also run lm-evaluation-harness tasks, base vs adapter: names or task YAML paths, comma-separated (pip install 'lorafit[harness]').",
    ),
    harness_include: Optional[Path] = typer.Option(
        None, "--harness-include", help="A directory of your own lm-eval task YAMLs (local files work offline)."
    ),
    harness_limit: Optional[int] = typer.Option(
        None, "--harness-limit", min=1, help="At most this many examples per harness task."
    ),
    harness_chat_template: bool = typer.Option(
        False, "--harness-chat-template", help="Format harness prompts with the tokenizer's chat template."
    ),
) -> None:
    """What the adapter learned and broke, base vs adapter: held-out loss, task accuracy (per category), and
    drift on general prompts (KL, loss, unchanged answers); writes eval.json."""

    def body():
        from lorafit.artifacts import evaluate

        tasks = None
        if (
            harness is not None
        ):  # resolved first: an unknown task or an unreachable dataset fails before any model loads
            from lorafit.artifacts import harness as lm_harness

            tasks = lm_harness.prepare(harness, harness_include)
        general_file = None if (general or "").lower() == "none" else Path(general) if general else evaluate.GENERAL_SET
        if general_file is not None and not general_file.is_file():
            from lorafit.core.errors import MissingError

            raise MissingError(
                f"--general {general_file} does not exist", "give a chat JSONL file, or `--general none`"
            )
        report = evaluate.evaluate(
            run_dir,
            data_file=str(data) if data else None,
            samples=samples,
            limit=limit,
            max_new_tokens=max_new_tokens,
            general=general_file,
            max_kl=max_kl,
        )
        evaluate.show(report, console, show_failures=show_failures)
        if tasks is not None:
            results = lm_harness.run(
                run_dir, tasks, limit=harness_limit, chat_template=harness_chat_template, console=console
            )
            lm_harness.merge_into_eval_json(run_dir, results)
            lm_harness.show(results, console)
        _registry_sync(run_dir)
        console.print(f"wrote {run_dir / evaluate.EVAL_JSON}")

    guarded(body)


@app.command()
def merge(
    run_dirs: List[Path] = typer.Argument(..., help="One run directory to merge into its base, or several to combine."),
    weights: Optional[str] = typer.Option(
        None, "--weights", help="Combining: one weight per run, e.g. 0.7,0.3 (negative negates)."
    ),
    combination: str = typer.Option(
        "linear", "--combination", help="Combining: linear | cat | svd | ties | dare_linear | dare_ties."
    ),
    density: float = typer.Option(0.5, "--density", help="ties/dare: share of each delta kept."),
    out: Optional[Path] = typer.Option(None, "--out", help="Combining: directory for the new adapter."),
    dtype: str = typer.Option(
        "auto",
        "--dtype",
        help="Merging: dtype of the saved model: auto (the base's own) | float32 | bfloat16 | float16.",
    ),
    force: bool = typer.Option(
        False,
        "--force",
        help="Merge a run whose held-out loss ended above the base's (status worse_than_base; refused otherwise, exit 5).",
    ),
) -> None:
    """Merge an adapter into its base (verified against base+adapter), or combine several adapters."""

    def body():
        from lorafit.artifacts import merge as merging
        from lorafit.core.errors import RecipeError

        if len(run_dirs) == 1 and weights is None:
            if out is not None or combination != "linear" or density != 0.5:
                raise RecipeError(
                    "--out, --combination and --density are for combining several adapters",
                    f"merging one run writes {run_dirs[0]}/merged; for a copy elsewhere: "
                    f"lorafit export {run_dirs[0]} --format merged --out DIR",
                )
            report = merging.merge(run_dirs[0], dtype, force=force)
            _registry_sync(run_dirs[0])
            console.print(
                f"[green]merged[/] {report['path']} ({report['dtype']}; max logit diff vs adapter {report['max_logit_diff_vs_adapter']:.1e}, "
                f"change vs base {report['max_logit_change_vs_base']:.2f}, {report['seconds']} s)",
                highlight=False,
            )
            return
        if out is None:
            raise RecipeError("combining adapters needs --out DIR for the new adapter")
        if dtype != "auto":
            raise RecipeError(
                "--dtype is for merging one run into its base; a combined adapter keeps the adapters' dtype"
            )
        try:
            values = [float(w) for w in (weights or ",".join(["1"] * len(run_dirs))).split(",")]
        except ValueError:
            raise RecipeError(f"--weights {weights!r}: expected numbers separated by commas, e.g. 0.7,0.3") from None
        path = merging.combine(run_dirs, values, combination, out, density, force=force)
        console.print(f"[green]combined[/] {len(run_dirs)} adapters ({combination}, weights {values}) into {path}")

    guarded(body)


@app.command()
def export(
    run_dir: Path = typer.Argument(..., help="A run directory written by `lorafit train`."),
    fmt: str = typer.Option(
        "peft", "--format", help="peft (vLLM-ready adapter) | merged (plain transformers) | gguf (llama.cpp)."
    ),
    out: Optional[Path] = typer.Option(None, "--out", help="Destination (default RUN_DIR/export/FORMAT)."),
    gguf_type: str = typer.Option("f16", "--gguf-type", help="GGUF tensor type: f16 | q8_0 | f32 | bf16."),
    force: bool = typer.Option(
        False,
        "--force",
        help="Export a run whose held-out loss ended above the base's (status worse_than_base; refused otherwise, exit 5).",
    ),
) -> None:
    """Write the adapter for another runtime, and check the result loads and agrees."""

    def body():
        from lorafit.artifacts import export as exporting

        report = exporting.export(run_dir, fmt, out, gguf_type, force=force)
        _registry_sync(run_dir, export={fmt if fmt != "gguf" else f"gguf_{gguf_type}": report["path"]})
        for warning in report.get("warnings", []):
            err_console.print(f"[yellow]warning[/] {warning}", highlight=False)
        extra = (
            f", {report['bytes'] / 2**20:.1f} MiB, greedy agreement {report['greedy_agreement']:.0%}"
            if "bytes" in report
            else ""
        )
        console.print(f"[green]exported[/] {report['path']}{extra}", highlight=False)

    guarded(body)


@app.command()
def generate(
    run_dir: Path = typer.Argument(..., help="A run directory written by `lorafit train`."),
    prompt: str = typer.Argument(..., help="The user message."),
    max_new_tokens: int = typer.Option(128, "--max-new-tokens"),
    base: bool = typer.Option(False, "--base", help="Answer with the base model (adapter disabled), to compare."),
    merged: bool = typer.Option(False, "--merged", help="Answer with RUN_DIR/merged (after `lorafit merge`)."),
) -> None:
    """Answer one message with the fine-tuned model (greedy)."""

    def body():
        from lorafit.artifacts import generate as generation

        console.print(
            generation.run(run_dir, prompt, max_new_tokens=max_new_tokens, base=base, merged=merged),
            highlight=False,
            markup=False,
        )

    guarded(body)


@app.command()
def launch(
    recipe: Path = typer.Argument(..., help="Recipe YAML file."),
    gpus: int = typer.Option(..., "--gpus", help="Training processes (GPUs) per node."),
    nodes: int = typer.Option(1, "--nodes", help="Machines; each runs this command with its own --node-rank."),
    strategy: str = typer.Option(
        "ddp", "--strategy", help="ddp | fsdp | deepspeed-zero2 | deepspeed-zero3 (configs/accelerate/)."
    ),
    node_rank: Optional[int] = typer.Option(
        None, "--node-rank", help="This machine's rank, 0..nodes-1 (default: SLURM_NODEID)."
    ),
    main_address: Optional[str] = typer.Option(
        None, "--main-address", help="Host of node 0 when --nodes > 1 (default: MASTER_ADDR)."
    ),
    main_port: Optional[int] = typer.Option(
        None, "--main-port", help="Rendezvous port on node 0 (default: 29500; one node: any free port)."
    ),
    config: Optional[Path] = typer.Option(
        None, "--config", help="Your own accelerate config instead of the shipped one."
    ),
    force: bool = typer.Option(
        False, "--force", help="Passed to lorafit train: resume even though the recipe changed."
    ),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print the command and exit."),
    set_: Optional[List[str]] = SetOption,
) -> None:
    """Train on several GPUs / nodes: builds and runs the accelerate launch command (exit codes as lorafit train)."""

    def body():
        import shlex

        from lorafit.cli import launching

        r = _recipe(recipe, set_)  # fail on a bad recipe before starting N processes
        command = launching.build_command(
            recipe,
            set_ or [],
            gpus=gpus,
            nodes=nodes,
            node_rank=node_rank,
            main_address=main_address,
            main_port=main_port,
            strategy=strategy,
            qlora=r.quantization.load_in_4bit,
            config=config,
            train_args=["--force"] if force else [],
            cli_args=[flag for flag, on in (("--debug", state["debug"]), ("--quiet", state["quiet"])) if on],
        )
        if dry_run:
            sys.stdout.write(shlex.join(command) + "\n")
            return
        launching.check_environment(strategy, gpus, err_console)
        err_console.print(f"[bold]launch[/] {shlex.join(command)}", highlight=False, soft_wrap=True)
        code = launching.execute(command, r.run_dir, err_console)
        if code:
            raise typer.Exit(code)

    guarded(body)


@app.command()
def slurm(
    recipe: Path = typer.Argument(..., help="Recipe YAML file."),
    nodes: int = typer.Option(..., "--nodes", help="Nodes to allocate."),
    gpus_per_node: int = typer.Option(..., "--gpus-per-node", help="GPUs (training processes) per node."),
    strategy: str = typer.Option("ddp", "--strategy", help="ddp | fsdp | deepspeed-zero2 | deepspeed-zero3."),
    time_limit: Optional[str] = typer.Option(
        None, "--time", help="Slurm time limit, e.g. 24:00:00 (default: the template's)."
    ),
    partition: Optional[str] = typer.Option(None, "--partition", help="Slurm partition."),
    account: Optional[str] = typer.Option(None, "--account", help="Slurm account."),
    job_name: Optional[str] = typer.Option(None, "--job-name", help="Slurm job name (default lorafit-RECIPE)."),
    signal_seconds: int = typer.Option(
        120, "--signal-seconds", min=1, help="SIGUSR1 this many seconds before the time limit."
    ),
    out: Optional[Path] = typer.Option(None, "--out", help="Where to write the script (default RECIPE-NAME.sbatch)."),
    set_: Optional[List[str]] = SetOption,
) -> None:
    """Write an sbatch script: one task per node, SIGUSR1 before the time limit, requeue on exit code 6."""

    def body():
        from lorafit.cli import launching

        _recipe(recipe, set_)
        text = launching.slurm_script(
            recipe,
            set_ or [],
            nodes=nodes,
            gpus_per_node=gpus_per_node,
            strategy=strategy,
            time_limit=time_limit,
            partition=partition,
            account=account,
            job_name=job_name,
            signal_seconds=signal_seconds,
        )
        target = out or Path(f"{recipe.stem}.sbatch")
        from lorafit.runs import atomic_write_text

        atomic_write_text(target, text)
        target.chmod(0o755)
        console.print(f"wrote {target}; submit it with: sbatch {target}", highlight=False)

    guarded(body)


@app.command()
def schema() -> None:
    """Print the recipe's JSON Schema (for editor autocompletion of recipes)."""
    from lorafit.recipe import Recipe

    sys.stdout.write(json.dumps(Recipe.model_json_schema(), indent=2) + "\n")


app.command()(reproduce)
app.add_typer(runs_app, name="runs")
