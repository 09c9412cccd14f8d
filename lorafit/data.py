"""Training data: read, validate line by line, render with the chat template, mask, split.

Every example becomes a list of (text, trained) segments before tokenization, so one masking
rule serves every format: chat turns come from the tokenizer's own template, and only the
assistant's content and its end-of-turn token carry loss by default.
"""

from __future__ import annotations

import csv
import hashlib
import json
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lorafit.errors import DataError, MissingError

if TYPE_CHECKING:
    from lorafit.recipe import Recipe

SUFFIXES = (".jsonl", ".json", ".parquet", ".csv")
ROLES = {"system", "user", "assistant"}
SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "system": "system"}
MAX_SHOWN = 20

# For base models without a chat template: ChatML, the de-facto standard.
DEFAULT_CHAT_TEMPLATE = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


@dataclass
class Row:
    source: str  # file name
    line: int  # 1-based line (JSONL, CSV) or record index (JSON array, parquet)
    record: dict


@dataclass
class Example:
    segments: list[tuple[str, bool]]  # (text, carries loss)
    where: str


@dataclass
class DataStats:
    files: dict[str, str] = field(default_factory=dict)  # path -> sha256
    rows: int = 0
    bad_rows: int = 0
    format: str = ""
    train_rows: int = 0
    eval_rows: int = 0
    truncated: int = 0
    tokens_lost: int = 0
    dropped_long: int = 0
    fully_masked: int = 0
    lengths: list[int] = field(default_factory=list)
    trained_tokens: int = 0

    def summary(self) -> dict[str, Any]:
        lengths = sorted(self.lengths)
        pct = (lambda q: lengths[min(len(lengths) - 1, int(q * len(lengths)))]) if lengths else (lambda q: 0)
        return {
            "files": self.files,
            "format": self.format,
            "rows": self.rows,
            "bad_rows_skipped": self.bad_rows,
            "train_rows": self.train_rows,
            "eval_rows": self.eval_rows,
            "truncated": self.truncated,
            "tokens_lost_to_truncation": self.tokens_lost,
            "dropped_long": self.dropped_long,
            "fully_masked": self.fully_masked,
            "tokens": {"min": pct(0), "median": pct(0.5), "p95": pct(0.95), "max": pct(1), "total": sum(lengths)},
            "trained_tokens": self.trained_tokens,
        }


# ---------------------------------------------------------------- reading


def _expand(spec: str | list[str]) -> list[Path]:
    paths: list[Path] = []
    for item in [spec] if isinstance(spec, str) else spec:
        p = Path(item).expanduser()
        if p.is_dir():
            found = sorted(f for f in p.iterdir() if f.suffix in SUFFIXES)
            if not found:
                raise DataError(f"{p}: no {'/'.join(SUFFIXES)} files in this directory")
            paths.extend(found)
        elif p.is_file():
            paths.append(p)
        elif p.suffix in SUFFIXES or "/" not in item or item.startswith((".", "/", "~")):
            raise MissingError(f"data file not found: {item}", "check data.train / data.eval (relative paths resolve against the recipe file)")
        else:
            raise MissingError(f"data: {item!r} is not a local file and hub datasets are not loaded offline", "download it and point data.train at the file")
    return paths


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def read_rows(path: Path, problems: list[str]) -> list[Row]:
    """All records of one file; unparseable lines go to `problems` as file:line messages."""
    rows: list[Row] = []
    name = str(path)
    if path.suffix == ".jsonl":
        with path.open(encoding="utf-8") as f:
            for n, text in enumerate(f, 1):
                if not text.strip():
                    continue
                try:
                    obj = json.loads(text)
                except json.JSONDecodeError as exc:
                    problems.append(f"{name}:{n}: invalid JSON: {exc.msg} (column {exc.colno})")
                    continue
                if not isinstance(obj, dict):
                    problems.append(f"{name}:{n}: expected a JSON object, got {type(obj).__name__}")
                    continue
                rows.append(Row(name, n, obj))
    elif path.suffix == ".json":
        try:
            obj = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            problems.append(f"{name}:{exc.lineno}: invalid JSON: {exc.msg}")
            return rows
        items = obj if isinstance(obj, list) else [obj]
        rows.extend(Row(name, i, o) for i, o in enumerate(items, 1) if isinstance(o, dict))
    elif path.suffix == ".csv":
        with path.open(encoding="utf-8", newline="") as f:
            rows.extend(Row(name, i, dict(r)) for i, r in enumerate(csv.DictReader(f), 2))
    elif path.suffix == ".parquet":
        import pyarrow.parquet as pq

        rows.extend(Row(name, i, r) for i, r in enumerate(pq.read_table(path).to_pylist(), 1))
    else:
        raise DataError(f"{name}: unsupported file type {path.suffix!r}", f"use one of {', '.join(SUFFIXES)}")
    return rows


