"""Preference data (DPO, KTO, ORPO, SimPO): read, validate line by line, split, weight, measure.

Three record shapes, detected per record from its keys (after data.fields):
  preference            prompt / chosen / rejected: strings, or chat messages (the prompt ends with a user turn,
                        each side is the assistant's reply)
  implicit_preference   chosen / rejected: two whole conversations that share every turn but the last
  unpaired_preference   prompt / completion / label (KTO); KTO also takes pairs, as one desirable and one
                        undesirable example each

The records reach TRL as TRL's own dataset shapes ({prompt, chosen, rejected} or {prompt, completion, label});
TRL tokenizes them with the chat template lorafit installs on the tokenizer, and only the completion carries loss
(its end-of-turn token included: the completion is the template's rendering of the whole conversation minus the
prompt's). Tokens are counted here too, for the statistics: lengths, truncation at training.max_length, which
side is longer, KTO's label balance.
"""

from __future__ import annotations

import random
import time
from collections import Counter
from typing import TYPE_CHECKING, Any

from lorafit.core.errors import DataError
from lorafit.data import formats, sources
from lorafit.data.results import DataStats, Prepared
from lorafit.data.scan import raise_or_skip, split_held_out, weigh
from lorafit.data.sources import Row

if TYPE_CHECKING:
    from lorafit.recipe import Recipe

PAIRED = ("preference", "implicit_preference")
UNPAIRED = "unpaired_preference"
KEYS = ("prompt", "chosen", "rejected", "completion", "label", "role", "content")


class Names:
    """lorafit's key -> the user's (data.fields, or a source's own fields), and the user's role values."""

    def __init__(self, fields: Any = None):
        self.keys = {k: getattr(fields, k, None) or k for k in KEYS} if fields is not None else {k: k for k in KEYS}
        self.roles = dict(getattr(fields, "roles", {}) or {})

    def __getitem__(self, key: str) -> str:
        return self.keys[key]


# ---------------------------------------------------------------- one record


def _messages(value: Any, what: str, names: Names) -> list[dict]:
    """A list of chat turns as [{role, content}], each checked; roles mapped by data.fields.roles."""
    if not value:
        raise ValueError(f"{what} is empty")
    out = []
    for i, turn in enumerate(value):
        if not isinstance(turn, dict):
            raise ValueError(f"{what}[{i}] must be an object with '{names['role']}' and '{names['content']}'")
        role = turn.get(names["role"])
        role = names.roles.get(role, role) if isinstance(role, str) else role
        if role not in formats.ROLES:
            raise ValueError(
                f"{what}[{i}]: unknown role {role!r} (expected system, user or assistant; map yours with "
                "data.fields.roles)"
            )
        content = formats.nonempty_str(turn.get(names["content"]), f"{what}[{i}].{names['content']}")
        out.append({"role": role, "content": content})
    return out


def _check_prompt(turns: list[dict], what: str) -> None:
    """An optional system turn, then user / assistant alternating, ending with the user's turn."""
    start = 1 if turns[0]["role"] == "system" else 0
    for i, turn in enumerate(turns[start:], start):
        expected = "user" if (i - start) % 2 == 0 else "assistant"
        if turn["role"] != expected:
            raise ValueError(
                f"{what}[{i}] is {turn['role']!r}, expected {expected!r} (turns alternate user/assistant after an "
                "optional system message)"
            )
    if len(turns) == start or turns[-1]["role"] != "user":
        raise ValueError(f"{what} must end with a user turn (the completion answers it)")


def _side(value: Any, key: str, names: Names, prompt: Any) -> Any:
    """One completion (chosen, rejected or completion): a string, or the assistant's turn as a message list.
    A whole conversation that starts with the prompt is accepted too; the prompt is taken off."""
    what = names[key]
    if value is None:
        raise ValueError(f"{what} is missing")
    if isinstance(value, str):
        formats.nonempty_str(value, what)
        return [{"role": "assistant", "content": value}] if isinstance(prompt, list) else value
    if not isinstance(value, list):
        raise ValueError(f"{what} must be a string or a list of chat messages, got {type(value).__name__}")
    turns = _messages(value, what, names)
    if isinstance(prompt, list) and len(turns) > len(prompt) and turns[: len(prompt)] == prompt:
        turns = turns[len(prompt) :]
    if len(turns) != 1 or turns[0]["role"] != "assistant":
        raise ValueError(f"{what} must be the assistant's reply (one assistant turn), or the whole conversation")
    return turns


