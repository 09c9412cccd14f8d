"""data.preserve: mix the base model's own answers to off-task prompts into training.

A narrow fine-tune moves the model everywhere, not only on its task (the quickstart's adapter answered
"How many days are in a week?" with a delivery window). Training on the base's greedy answers to general
prompts, beside the task data, asks the adapter to leave those answers alone: no outside data is needed,
and the targets are exactly the behaviour to keep. Answers are generated once per model and prompt, and
kept in the lorafit cache.
"""

from __future__ import annotations

import hashlib
import json
import random
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from lorafit.core import paths

if TYPE_CHECKING:
    from lorafit.recipe import Recipe

GENERAL_PROMPTS = paths.GENERAL_PROMPTS
NEW_TOKENS = 160  # answers that have not ended by then are dropped: a cut-off answer would teach stopping mid-sentence
VERSION = 1

Answerer = Callable[[list[list[dict]], str], list[tuple[str, bool]]]  # (prompts, chat template) -> (answer, ended)


def prompts_file(recipe: Recipe) -> Path:
    name = recipe.data.preserve
    return GENERAL_PROMPTS if name == "general" else Path(name)


def read_prompts(path: Path) -> list[list[dict]]:
    """Chat prompts: each row's messages up to (not including) a final assistant turn, if it has one."""
    from lorafit.core.errors import DataError

    prompts = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            msgs = json.loads(line)["messages"]
        except (ValueError, KeyError, TypeError):
            raise DataError(
                f"{path}:{n}: not a JSON object with a 'messages' list",
                'data.preserve takes chat JSONL: {"messages": [{"role": "user", "content": ...}]}',
            ) from None
        if msgs and isinstance(msgs[-1], dict) and msgs[-1].get("role") == "assistant":
            msgs = msgs[:-1]
        if not msgs or not all(isinstance(m, dict) and isinstance(m.get("content"), str) for m in msgs):
            raise DataError(
                f"{path}:{n}: a preserve prompt needs at least one turn with text content",
                "each row's messages end with the user turn to answer",
            )
        prompts.append(msgs)
    if not prompts:
        raise DataError(f"{path} has no prompts", "give data.preserve a chat JSONL with one prompt per line")
    return prompts


def pick(prompts: list, n: int, seed: int) -> list:
    """n prompts, seeded: each prompt once before any repeats."""
    order: list = []
    rng = random.Random(f"preserve:{seed}")
    while len(order) < n:
        order += rng.sample(prompts, len(prompts))
    return order[:n]


def _key(messages: list[dict]) -> str:
    return hashlib.sha256(json.dumps(messages, sort_keys=True).encode()).hexdigest()[:24]


def cache_file(recipe: Recipe, model_path: str) -> Path:
    """One answer cache per base model (path or hub id, revision, dtype, quantization): its answers differ."""
    from lorafit.core.paths import cache_root

    material = {
        "model": model_path,
        "revision": recipe.model.revision,
        "dtype": recipe.model.dtype,
        "quantization": recipe.quantization.model_dump(mode="json"),
        "template": recipe.data.chat_template,
        "new_tokens": NEW_TOKENS,
        "version": VERSION,
    }
    digest = hashlib.sha256(json.dumps(material, sort_keys=True).encode()).hexdigest()[:24]
    return cache_root() / "preserve" / f"{digest}.jsonl"


def _load(path: Path) -> dict[str, dict]:
    if not path.is_file():
        return {}
    out = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            row = json.loads(line)
            out[row["key"]] = row
        except (ValueError, KeyError, TypeError):
            continue  # a damaged cache line is regenerated
    return out


def records(
    recipe: Recipe, model_path: str, prompts: list[list[dict]], template: str, answer: Answerer | None
) -> tuple[list[dict], int]:
    """Chat records (prompt + the base's answer) for these prompts, generating the missing answers with
    `answer` and caching them. Without an answerer only cached answers are used. Returns the records and
    how many prompts had no usable answer (not generated yet, or an answer that did not end)."""
    from lorafit import runs

    path = cache_file(recipe, model_path)
    cached = _load(path)
    missing = list({_key(p): p for p in prompts if _key(p) not in cached}.values())
    if missing and answer is not None:
        for msgs, (text, ended) in zip(missing, answer(missing, template)):
            cached[_key(msgs)] = {"key": _key(msgs), "messages": msgs, "answer": text, "ended": ended}
        runs.atomic_write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in cached.values()))
    out, unusable = [], 0
    for msgs in prompts:
        row = cached.get(_key(msgs))
        if row is None or not row["ended"] or not row["answer"].strip():
            unusable += 1
            continue
        out.append({"messages": [*msgs, {"role": "assistant", "content": row["answer"]}]})
    return out, unusable


def base_answerer(recipe: Recipe, tokenizer, console=None) -> Answerer:
    """Greedy answers from the base model, loaded on first use (only when some answer is not cached)."""

    def answer(prompts: list[list[dict]], template: str) -> list[tuple[str, bool]]:
        from lorafit import models
        from lorafit.models.generation import chat_prompt, generate_with_ends

        if console is not None:
            console.print(
                f"data.preserve: generating the base model's answers to {len(prompts)} prompts (cached after)"
            )
        model = models.load_model(recipe).eval()
        texts = [chat_prompt(tokenizer, p, template) for p in prompts]
        out = generate_with_ends(model, tokenizer, texts, NEW_TOKENS, recipe.training.batch_size)
        del model
        return out

    return answer