# ---------------------------------------------------------------- formats


def detect_format(record: dict) -> str:
    if "messages" in record:
        return "messages"
    if "conversations" in record:
        return "sharegpt"
    if "instruction" in record and "output" in record:
        return "alpaca"
    if "prompt" in record and "completion" in record:
        return "prompt_completion"
    if "text" in record:
        return "text"
    raise DataError(
        f"cannot detect the data format from keys {sorted(record)}",
        "set data.format (messages | sharegpt | alpaca | prompt_completion | text)",
    )


def _nonempty_str(value: Any, what: str) -> str:
    if not isinstance(value, str):
        raise ValueError(f"{what} must be a string, got {type(value).__name__}")
    if not value.strip():
        raise ValueError(f"{what} is empty")
    return value


def to_messages(record: dict, fmt: str) -> list[dict] | None:
    """Chat formats as a validated list of {role, content}; None for plain-text formats."""
    if fmt == "messages":
        raw = record.get("messages")
        if not isinstance(raw, list) or not raw:
            raise ValueError("'messages' must be a non-empty list")
        msgs = []
        for i, m in enumerate(raw):
            if not isinstance(m, dict) or "role" not in m or "content" not in m:
                raise ValueError(f"messages[{i}] needs 'role' and 'content'")
            if m["role"] not in ROLES:
                raise ValueError(f"messages[{i}]: unknown role {m['role']!r} (expected system, user or assistant)")
            msgs.append({"role": m["role"], "content": _nonempty_str(m["content"], f"messages[{i}].content")})
    elif fmt == "sharegpt":
        raw = record.get("conversations")
        if not isinstance(raw, list) or not raw:
            raise ValueError("'conversations' must be a non-empty list")
        msgs = []
        for i, m in enumerate(raw):
            if not isinstance(m, dict) or m.get("from") not in SHAREGPT_ROLES:
                raise ValueError(f"conversations[{i}]: 'from' must be one of {sorted(SHAREGPT_ROLES)}")
            msgs.append({"role": SHAREGPT_ROLES[m["from"]], "content": _nonempty_str(m.get("value"), f"conversations[{i}].value")})
    elif fmt == "alpaca":
        instruction = _nonempty_str(record.get("instruction"), "instruction")
        extra = record.get("input") or ""
        if not isinstance(extra, str):
            raise ValueError("input must be a string")
        user = f"{instruction}\n\n{extra}" if extra.strip() else instruction
        msgs = [{"role": "user", "content": user}, {"role": "assistant", "content": _nonempty_str(record.get("output"), "output")}]
        if isinstance(record.get("system"), str) and record["system"].strip():
            msgs.insert(0, {"role": "system", "content": record["system"]})
    else:
        return None
    _check_order(msgs)
    return msgs