def _prompt(value: Any, names: Names) -> Any:
    what = names["prompt"]
    if isinstance(value, str):
        return formats.nonempty_str(value, what)
    if not isinstance(value, list):
        raise ValueError(f"{what} must be a string or a list of chat messages, got {type(value).__name__}")
    turns = _messages(value, what, names)
    _check_prompt(turns, what)
    return turns


def _text(side: Any) -> str:
    return side if isinstance(side, str) else side[-1]["content"]


def _missing(record: dict, key: str, names: Names) -> ValueError:
    return ValueError(f"missing field '{names[key]}' (keys: {', '.join(map(str, record)) or 'none'})")


def detect(record: dict, names: Names) -> str:
    """The shape of one record from its keys."""
    if names["chosen"] in record or names["rejected"] in record:
        return "preference" if names["prompt"] in record else "implicit_preference"
    if names["completion"] in record or names["label"] in record:
        return UNPAIRED
    raise ValueError(
        f"not a preference record (keys: {', '.join(map(str, record)) or 'none'}): expected prompt/chosen/rejected, "
        "chosen/rejected conversations, or prompt/completion/label (KTO); data.fields renames keys"
    )


def canonical(record: dict, names: Names) -> tuple[str, dict]:
    """(shape, TRL's record) for one raw record; ValueError says what is wrong with it."""
    shape = detect(record, names)
    if shape == UNPAIRED:
        for key in ("prompt", "completion", "label"):
            if names[key] not in record:
                raise _missing(record, key, names)
        label = record[names["label"]]
        if not isinstance(label, bool):
            raise ValueError(f"{names['label']} must be true or false, got {label!r}")
        prompt = _prompt(record[names["prompt"]], names)
        completion = _side(record[names["completion"]], "completion", names, prompt)
        _same_kind(prompt, completion, "completion", names)
        return shape, {"prompt": prompt, "completion": completion, "label": label}
    for key in ("chosen", "rejected"):
        if names[key] not in record:
            raise _missing(record, key, names)
    chosen, rejected = record[names["chosen"]], record[names["rejected"]]
    if shape == "implicit_preference":
        if isinstance(chosen, str) or isinstance(rejected, str):
            raise ValueError(
                f"{names['chosen']} / {names['rejected']} as text need a '{names['prompt']}' field (only whole "
                "conversations carry their prompt)"
            )
        if not isinstance(chosen, list) or not isinstance(rejected, list):
            raise ValueError(f"{names['chosen']} and {names['rejected']} must be lists of chat messages")
        c = _messages(chosen, names["chosen"], names)
        r = _messages(rejected, names["rejected"], names)
        if c[:-1] != r[:-1]:
            raise ValueError(
                f"{names['chosen']} and {names['rejected']} have different prompts (the conversations must share "
                "every turn but the last)"
            )
        prompt = c[:-1]
        if not prompt:
            raise ValueError(f"{names['chosen']} has no prompt: the conversation needs turns before the reply")
        _check_prompt(prompt, names["chosen"])
        chosen, rejected = _side(c[-1:], "chosen", names, None), _side(r[-1:], "rejected", names, None)
    else:
        prompt = _prompt(record[names["prompt"]], names)
        for key, value in (("chosen", chosen), ("rejected", rejected)):
            if isinstance(value, list) and isinstance(prompt, list) and value and len(value) > 1:
                turns = _messages(value, names[key], names)
                if turns[: len(prompt)] != prompt:
                    raise ValueError(
                        f"{names[key]} is a conversation whose prompt differs from '{names['prompt']}' "
                        f"({names['chosen']} and {names['rejected']} must answer the same prompt)"
                    )
        chosen = _side(chosen, "chosen", names, prompt)
        rejected = _side(rejected, "rejected", names, prompt)
        _same_kind(prompt, chosen, "chosen", names)
        _same_kind(prompt, rejected, "rejected", names)
    if _text(chosen).strip() == _text(rejected).strip():
        raise ValueError(f"{names['chosen']} and {names['rejected']} are identical: the pair prefers nothing")
    return shape, {"prompt": prompt, "chosen": chosen, "rejected": rejected}


def _same_kind(prompt: Any, side: Any, key: str, names: Names) -> None:
    if isinstance(prompt, str) and not isinstance(side, str):
        raise ValueError(f"'{names['prompt']}' is text but {names[key]} is a chat message list; use one kind")


# ---------------------------------------------------------------- the whole dataset


def _as_chat(record: dict) -> dict:
    """A text record as chat messages: the prompt as the user's turn, each completion as the assistant's."""
    out = dict(record)
    if isinstance(out["prompt"], str):
        out["prompt"] = [{"role": "user", "content": out["prompt"]}]
    for key in ("chosen", "rejected", "completion"):
        if isinstance(out.get(key), str):
            out[key] = [{"role": "assistant", "content": out[key]}]
    return out


