"""`lorafit eval`: held-out loss, perplexity and a task metric, base vs adapter, side by side."""

from __future__ import annotations

import math
import time
from pathlib import Path

from lorafit import runs

EVAL_JSON = "eval.json"


def token_loss(model, dataset, batch_size: int) -> float:
    """Mean cross-entropy over all trained tokens (token-weighted, like training)."""
    import torch
    import torch.nn.functional as F

    total, count = 0.0, 0
    for start in range(0, len(dataset), batch_size):
        rows = dataset[start : start + batch_size]
        width = max(len(x) for x in rows["input_ids"])
        ids = torch.zeros(len(rows["input_ids"]), width, dtype=torch.long)
        labels = torch.full_like(ids, -100)
        mask = torch.zeros_like(ids)
        for i, (x, y) in enumerate(zip(rows["input_ids"], rows["labels"])):
            ids[i, : len(x)], labels[i, : len(y)], mask[i, : len(x)] = torch.tensor(x), torch.tensor(y), 1
        with torch.no_grad():
            logits = model(input_ids=ids.to(model.device), attention_mask=mask.to(model.device)).logits.float()
        logits = logits[:, -width:]  # prompt tuning prepends virtual tokens: score the real positions only
        shifted = labels[:, 1:].to(logits.device)
        loss = F.cross_entropy(logits[:, :-1].reshape(-1, logits.size(-1)), shifted.reshape(-1), ignore_index=-100, reduction="sum")
        total += loss.item()
        count += int((shifted != -100).sum())
    return total / max(count, 1)


def _normalise(text: str) -> str:
    return " ".join(text.lower().split())


def _tasks(rows) -> list[tuple[str | list, str, str]]:
    """(prompt messages or text, expected answer, reference phrase) per held-out row."""
    from lorafit.data import to_messages

    tasks = []
    for row in rows:
        fmt = row.format
        msgs = to_messages(row.record, fmt)
        if msgs is not None:
            expected = msgs[-1]["content"]
            tasks.append((msgs[:-1], expected, row.record.get("reference") or expected))
        elif fmt == "prompt_completion":
            tasks.append((row.record["prompt"], row.record["completion"], row.record.get("reference") or row.record["completion"]))
    return tasks


def _answers(model, tokenizer, tasks, max_new_tokens: int, batch_size: int) -> list[str]:
    """Greedy answers in task order. Chat prompts carry the template's own special tokens; plain prompts get
    the tokenizer's (its BOS, if it adds one), as their examples did in training."""
    from lorafit.generate import chat_prompt, generate

    out = [""] * len(tasks)
    chat = [(i, chat_prompt(tokenizer, p)) for i, (p, _, _) in enumerate(tasks) if isinstance(p, list)]
    plain = [(i, p) for i, (p, _, _) in enumerate(tasks) if not isinstance(p, list)]
    for group, special in ((chat, False), (plain, True)):
        texts = generate(model, tokenizer, [p for _, p in group], max_new_tokens, batch_size, add_special_tokens=special) if group else []
        for (i, _), text in zip(group, texts):
            out[i] = text
    return out


def evaluate(run_dir: Path, *, data_file: str | None, samples: int, limit: int, max_new_tokens: int, console) -> dict:
    from lorafit import data, models

    recipe, _ = runs.load_run(run_dir)
    if data_file:  # only this file is read: the run's training data may be gone or large
        path = str(Path(data_file).resolve())
        recipe = recipe.model_copy(update={"data": recipe.data.model_copy(update={"train": path, "eval": path, "eval_split": None})})
        data.check_readable(recipe)  # a broken file fails now, not after the model has loaded
    model, tokenizer = models.load_with_adapter(recipe, Path(run_dir) / runs.ADAPTER)
    prepared = data.prepare(recipe, tokenizer)
    if prepared.eval is None:
        from lorafit.errors import DataError

        raise DataError("this run has no held-out data", "pass --data FILE with examples to evaluate on")
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
    tasks = _tasks(prepared.eval_rows)[:limit]
    if tasks:
        with model.disable_adapter():
            base_out = _answers(model, tokenizer, tasks, max_new_tokens, bs)
        adapter_out = _answers(model, tokenizer, tasks, max_new_tokens, bs)
        for side, outs in (("base", base_out), ("adapter", adapter_out)):
            report[side]["exact_match"] = round(sum(_normalise(o) == _normalise(e) for o, (_, e, _) in zip(outs, tasks)) / len(tasks), 4)
            report[side]["contains"] = round(sum(_normalise(r) in _normalise(o) for o, (_, _, r) in zip(outs, tasks)) / len(tasks), 4)
        report["generated"] = len(tasks)
        report["samples"] = [
            {"prompt": (p[-1]["content"] if isinstance(p, list) else p), "reference": r, "base": b, "adapter": a}
            for (p, _, r), b, a in list(zip(tasks, base_out, adapter_out))[:samples]
        ]
    report["seconds"] = round(time.perf_counter() - started, 2)
    runs.atomic_write_json(Path(run_dir) / EVAL_JSON, report)
    runs.update_run_json(run_dir, eval_report=str(Path(run_dir) / EVAL_JSON))
    return report


def show(report: dict, console) -> None:
    from rich.table import Table

    table = Table(title=f"held-out: {report['examples']} examples from {report['data']}")
    table.add_column("metric")
    table.add_column("base", justify="right")
    table.add_column("adapter", justify="right")
    for key in ("loss", "perplexity", "exact_match", "contains"):
        if key in report["adapter"]:
            table.add_row(key, str(report["base"][key]), str(report["adapter"][key]))
    console.print(table)
    for sample in report.get("samples", []):
        console.print(f"[bold]prompt[/] {sample['prompt']}\n[dim]reference[/] {sample['reference']}\n"
                      f"[red]base[/] {sample['base']}\n[green]adapter[/] {sample['adapter']}\n", highlight=False)