def _check_order(msgs: list[dict]) -> None:
    body = msgs[1:] if msgs[0]["role"] == "system" else msgs
    if any(m["role"] == "system" for m in body):
        raise ValueError("a system message may only come first")
    for i, m in enumerate(body):
        expected = "user" if i % 2 == 0 else "assistant"
        if m["role"] != expected:
            raise ValueError(f"turn {i + 1} is {m['role']!r}, expected {expected!r} (turns alternate user/assistant)")
    if not body or body[-1]["role"] != "assistant":
        raise ValueError("the conversation must end with an assistant turn")


# ---------------------------------------------------------------- rendering and masks


def _template(tokenizer) -> str:
    return tokenizer.chat_template or DEFAULT_CHAT_TEMPLATE


def render(record: dict, fmt: str, tokenizer, train_on: str) -> list[tuple[str, bool]]:
    """Split an example into (text, trained) segments using the chat template's own rendering."""
    msgs = to_messages(record, fmt)
    eos = tokenizer.eos_token or ""
    if msgs is None:
        if fmt == "prompt_completion":
            prompt = _nonempty_str(record.get("prompt"), "prompt")
            completion = _nonempty_str(record.get("completion"), "completion")
            return [(prompt, train_on == "all"), (completion + eos, True)]
        return [(_nonempty_str(record.get("text"), "text") + eos, True)]
    template = _template(tokenizer)

    def text(upto: int, generation_prompt: bool) -> str:
        return tokenizer.apply_chat_template(
            msgs[:upto], chat_template=template, tokenize=False, add_generation_prompt=generation_prompt
        )

    assistant_turns = [i for i, m in enumerate(msgs) if m["role"] == "assistant"]
    trained = set(assistant_turns[-1:] if train_on == "last_assistant" else assistant_turns)
    segments: list[tuple[str, bool]] = []
    done = ""
    for i in assistant_turns:
        prompt = text(i, True)
        turn = text(i + 1, False)
        if not (prompt.startswith(done) and turn.startswith(prompt)):
            raise DataError("the chat template does not render conversations prefix by prefix", "set data.chat_template to a standard template (e.g. ChatML)")
        reply = turn[len(prompt):]
        reply_core = reply.rstrip()  # the end-of-turn token is trained; the newline after it is not
        segments.append((prompt[len(done):], train_on == "all"))
        segments.append((reply_core, i in trained or train_on == "all"))
        segments.append((reply[len(reply_core):], train_on == "all"))
        done = turn
    full = text(len(msgs), False)
    if len(full) > len(done):
        segments.append((full[len(done):], train_on == "all"))
    return [s for s in segments if s[0]]


def tokenize(segments: list[tuple[str, bool]], tokenizer) -> tuple[list[int], list[int]]:
    """input_ids and labels (-100 where no loss) for one rendered example."""
    ids: list[int] = []
    labels: list[int] = []
    for text, trained in segments:
        # Segments are tokenized separately so a token never straddles a mask boundary. Templates
        # put their own special tokens in the text, so the tokenizer must not add more.
        piece = tokenizer(text, add_special_tokens=False)["input_ids"]
        ids.extend(piece)
        labels.extend(piece if trained else [-100] * len(piece))
    return ids, labels


# ---------------------------------------------------------------- the whole pipeline


@dataclass
class Prepared:
    train: Any  # datasets.Dataset with input_ids, labels
    eval: Any | None
    stats: DataStats
    eval_rows: list[Row]  # held-out raw rows, for generation metrics


def _load_rows(spec, problems: list[str], stats: DataStats) -> list[Row]:
    rows: list[Row] = []
    for path in _expand(spec):
        stats.files[str(path)] = sha256(path)
        rows.extend(read_rows(path, problems))
    return rows


def _examples(rows: list[Row], fmt: str, tokenizer, train_on: str, problems: list[str]) -> list[Example]:
    out = []
    for row in rows:
        try:
            out.append(Example(render(row.record, fmt, tokenizer, train_on), f"{row.source}:{row.line}"))
        except ValueError as exc:
            problems.append(f"{row.source}:{row.line}: {exc}")
    return out