def _unpaired(record: dict) -> list[dict]:
    """KTO on pairs: the chosen reply is a desirable example, the rejected one an undesirable one."""
    if "completion" in record:
        return [record]
    return [
        {"prompt": record["prompt"], "completion": record["chosen"], "label": True},
        {"prompt": record["prompt"], "completion": record["rejected"], "label": False},
    ]


def _read(recipe: Recipe, resolved: list[sources.Source], problems: list[str], stats: DataStats) -> None:
    """Every source's rows as TRL records (row.record), invalid rows as file:line problems."""
    objective = recipe.training.objective
    for src in resolved:
        for part in src.parts:
            stats.files[part.name] = part.digest
            rows = sources.read_rows(part, problems)
            names = Names(src.spec.fields or recipe.data.fields)
            for row in rows:
                try:
                    shape, record = canonical(row.record, names)
                except (ValueError, DataError) as exc:
                    problems.append(f"{row.source}:{row.line}: {exc}")
                    continue
                if shape == UNPAIRED and objective != "kto":
                    problems.append(
                        f"{row.source}:{row.line}: an unpaired record ({names['prompt']}/{names['completion']}/"
                        f"{names['label']}) has no rejected side to prefer against; it needs training.objective: kto"
                    )
                    continue
                row.meta = {k: row.record[k] for k in formats.EXTRA_KEYS if k in row.record}
                row.record, row.format = record, shape
                src.rows.append(row)
        shapes = Counter(row.format for row in src.rows)
        src.format = shapes.most_common(1)[0][0] if shapes else "preference"


def _texts(record: dict, template: str, tokenizer) -> tuple[str, list[str]]:
    """The prompt as the model sees it before its reply, and prompt + each completion in full."""
    sides = [record[k] for k in ("chosen", "rejected", "completion") if k in record]
    if isinstance(record["prompt"], str):
        eos = tokenizer.eos_token or ""
        return record["prompt"], [record["prompt"] + side + eos for side in sides]

    def render(turns, generation_prompt):
        return tokenizer.apply_chat_template(
            turns, chat_template=template, tokenize=False, add_generation_prompt=generation_prompt
        )

    return render(record["prompt"], True), [render(record["prompt"] + side, False) for side in sides]


def _measure(rows: list[Row], template: str, tokenizer, recipe: Recipe, stats: DataStats, count: bool) -> list[Row]:
    """Token lengths of every side; truncation at training.max_length counted (or long rows dropped with
    data.drop_long). Returns the rows kept."""
    limit = recipe.training.max_length
    rendered = [_texts(row.record, template, tokenizer) for row in rows]
    flat = [text for prompt, sides in rendered for text in (prompt, *sides)]
    ids = tokenizer(flat, add_special_tokens=False)["input_ids"] if flat else []
    kept, at = [], 0
    p = stats.preference
    for row, (_, sides) in zip(rows, rendered):
        prompt_len, lengths = len(ids[at]), [len(x) for x in ids[at + 1 : at + 1 + len(sides)]]
        at += 1 + len(sides)
        longest = max(lengths)
        if longest > limit and recipe.data.drop_long:
            stats.dropped_long += count
            continue
        kept.append(row)
        if not count:
            continue
        stats.lengths.append(longest)
        stats.tokens += sum(min(n, limit) for n in lengths)
        trained = [max(0, min(n, limit) - prompt_len) for n in lengths]
        stats.trained_tokens += sum(trained)
        stats.most_trained = max(stats.most_trained, *trained)
        if longest > limit:
            stats.truncated += 1
            stats.tokens_lost += sum(max(0, n - limit) for n in lengths)
        if prompt_len >= limit:
            p["prompt_fills_max_length"] = p.get("prompt_fills_max_length", 0) + 1
        if "chosen" in row.record:
            chosen, rejected = lengths
            p["pairs"] = p.get("pairs", 0) + 1
            p["chosen_longer"] = p.get("chosen_longer", 0) + (chosen > rejected)
            p["chosen_truncated"] = p.get("chosen_truncated", 0) + (chosen > limit)
            p["rejected_truncated"] = p.get("rejected_truncated", 0) + (rejected > limit)
        else:
            key = "desirable" if row.record["label"] else "undesirable"
            p[key] = p.get(key, 0) + 1
    return kept


