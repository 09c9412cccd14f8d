"""Off-task drift: how far an adapter moved the model on prompts unrelated to its task.

On general prompts (lorafit's own set, or --general FILE): the mean per-token KL of the adapter's next-token
distribution from the base's (or from another adapter's, such as a preference run's reference), the loss on
their reference answers, and how many greedy answers stayed the same. `lorafit eval` reports it for SFT and
preference runs alike.
"""

from __future__ import annotations

import math
from pathlib import Path

from lorafit.artifacts.scoring import (
    GENERATE_BATCH,
    answers,
    as_model,
    batches,
    last_turn,
    logits_at,
    merged,
    normalise,
    tasks_from,
)
from lorafit.core import paths

GENERAL_SET = paths.GENERAL_EVAL
DRIFT_KL = 0.1  # nats per token: above it, `lorafit eval` warns that the adapter changed off-task behaviour
GENERAL_NEW_TOKENS = 48  # enough to see a task leak into an unrelated answer, short enough to stay fast


def drift(model, dataset, batch_size: int, against: str = "") -> dict[str, float]:
    """KL(adapter || against) of the next-token distribution, and both losses, averaged over the trained tokens;
    `against` is another adapter's name, or "" for the base.

    The KL is taken where the reference answer is scored, so it measures how much the adapter changed the
    model's predictions on text it was never trained on; 0 exactly when the adapter is a no-op."""
    import torch.nn.functional as F

    kl = base_nll = adapter_nll = 0.0
    count = 0
    for ids, mask, labels in batches(dataset, batch_size):
        with as_model(model, against):
            base = logits_at(model, ids, mask)
        adapted = logits_at(model, ids, mask)
        shifted = labels[:, 1:].to(base.device)
        keep = shifted != -100
        targets = shifted[keep]
        log_b = F.log_softmax(base[:, :-1][keep], dim=-1)
        log_a = F.log_softmax(adapted[:, :-1][keep], dim=-1)
        kl += (log_a.exp() * (log_a - log_b)).sum().item()
        base_nll -= log_b.gather(1, targets[:, None]).sum().item()
        adapter_nll -= log_a.gather(1, targets[:, None]).sum().item()
        count += int(keep.sum())
    count = max(count, 1)
    return {"kl": kl / count, "base_loss": base_nll / count, "adapter_loss": adapter_nll / count}


def both(
    model, tokenizer, prompts: list, max_new_tokens: int, batch_size: int, against: str = ""
) -> tuple[list[str], list[str]]:
    """Greedy answers of the base (or the adapter named `against`), then of the adapter."""
    batch_size = max(batch_size, GENERATE_BATCH)
    with as_model(model, against, merge=True):
        base = answers(model, tokenizer, prompts, max_new_tokens, batch_size)
    with merged(model):
        return base, answers(model, tokenizer, prompts, max_new_tokens, batch_size)


def _general_data(recipe, path: Path, tokenizer):
    """The general set tokenized with the run's chat template and length limit, and its rows."""
    from lorafit import data
    from lorafit.recipe import DataSection

    section = DataSection(
        train=str(path), eval=str(path), eval_split=None, chat_template=recipe.data.chat_template, cache=False
    )
    return data.prepare(recipe.model_copy(update={"data": section}), tokenizer)


def general_report(
    model, tokenizer, recipe, path: Path, batch_size: int, max_kl: float, against: tuple[str, str] = ("base", "")
) -> dict:
    """How much the adapter changed behaviour off-task: drift on reference answers, and greedy answers kept;
    against the base, or against (name, adapter) such as a preference run's reference."""
    label, which = against
    prepared = _general_data(recipe, path, tokenizer)
    measured = drift(model, prepared.eval, batch_size, which)
    tasks = tasks_from(prepared.eval_rows)
    prompts = [t.prompt for t in tasks]
    base_out, adapter_out = both(model, tokenizer, prompts, GENERAL_NEW_TOKENS, batch_size, which)
    same = [normalise(b) == normalise(a) for b, a in zip(base_out, adapter_out)]
    report = {
        "data": str(path),
        "prompts": len(tasks),
        "against": label,
        "kl": round(measured["kl"], 5),
        f"{label}_loss": round(measured["base_loss"], 4),
        "adapter_loss": round(measured["adapter_loss"], 4),
        "same_answer": round(sum(same) / max(len(same), 1), 4),
        "max_kl": max_kl,
        "changed": [
            {"category": t.category, "prompt": last_turn(t.prompt), label: b, "adapter": a}
            for t, b, a, s in zip(tasks, base_out, adapter_out, same)
            if not s
        ],
    }
    if not math.isfinite(measured["kl"]) or measured["kl"] > max_kl:
        report["warning"] = (
            f"the adapter drifts off-task: KL {measured['kl']:.3f} nats/token from the {label} on {len(tasks)} "
            f"general prompts (threshold {max_kl}), their loss {measured['base_loss']:.3f} -> "
            f"{measured['adapter_loss']:.3f}, {sum(same)}/{len(same)} greedy answers unchanged"
        )
    return report


def show_general(general: dict | None, console) -> None:
    from rich.table import Table

    if not general:
        return
    label = general.get("against", "base")
    table = Table(title=f"off-task drift: {general['prompts']} general prompts ({Path(general['data']).name})")
    for col, justify in (("metric", "left"), (label, "right"), ("adapter", "right")):
        table.add_column(col, justify=justify)
    table.add_row("loss on reference answers", str(general[f"{label}_loss"]), str(general["adapter_loss"]))
    table.add_row(f"KL from {label} (nats/token)", "0", str(general["kl"]))
    table.add_row("greedy answers unchanged", "100%", f"{general['same_answer']:.0%}")
    console.print(table)
    if "warning" in general:
        console.print(f"[yellow]warning:[/] {general['warning']}", highlight=False)
