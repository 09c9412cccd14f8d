"""Scoring what a model says and how likely it finds held-out text: the task metric (an answer contains the
row's `reference` and none of its `avoid` phrases), greedy answers in batches, and token-weighted loss. Shared by `lorafit eval`'s SFT and
preference reports."""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field

UNCATEGORISED = "(none)"
GENERATE_BATCH = 16  # prompts decoded together at least: more per step costs little more than one on a CPU


@dataclass
class Task:
    prompt: str | list  # chat messages up to the answer, or a plain prompt
    expected: str
    references: list[str]  # every phrase a correct answer contains
    category: str
    where: str
    avoid: list[str] = field(default_factory=list)  # phrases a correct answer must not contain


def batches(dataset, batch_size: int):
    """Right-padded (input_ids, attention_mask, labels) batches of a tokenized dataset."""
    import torch

    for start in range(0, len(dataset), batch_size):
        rows = dataset[start : start + batch_size]
        width = max(len(x) for x in rows["input_ids"])
        ids = torch.zeros(len(rows["input_ids"]), width, dtype=torch.long)
        labels = torch.full_like(ids, -100)
        mask = torch.zeros_like(ids)
        for i, (x, y) in enumerate(zip(rows["input_ids"], rows["labels"])):
            ids[i, : len(x)], labels[i, : len(y)], mask[i, : len(x)] = torch.tensor(x), torch.tensor(y), 1
        yield ids, mask, labels


def logits_at(model, ids, mask):
    """Float logits at the real positions (prompt tuning prepends virtual tokens: they are cut off)."""
    import torch

    with torch.no_grad():
        logits = model(input_ids=ids.to(model.device), attention_mask=mask.to(model.device)).logits.float()
    return logits[:, -ids.shape[1] :]


def token_loss(model, dataset, batch_size: int) -> float:
    """Mean cross-entropy over all trained tokens (token-weighted, like training)."""
    import torch.nn.functional as F

    total, count = 0.0, 0
    for ids, mask, labels in batches(dataset, batch_size):
        logits = logits_at(model, ids, mask)
        shifted = labels[:, 1:].to(logits.device)
        total += F.cross_entropy(
            logits[:, :-1].reshape(-1, logits.size(-1)), shifted.reshape(-1), ignore_index=-100, reduction="sum"
        ).item()
        count += int((shifted != -100).sum())
    return total / max(count, 1)


def normalise(text: str) -> str:
    return " ".join(text.lower().split())


def phrases(record: dict, key: str) -> list[str]:
    """A row's `reference` or `avoid`: one phrase or a list of them; [] when absent or of another shape."""
    value = record.get(key)
    if isinstance(value, list) and all(isinstance(v, str) and v for v in value):
        return list(value)
    return [value] if isinstance(value, str) and value else []


def references(record: dict, expected: str) -> list[str]:
    return phrases(record, "reference") or [expected]


def tasks_from(rows, style: str = "plain") -> list[Task]:
    """One task per held-out row whose answer can be generated: chat rows (the last assistant turn is the
    answer, every turn before it the prompt) and prompt/completion rows; alpaca rows as data.prompt_style
    renders them in training."""
    from lorafit.data.formats import alpaca_text, plain_text, to_messages

    tasks = []
    for row in rows:
        msgs = None if plain_text(row.format, style) else to_messages(row.record, row.format, style=style)
        if msgs is not None:
            prompt, expected = msgs[:-1], msgs[-1]["content"]
        elif row.format == "alpaca":
            prompt, expected = alpaca_text(row.record)
        elif row.format == "prompt_completion":
            prompt, expected = row.record["prompt"], row.record["completion"]
        else:
            continue
        category = row.record.get("category")
        tasks.append(
            Task(
                prompt,
                expected,
                references(row.record, expected),
                str(category) if category not in (None, "") else UNCATEGORISED,
                f"{row.source}:{row.line}",
                phrases(row.record, "avoid"),
            )
        )
    return tasks