def _summarise(stats: DataStats, objective: str) -> None:
    """Shares and warnings from the counts: length bias, truncation, KTO's label balance."""
    p = stats.preference
    if p.get("pairs"):
        share = p["chosen_longer"] / p["pairs"]
        p["chosen_longer_share"] = round(share, 3)
        if share >= 0.8 or share <= 0.2:
            stats.warnings.append(
                f"length bias: the chosen reply is the longer one in {share:.0%} of {p['pairs']} pairs; a "
                "preference objective can learn the length instead of the quality"
            )
    if p.get("chosen_truncated") or p.get("rejected_truncated"):
        stats.warnings.append(
            f"{p.get('chosen_truncated', 0)} chosen and {p.get('rejected_truncated', 0)} rejected sides are longer "
            "than training.max_length and are cut; raise it or set data.drop_long: true"
        )
    if p.get("prompt_fills_max_length"):
        stats.warnings.append(
            f"{p['prompt_fills_max_length']} prompts alone fill training.max_length: TRL drops those examples"
        )
    if objective == "kto":  # each pair is one desirable and one undesirable example
        good, bad = p.get("desirable", 0) + p.get("pairs", 0), p.get("undesirable", 0) + p.get("pairs", 0)
        p["desirable"], p["undesirable"] = good, bad
        p["desirable_share"] = round(good / (good + bad), 3) if good + bad else None
        if good and bad and not 0.5 <= good / bad <= 2:
            stats.warnings.append(
                f"KTO labels are unbalanced ({good} desirable, {bad} undesirable): set preference.desirable_weight "
                "/ undesirable_weight so that weight x count is about equal on both sides"
            )


def _dataset(rows: list[Row], objective: str, seed: int):
    from datasets import Dataset

    records = [row.record for row in rows]
    if objective == "kto":
        records = [r for record in records for r in _unpaired(record)]
        # TRL samples KTO data in order, and its KL term pairs each example with its neighbour's completion:
        # shuffled here (seeded), after pairs are split, so neighbours are not one pair's two sides
        random.Random(seed).shuffle(records)
    return Dataset.from_list(records) if records else None


def prepare_for(recipe: Recipe, tokenizer, answer=None) -> Prepared:
    """The recipe's data for its objective: SFT's tokenized examples (lorafit.data.prepare), or preference records."""
    if recipe.training.objective == "sft":
        from lorafit import data

        return data.prepare(recipe, tokenizer, answer)
    return prepare(recipe, tokenizer)


def prepare(recipe: Recipe, tokenizer) -> Prepared:
    """TRL-ready train / held-out datasets of preference records, and their statistics.

    Installs the chat template on the tokenizer (TRL renders conversations with the tokenizer's template)."""
    started = time.perf_counter()
    objective = recipe.training.objective
    template, warning = formats.resolve_chat_template(recipe.data.chat_template, tokenizer)
    train_src = [sources.resolve(s, "train") for s in recipe.data.sources("train")]
    eval_src = [sources.resolve(s, "eval") for s in recipe.data.sources("eval")]
    stats, problems = DataStats(), []
    _read(recipe, train_src + eval_src, problems, stats)
    raise_or_skip(problems, recipe, stats)
    everything = train_src + eval_src
    stats.rows = sum(len(s.rows) for s in everything) + stats.bad_rows
    if not any(s.rows for s in everything):
        raise DataError(
            f"no usable preference records in {', '.join(s.name for s in train_src)}",
            "check data.train and data.on_bad_rows",
        )
    kinds = {s.format for s in everything if s.rows}
    stats.format = next(iter(kinds)) if len(kinds) == 1 else "mixed"
    chat = any(not isinstance(row.record["prompt"], str) for s in everything for row in s.rows)
    if chat:  # one kind for the whole dataset: text records become chat messages too
        for s in everything:
            for row in s.rows:
                row.record = _as_chat(row.record)
        if warning:
            stats.warnings.append(warning)

    train_rows, held = split_held_out(train_src, recipe)
    if eval_src:
        held = [row for s in eval_src for row in s.rows]
    train = weigh(train_src, train_rows, eval_src, held, recipe, stats)
    train = _measure(train, template, tokenizer, recipe, stats, count=True)
    held = _measure(held, template, tokenizer, recipe, stats, count=False)
    if not train:
        raise DataError("no usable training records left", "check data.train, data.drop_long and data.on_bad_rows")
    _summarise(stats, objective)
    train_set, eval_set = (
        _dataset(train, objective, recipe.training.seed),
        _dataset(held, objective, recipe.training.seed),
    )
    stats.train_rows, stats.eval_rows = len(train_set), len(eval_set) if eval_set is not None else 0
    if chat:
        tokenizer.chat_template = template  # what TRL renders with, and what the adapter is saved with
    stats.seconds = time.perf_counter() - started
    return Prepared(train_set, eval_set, stats, held, [f"{row.source}:{row.line}" for row in train])