def _raise_or_skip(problems: list[str], recipe: Recipe, stats: DataStats) -> None:
    if not problems:
        return
    if recipe.data.on_bad_rows == "skip":
        stats.bad_rows += len(problems)
        return
    shown = "\n".join(problems[:MAX_SHOWN])
    more = f"\n... and {len(problems) - MAX_SHOWN} more" if len(problems) > MAX_SHOWN else ""
    raise DataError(
        f"{len(problems)} bad record(s):\n{shown}{more}",
        "fix the lines above, or set data.on_bad_rows: skip to drop them",
    )


def scan(recipe: Recipe, tokenizer) -> tuple[list[Example], list[Example], list[Row], DataStats]:
    """Read and validate all data, render it and split it. Raises DataError with file:line problems."""
    stats = DataStats()
    problems: list[str] = []
    rows = _load_rows(recipe.data.train, problems, stats)
    eval_rows = _load_rows(recipe.data.eval, problems, stats) if recipe.data.eval else []
    stats.rows = len(rows) + len(eval_rows)
    if not rows and not problems:
        raise DataError(f"no records in {recipe.data.train}")
    fmt = recipe.data.format
    if fmt == "auto" and rows:
        fmt = detect_format(rows[0].record)
    stats.format = fmt
    if recipe.data.eval is None and recipe.data.eval_split:
        order = list(range(len(rows)))
        random.Random(recipe.training.seed).shuffle(order)
        n_eval = max(1, round(len(rows) * recipe.data.eval_split))
        held = set(order[:n_eval])
        eval_rows = [r for i, r in enumerate(rows) if i in held]
        rows = [r for i, r in enumerate(rows) if i not in held]
    train = _examples(rows, fmt, tokenizer, recipe.data.train_on, problems)
    held_out = _examples(eval_rows, fmt, tokenizer, recipe.data.train_on, problems)
    _raise_or_skip(problems, recipe, stats)
    if not train:
        raise DataError("no usable training records left", "check data.train and data.on_bad_rows")
    stats.train_rows, stats.eval_rows = len(train), len(held_out)
    return train, held_out, eval_rows, stats


def _encode(examples: list[Example], tokenizer, recipe: Recipe, stats: DataStats, count: bool) -> dict[str, list]:
    columns: dict[str, list] = {"input_ids": [], "labels": []}
    limit = recipe.training.max_length
    for ex in examples:
        ids, labels = tokenize(ex.segments, tokenizer)
        if count:
            stats.lengths.append(len(ids))
        if len(ids) > limit:
            if count:
                stats.truncated += 1
                stats.tokens_lost += len(ids) - limit
            if recipe.data.drop_long:
                stats.dropped_long += count
                continue
            ids, labels = ids[:limit], labels[:limit]
        # Labels are shifted inside the model, so the first position never counts.
        if all(label == -100 for label in labels[1:]):
            stats.fully_masked += count
            continue
        if count:
            stats.trained_tokens += sum(label != -100 for label in labels[1:])
        columns["input_ids"].append(ids)
        columns["labels"].append(labels)
    return columns


def prepare(recipe: Recipe, tokenizer) -> Prepared:
    """Tokenized train/eval datasets ready for SFTTrainer (input_ids + labels, already truncated)."""
    from datasets import Dataset

    train, held_out, eval_rows, stats = scan(recipe, tokenizer)
    train_cols = _encode(train, tokenizer, recipe, stats, count=True)
    if not train_cols["input_ids"]:
        raise DataError(
            f"all {len(train)} training examples have no trainable token (every label is masked)",
            "check data.train_on and the chat template; assistant turns must be present and within training.max_length",
        )
    eval_cols = _encode(held_out, tokenizer, recipe, stats, count=False)
    train_ds = Dataset.from_dict(train_cols)
    eval_ds = Dataset.from_dict(eval_cols) if eval_cols["input_ids"] else None
    return Prepared(train_ds, eval_ds, stats, eval_rows)