def correct(answer: str, task: Task) -> bool:
    """The task metric: every reference phrase appears in the answer and no `avoid` phrase does (case and spacing
    ignored)."""
    said = normalise(answer)
    return all(normalise(r) in said for r in task.references) and not any(normalise(a) in said for a in task.avoid)


def answers(model, tokenizer, prompts: list, max_new_tokens: int, batch_size: int) -> list[str]:
    """Greedy answers in order. Chat prompts carry the template's own special tokens; plain prompts get
    the tokenizer's (its BOS, if it adds one), as their examples did in training."""
    from lorafit.models.generation import chat_prompt, generate

    out = [""] * len(prompts)
    chat = [(i, chat_prompt(tokenizer, p)) for i, p in enumerate(prompts) if isinstance(p, list)]
    plain = [(i, p) for i, p in enumerate(prompts) if not isinstance(p, list)]
    for group, special in ((chat, False), (plain, True)):
        texts = (
            generate(model, tokenizer, [p for _, p in group], max_new_tokens, batch_size, add_special_tokens=special)
            if group
            else []
        )
        for (i, _), text in zip(group, texts):
            out[i] = text
    return out


@contextmanager
def merged(model):
    """Generate with LoRA-family weights merged into the base (PEFT merge_adapter): decoding is bound by the
    number of small ops per token, and an unmerged adapter adds two matmuls to every adapted layer. The
    weights are unmerged after, back to the base's within float rounding. Other adapters run as they are."""
    config = getattr(model, "peft_config", {}).get(getattr(model, "active_adapter", "default"))
    quantized = getattr(model, "is_loaded_in_4bit", False) or getattr(model, "is_loaded_in_8bit", False)
    can = config is not None and not config.is_prompt_learning and not quantized and hasattr(model, "merge_adapter")
    if can:
        model.merge_adapter()
    try:
        yield model
    finally:
        if can:
            model.unmerge_adapter()


@contextmanager
def as_model(model, which: str | None, merge: bool = False):
    """The model `which` names active for the block: an adapter's name, or the bare base ("" or None). With
    merge, a LoRA-family adapter runs merged (for generation, see merged)."""
    if not which:
        with model.disable_adapter():
            yield model
        return
    model.set_adapter(which)
    try:
        if merge:
            with merged(model):
                yield model
        else:
            yield model
    finally:
        model.set_adapter("default")


def last_turn(prompt: str | list) -> str:
    return prompt[-1]["content"] if isinstance(prompt, list) else prompt


def score_tasks(tasks: list[Task], outputs: dict[str, list[str]]) -> dict:
    """Accuracy of each model's answers (base, adapter, ...), overall and per category, and every example the
    adapter gets wrong."""
    hits = {side: [correct(o, t) for o, t in zip(outs, tasks)] for side, outs in outputs.items()}
    categories: dict[str, dict] = {}
    for name in sorted({t.category for t in tasks}):
        idx = [i for i, t in enumerate(tasks) if t.category == name]
        categories[name] = {
            "examples": len(idx),
            **{side: round(sum(h[i] for i in idx) / len(idx), 4) for side, h in hits.items()},
        }
    failures = [
        {
            "where": t.where,
            "category": t.category,
            "prompt": last_turn(t.prompt),
            "reference": t.references,
            **({"avoid": t.avoid} if t.avoid else {}),
            "answer": a,
            "expected": t.expected,
        }
        for t, a, ok in zip(tasks, outputs["adapter"], hits["adapter"])
        if not ok
    ]
    exact = {
        side: round(sum(normalise(o) == normalise(t.expected) for o, t in zip(outs, tasks)) / len(tasks), 4)
        for side, outs in outputs.items()
    }
    return {
        "accuracy": {side: round(sum(h) / len(h), 4) for side, h in hits.items()},
        "exact_match": exact,
        "categories": categories,
        "failures": failures,
    }
