"""`lorafit eval`: what the adapter learned and what it broke, base vs adapter, side by side.

Learned: held-out loss, and the task metric (the answer contains the row's `reference`), overall and per
`category`, with every failing example kept. Broke: on general prompts unrelated to the task (lorafit's
own set, or --general FILE), how far the adapter's next-token distribution moved from the base's (mean
per-token KL), the loss on their reference answers, and how many greedy answers stayed the same.
"""

from __future__ import annotations

import math
import time
from pathlib import Path

from lorafit import runs
from lorafit.artifacts.drift import DRIFT_KL, GENERAL_SET, both, general_report, show_general
from lorafit.artifacts.scoring import UNCATEGORISED, last_turn, score_tasks, tasks_from, token_loss

EVAL_JSON = "eval.json"


def _eval_recipe(recipe, data_file: str | None):
    """The run's recipe, reading its held-out data from data_file when one is given (only that file: the
    run's training data may be gone or large). A broken file fails here, before the model loads."""
    from lorafit import data

    if not data_file:
        return recipe
    path = str(Path(data_file).resolve())
    update = {"train": path, "eval": path, "eval_split": None, "preserve": None}
    recipe = recipe.model_copy(update={"data": recipe.data.model_copy(update=update)})
    data.check_readable(recipe)
    return recipe


def _held_out(recipe, tokenizer):
    from lorafit.core.errors import DataError
    from lorafit.data import preference

    prepared = preference.prepare_for(recipe, tokenizer)
    if prepared.eval is None:
        raise DataError("this run has no held-out data", "pass --data FILE with examples to evaluate on")
    return prepared


def evaluate(
    run_dir: Path,
    *,
    data_file: str | None,
    samples: int,
    limit: int,
    max_new_tokens: int,
    general: Path | None = GENERAL_SET,
    max_kl: float = DRIFT_KL,
) -> dict:
    """Score the run's adapter against its base and write RUN/eval.json. general=None skips the drift check."""
    from lorafit import models

    recipe, _ = runs.load_run(run_dir)
    recipe = _eval_recipe(recipe, data_file)
    model, tokenizer = models.load_with_adapter(recipe, runs.adapter_path(run_dir))
    if recipe.training.objective != "sft":  # preference pairs: base vs reference vs adapter
        from lorafit.artifacts import preference_eval

        label = data_file or recipe.data.eval or f"{recipe.data.eval_split:.0%} split of {recipe.data.train}"
        held = _held_out(recipe, tokenizer)
        return preference_eval.evaluate(
            run_dir, recipe, model, tokenizer, held, label, limit, max_new_tokens, general, max_kl
        )
    prepared = _held_out(recipe, tokenizer)
    started = time.perf_counter()
    bs = recipe.training.batch_size
    with model.disable_adapter():
        base_loss = token_loss(model, prepared.eval, bs)
    adapter_loss = token_loss(model, prepared.eval, bs)
    report: dict = {
        "data": data_file or recipe.data.eval or f"{recipe.data.eval_split:.0%} split of {recipe.data.train}",
        "examples": len(prepared.eval),
        "base": {"loss": round(base_loss, 4), "perplexity": round(math.exp(base_loss), 3)},
        "adapter": {"loss": round(adapter_loss, 4), "perplexity": round(math.exp(adapter_loss), 3)},
    }
    tasks = tasks_from(prepared.eval_rows, recipe.data.prompt_style)[: limit if limit > 0 else None]
    if tasks:
        base_out, adapter_out = both(model, tokenizer, [t.prompt for t in tasks], max_new_tokens, bs)
        scored = score_tasks(tasks, {"base": base_out, "adapter": adapter_out})
        for side in ("base", "adapter"):
            report[side].update(
                accuracy=scored["accuracy"][side],
                contains=scored["accuracy"][side],
                exact_match=scored["exact_match"][side],
            )
        report.update(generated=len(tasks), categories=scored["categories"], failures=scored["failures"])
        report["samples"] = [
            {"prompt": last_turn(t.prompt), "reference": t.references, "base": b, "adapter": a}
            for t, b, a in list(zip(tasks, base_out, adapter_out))[:samples]
        ]
    if general is not None:
        report["general"] = general_report(model, tokenizer, recipe, Path(general), bs, max_kl)
    report["seconds"] = round(time.perf_counter() - started, 2)
    runs.atomic_write_json(Path(run_dir) / EVAL_JSON, report)
    runs.update_run_json(run_dir, eval_report=str(Path(run_dir) / EVAL_JSON))
    return report


def show(report: dict, console, show_failures: bool = False) -> None:
    from rich.table import Table

    if "objective" in report:
        from lorafit.artifacts import preference_eval

        return preference_eval.show(report, console)
    table = Table(title=f"held-out: {report['examples']} examples from {report['data']}")
    for col, justify in (("metric", "left"), ("base", "right"), ("adapter", "right")):
        table.add_column(col, justify=justify)
    for key in ("loss", "perplexity", "accuracy", "exact_match"):
        if key in report["adapter"]:
            table.add_row(key, str(report["base"][key]), str(report["adapter"][key]))
    console.print(table)
    categories = report.get("categories") or {}
    if len(categories) > 1 or UNCATEGORISED not in categories:
        per = Table(title="task accuracy per category")
        for col, justify in (("category", "left"), ("examples", "right"), ("base", "right"), ("adapter", "right")):
            per.add_column(col, justify=justify)
        for name, c in categories.items():
            per.add_row(name, str(c["examples"]), f"{c['base']:.0%}", f"{c['adapter']:.0%}")
        console.print(per)
    show_general(report.get("general"), console)
    for sample in report.get("samples", []):
        console.print(
            f"[bold]prompt[/] {sample['prompt']}\n[dim]reference[/] {' + '.join(sample['reference'])}\n"
            f"[red]base[/] {sample['base']}\n[green]adapter[/] {sample['adapter']}\n",
            highlight=False,
        )
    failures = report.get("failures", [])
    if show_failures:
        for f in failures:
            console.print(
                f"[bold]{f['where']}[/] ({f['category']})\n[bold]prompt[/] {f['prompt']}\n"
                f"[dim]reference[/] {' + '.join(f['reference'])}\n[red]adapter[/] {f['answer']}\n",
                highlight=False,
            )
    elif failures:
        console.print(
            f"{len(failures)} held-out answers miss their reference: see them with --show-failures "
            "(or 'failures' in eval.json)"
        )
