"""The commands on a finished run: `eval`, `merge`, `export`, `generate`."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from lorafit.artifacts.drift import DRIFT_KL, GENERAL_SET
from lorafit.cli.common import RunDirArgument, console, err_console, guarded


def _force_worse(verb: str):
    """merge and export refuse a run that ended worse than its base unless told: one wording for both."""
    return typer.Option(
        False,
        "--force",
        help=f"{verb} a run whose held-out loss ended above the base's (status worse_than_base; refused otherwise, exit 5).",
    )


def _registry_sync(run_dir: Path, export: Optional[dict] = None) -> None:
    """Refresh the run's registry row after eval / merge / export (a registry problem is only a warning); a copied
    adapter folder is no run of this machine's registry."""
    from lorafit import runs
    from lorafit.runs import registry

    if runs.adapter_path(run_dir) == Path(run_dir):
        return

    registry.safe_sync(run_dir, lambda m: err_console.print(f"[yellow]warning[/] {m}", highlight=False), export=export)


def eval_(
    run_dir: Path = RunDirArgument,
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
        general_file = None if (general or "").lower() == "none" else Path(general) if general else GENERAL_SET
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
    force: bool = _force_worse("Merge"),
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


def _export_key(fmt: str, gguf_type: str) -> str:
    """The export's name in run.json and the registry."""
    return {"gguf": f"gguf_{gguf_type}", "gguf-lora": f"gguf_lora_{gguf_type}"}.get(fmt, fmt)


def _export_summary(fmt: str, report: dict) -> str:
    if fmt == "gguf":
        return f", {report['bytes'] / 2**20:.1f} MiB, greedy agreement {report['greedy_agreement']:.0%}"
    lora = report.get("gguf_lora", report) if fmt in ("gguf-lora", "ollama") else None
    if lora is None:
        return ""
    llama = (
        f"llama.cpp greedy agreement {lora['greedy_agreement']:.0%} (sequences {lora['greedy_sequences_equal']})"
        if lora.get("llama_cpp") == "checked"
        else lora.get("llama_cpp", "")
    )
    base = "reused" if lora["base_reused"] else "written"
    return (
        f"\n  adapter {lora['path']} ({lora['bytes'] / 2**20:.1f} MiB, alpha {lora['gguf_alpha']:g}), base {lora['base']} "
        f"({base})\n  alpha/r * B@A vs PEFT's delta on {lora['tensors']} tensors: max abs diff {lora['max_abs_diff']:.1e}"
        f"\n  {llama}"
    )


def export(
    run_dir: Path = RunDirArgument,
    fmt: str = typer.Option(
        "peft",
        "--format",
        help="peft (vLLM-ready adapter) | merged (plain transformers) | gguf (merged model, llama.cpp) | gguf-lora "
        "(the adapter alone as a llama.cpp LoRA GGUF, beside the base as a GGUF) | ollama (Modelfile + both GGUFs).",
    ),
    out: Optional[Path] = typer.Option(None, "--out", help="Destination (default RUN_DIR/export/FORMAT)."),
    gguf_type: str = typer.Option(
        "f16", "--gguf-type", help="GGUF tensor type (gguf, gguf-lora, ollama): f16 | q8_0 | f32 | bf16."
    ),
    force: bool = _force_worse("Export"),
) -> None:
    """Write the adapter for another runtime, and check the result loads and agrees.

    gguf-lora and ollama check that llama.cpp's alpha/r * B @ A read back from the GGUF equals PEFT's delta for
    every adapted module, and, with llama-cpp-python installed, that llama.cpp's greedy tokens equal PEFT's. They
    refuse DoRA, IA3, prompt/prefix tuning and modules_to_save (export --format gguf, the merged model, instead)."""

    def body():
        from lorafit.artifacts import export as exporting

        report = exporting.export(run_dir, fmt, out, gguf_type, force=force)
        _registry_sync(run_dir, export={_export_key(fmt, gguf_type): report["path"]})
        for warning in report.get("warnings", []):
            err_console.print(f"[yellow]warning[/] {warning}", highlight=False)
        from rich.markup import escape

        console.print(f"[green]exported[/] {escape(report['path'] + _export_summary(fmt, report))}", highlight=False)
        if fmt == "ollama":
            console.print(f"build it with: {report['command']}", highlight=False, markup=False)

    guarded(body)


def generate(
    run_dir: Path = RunDirArgument,
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
