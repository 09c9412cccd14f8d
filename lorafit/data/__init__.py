"""Training data: read every source, validate line by line, render, mask, split, weight, tokenize.

One direction: sources (files, directories, hub) -> rows with file:line -> canonical records
(data.fields) -> (text, trained) segments from the chat template -> input_ids + labels.
Formats live in `lorafit.formats`, file and hub reading in `lorafit.sources`. The tokenized
result is cached by content (files, tokenizer, settings), so a re-run skips all of this.
"""

from __future__ import annotations

import hashlib
import json
import random
import shutil
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lorafit.core.errors import DataError
from lorafit.data import formats, sources
from lorafit.data.sources import Row

if TYPE_CHECKING:
    from lorafit.recipe import Recipe

MAX_SHOWN = 20
CACHE_VERSION = 2  # raise it whenever the cached examples change shape: older entries are then never read
CACHE_MIN_SECONDS = 2.0  # only data that took this long to prepare is worth a cache entry
CACHE_KEEP = 8  # most recent entries kept


@dataclass
class Example:
    segments: list[tuple[str, bool]]  # (text, carries loss)
    where: str  # file:line
    source: int = 0  # index into data.train / data.eval
    bos: bool = False  # starts with the BOS id (text / prompt_completion rows of a tokenizer that adds one)


@dataclass
class DataStats:
    files: dict[str, str] = field(default_factory=dict)  # path -> sha256 (hub: name -> fingerprint)
    sources: list[dict] = field(default_factory=list)  # per data.train/data.eval entry: rows, weight, counts
    rows: int = 0
    bad_rows: int = 0
    format: str = ""  # one format, or "mixed"
    train_rows: int = 0  # after weights
    eval_rows: int = 0
    truncated: int = 0
    tokens_lost: int = 0
    dropped_long: int = 0
    fully_masked: int = 0
    lengths: list[int] = field(default_factory=list)  # train example lengths before truncation
    tokens: int = 0  # train tokens after truncation
    trained_tokens: int = 0
    most_trained: int = 0  # the largest trained-token count of one train example
    ignored_fields: dict[str, int] = field(default_factory=dict)  # record keys no format uses -> rows
    warnings: list[str] = field(default_factory=list)  # for the CLI to show (e.g. no chat template)
    preference: dict[str, Any] = field(default_factory=dict)  # preference data: pairs, length bias, KTO labels
    cached: bool = False
    seconds: float = 0.0

    def plan_inputs(self, max_length: int, packing: bool = False) -> dict[str, Any]:
        """What the memory plan needs from the data: the longest example (it bounds the padded batch) and
        the share of its positions the trained-positions LM head may score. The plan's batch is micro-batch
        x longest positions, so most_trained / longest bounds any batch's trained positions from above.
        Packed rows are filled up to max_length, with any mix of examples: the whole row may be trained."""
        if packing:
            return {"seq_len": max_length, "trained_fraction": 1.0}
        longest = max(self.lengths, default=None)
        if longest and self.most_trained:
            fraction = min(1.0, self.most_trained / min(longest, max_length))  # examples are cut to max_length
        else:  # a tokenization cache written before most_trained was counted
            fraction = self.trained_tokens / self.tokens if self.tokens else 1.0
        return {"seq_len": longest, "trained_fraction": fraction}

    def summary(self) -> dict[str, Any]:
        lengths = sorted(self.lengths)
        pct = (lambda q: lengths[min(len(lengths) - 1, int(q * len(lengths)))]) if lengths else (lambda q: 0)
        return {
            "files": self.files,
            "sources": self.sources,
            "format": self.format,
            "rows": self.rows,
            "bad_rows_skipped": self.bad_rows,
            "train_rows": self.train_rows,
            "eval_rows": self.eval_rows,
            "truncated": self.truncated,
            "tokens_lost_to_truncation": self.tokens_lost,
            "dropped_long": self.dropped_long,
            "fully_masked": self.fully_masked,
            "tokens": {"min": pct(0), "median": pct(0.5), "p95": pct(0.95), "max": pct(1), "total": self.tokens},
            "trained_tokens": self.trained_tokens,
            "most_trained_tokens": self.most_trained,
            "ignored_fields": self.ignored_fields,
            "warnings": self.warnings,
            **({"preference": self.preference} if self.preference else {}),
            "cached": self.cached,
            "seconds": round(self.seconds, 2),
        }


# ---------------------------------------------------------------- reading and validating


def _read(resolved: list[sources.Source], recipe: Recipe, problems: list[str], stats: DataStats) -> None:
    """Parse every source into canonical rows: format detected per source, data.fields applied."""
    for src in resolved:
        for part in src.parts:
            stats.files[part.name] = part.digest
            src.rows.extend(sources.read_rows(part, problems))
        fields = src.spec.fields or recipe.data.fields
        fmt = recipe.data.format if recipe.data.format != "auto" else _detect(src.rows, fields)
        src.format, src.names = fmt, formats.names_for(fmt, fields)
        used = {src.names[k] for k in formats.FORMAT_KEYS[fmt] + formats.EXTRA_KEYS}
        for row in src.rows:
            for key in row.record:
                if key not in used:
                    stats.ignored_fields[key] = stats.ignored_fields.get(key, 0) + 1
            row.record = formats.canonical(row.record, fmt, src.names)
            row.format = fmt


def check_readable(recipe: Recipe) -> None:
    """Read every data file of the recipe without a tokenizer: file-level problems (not found, not UTF-8, not Parquet)
    and records that do not parse raise here, before a command spends time loading a model."""
    problems: list[str] = []
    for which in ("train", "eval"):
        for spec in recipe.data.sources(which):
            for part in sources.resolve(spec, which).parts:
                sources.read_rows(part, problems)
    _raise_or_skip(problems, recipe, DataStats())


def _detect(rows: list[Row], fields) -> str:
    """The most common format among the first rows, so one malformed first record does not decide."""
    found: dict[str, int] = {}
    for row in rows[:20]:
        try:
            fmt = formats.detect_format(row.record, fields)
        except DataError:
            continue
        found[fmt] = found.get(fmt, 0) + 1
    if found:
        return max(found, key=found.get)
    if not rows:
        return "messages"  # nothing to detect; an empty source only counts zero rows
    try:
        return formats.detect_format(rows[0].record, fields)  # raises: say where
    except DataError as exc:
        raise DataError(f"{rows[0].source}:{rows[0].line}: {exc.message}", exc.hint) from None


def _examples(
    rows: list[Row], names_of: dict, template: str, recipe: Recipe, tokenizer, problems: list[str], index: int = 0
):
    """Render rows into Examples; invalid rows become file:line problems. Returns (examples, valid rows)."""
    out, valid = [], []
    for row in rows:
        try:
            names = names_of.get(row.source, formats.IDENTITY)  # only words the errors in the user's key names
            segments = formats.render(row.record, row.format, tokenizer, recipe.data.train_on, template, names)
        except (ValueError, DataError) as exc:
            problems.append(f"{row.source}:{row.line}: {exc}")
            continue
        bos = row.format not in formats.CHAT_FORMATS and formats.adds_bos(tokenizer)
        out.append(Example(segments, f"{row.source}:{row.line}", index, bos))
        valid.append(row)
    return out, valid


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


def _split(resolved: list[sources.Source], recipe: Recipe) -> tuple[list[list[Row]], list[Row]]:
    """Per-source train rows and the held-out rows: one seeded split over all sources together."""
    per_source = [src.rows for src in resolved]
    if recipe.data.eval is not None or not recipe.data.eval_split:
        return per_source, []
    total = sum(len(rows) for rows in per_source)
    order = list(range(total))
    random.Random(recipe.training.seed).shuffle(order)
    held = set(order[: max(1, round(total * recipe.data.eval_split))])
    train, eval_rows, offset = [], [], 0
    for rows in per_source:
        train.append([r for i, r in enumerate(rows) if offset + i not in held])
        eval_rows.extend(r for i, r in enumerate(rows) if offset + i in held)
        offset += len(rows)
    return train, eval_rows


def scan(recipe: Recipe, tokenizer, answer=None) -> tuple[list[Example], list[Example], list[Row], DataStats]:
    """Read and validate all data, render it, split and weight it. Raises DataError with file:line problems.

    Returns train examples (weighted), held-out examples, the held-out rows (canonical records,
    for generation metrics) and the statistics.
    """
    template, warning = formats.resolve_chat_template(recipe.data.chat_template, tokenizer)
    train_src = [sources.resolve(s, "train") for s in recipe.data.sources("train")]
    eval_src = [sources.resolve(s, "eval") for s in recipe.data.sources("eval")]
    return _scan(recipe, tokenizer, train_src, eval_src, template, warning, answer)


def _preserved(recipe: Recipe, tokenizer, template: str, n_train: int, answer, stats: DataStats) -> list[Example]:
    """data.preserve: the base model's answers to general prompts, preserve_ratio per training example."""
    from lorafit.core.errors import MissingError
    from lorafit.data import preserve
    from lorafit.models import resolve_model_path

    path = preserve.prompts_file(recipe)
    if not path.is_file():
        raise MissingError(
            f"data.preserve: {path} does not exist", "use `general` (lorafit's prompts) or a chat JSONL path"
        )
    wanted = max(1, round(recipe.data.preserve_ratio * n_train))
    picked = preserve.pick(preserve.read_prompts(path), wanted, recipe.training.seed)
    records, unusable = preserve.records(recipe, resolve_model_path(recipe), picked, template, answer)
    name = f"preserve:{recipe.data.preserve}"
    rows = [Row(name, i + 1, rec, "messages") for i, rec in enumerate(records)]
    problems: list[str] = []
    examples, _ = _examples(rows, {}, template, recipe, tokenizer, problems)
    stats.sources.append(
        {
            "source": name,
            "format": "messages",
            "rows": len(picked),
            "held_out": 0,
            "weight": recipe.data.preserve_ratio,
            "train_examples": len(examples),
        }
    )
    if unusable and answer is None:
        stats.warnings.append(
            f"data.preserve: {unusable} of {wanted} base-model answers are not generated yet "
            "(lorafit train generates and caches them)"
        )
    elif unusable + len(problems):
        stats.warnings.append(
            f"data.preserve: {unusable + len(problems)} of {wanted} prompts left out (the base's "
            f"answer did not end within {preserve.NEW_TOKENS} tokens, or could not be rendered)"
        )
    return examples


def _scan(recipe, tokenizer, train_src, eval_src, template, warning, answer=None):
    stats = DataStats()
    problems: list[str] = []
    everything = train_src + eval_src
    _read(everything, recipe, problems, stats)
    stats.rows = sum(len(s.rows) for s in everything)
    if not stats.rows and not problems:
        raise DataError(f"no records in {', '.join(s.name for s in train_src)}")
    fmts = {s.format for s in everything if s.rows}
    stats.format = next(iter(fmts)) if len(fmts) == 1 else "mixed"
    if warning and fmts & set(formats.CHAT_FORMATS):
        stats.warnings.append(warning)

    names_of = {p.name: s.names for s in everything for p in s.parts}
    train_rows, held_rows = _split(train_src, recipe)
    if eval_src:
        held_rows = [r for s in eval_src for r in s.rows]
    per_source = [
        _examples(rows, names_of, template, recipe, tokenizer, problems, i)[0] for i, rows in enumerate(train_rows)
    ]
    held_out, eval_rows = _examples(held_rows, names_of, template, recipe, tokenizer, problems)
    _raise_or_skip(problems, recipe, stats)

    held_per_part = Counter(r.source for r in eval_rows)
    train: list[Example] = []
    for i, (src, examples) in enumerate(zip(train_src, per_source)):
        weighted = sources.weighted(examples, src.spec.weight, f"{recipe.training.seed}:{i}")
        if examples and not weighted:
            stats.warnings.append(
                f"{src.name}: weight {src.spec.weight} leaves none of its {len(examples)} examples in training"
            )
        train += weighted
        stats.sources.append(
            {
                "source": src.name,
                "format": src.format,
                "rows": len(src.rows),
                "held_out": sum(held_per_part[p.name] for p in src.parts),
                "weight": src.spec.weight,
                "train_examples": len(weighted),
            }
        )
    for src in eval_src:
        stats.sources.append(
            {
                "source": src.name,
                "format": src.format,
                "rows": len(src.rows),
                "eval": True,
                "held_out": sum(held_per_part[p.name] for p in src.parts),
            }
        )
    if not train:
        raise DataError("no usable training records left", "check data.train and data.on_bad_rows")
    if recipe.data.preserve:
        train += _preserved(recipe, tokenizer, template, len(train), answer, stats)
    stats.train_rows, stats.eval_rows = len(train), len(held_out)
    return train, held_out, eval_rows, stats


# ---------------------------------------------------------------- tokenizing


def tokenize_many(examples: list[list[tuple[str, bool]]], tokenizer) -> list[tuple[list[int], list[int]]]:
    """input_ids and labels (-100 where no loss) for many rendered examples, in one batched tokenizer call.

    Each example is tokenized whole, exactly as inference will see the text, and a token carries loss when
    any of its characters lies in a trained segment. Tokenizing segment by segment would differ wherever a
    tokenizer treats the start of a text specially: SentencePiece's prefix space would put a '▁' that never
    occurs at inference in front of every segment (Llama 2, Mistral v0.1). Templates write their own special
    tokens, so the tokenizer adds none."""
    if not getattr(tokenizer, "is_fast", False):  # no character offsets: segment by segment
        return _tokenize_segments(examples, tokenizer)
    texts = ["".join(text for text, _ in segments) for segments in examples]
    if not texts:
        return []
    encoded = tokenizer(texts, add_special_tokens=False, return_offsets_mapping=True)
    out = []
    for segments, ids, offsets in zip(examples, encoded["input_ids"], encoded["offset_mapping"]):
        spans, at = [], 0
        for text, trained in segments:
            if trained:
                spans.append((at, at + len(text)))
            at += len(text)
        labels = [
            token if any(start < b and a < stop for a, b in spans) else -100  # overlaps a trained span
            for token, (start, stop) in zip(ids, offsets)
        ]
        out.append((list(ids), labels))
    return out


def _tokenize_segments(examples: list[list[tuple[str, bool]]], tokenizer) -> list[tuple[list[int], list[int]]]:
    """The fallback for tokenizers without offsets: each segment on its own, so no token straddles a boundary."""
    texts = [text for segments in examples for text, _ in segments]
    pieces = tokenizer(texts, add_special_tokens=False)["input_ids"] if texts else []
    out, k = [], 0
    for segments in examples:
        ids: list[int] = []
        labels: list[int] = []
        for _, trained in segments:
            piece = pieces[k]
            k += 1
            ids.extend(piece)
            labels.extend(piece if trained else [-100] * len(piece))
        out.append((ids, labels))
    return out


def tokenize(segments: list[tuple[str, bool]], tokenizer) -> tuple[list[int], list[int]]:
    """input_ids and labels (-100 where no loss) for one rendered example."""
    return tokenize_many([segments], tokenizer)[0]


def _encode(examples: list[Example], tokenizer, recipe: Recipe, stats: DataStats, count: bool) -> dict[str, list]:
    columns: dict[str, list] = {"input_ids": [], "labels": [], "where": []}
    limit = recipe.training.max_length
    # Repeated examples (weights > 1) are the same objects: tokenize each once.
    unique = list({id(ex): ex for ex in examples}.values())
    encoded = dict(zip(map(id, unique), tokenize_many([ex.segments for ex in unique], tokenizer)))
    for ex in examples:
        ids, labels = encoded[id(ex)]
        if ex.bos:
            ids, labels = [tokenizer.bos_token_id, *ids], [-100, *labels]
        if count:
            stats.lengths.append(len(ids))
        if len(ids) > limit:
            if recipe.data.drop_long:
                stats.dropped_long += count
                continue
            if count:
                stats.truncated += 1
                stats.tokens_lost += len(ids) - limit
            ids, labels = ids[:limit], labels[:limit]
        # Labels are shifted inside the model, so the first position never counts.
        if all(label == -100 for label in labels[1:]):
            stats.fully_masked += count
            continue
        if count:
            stats.tokens += len(ids)
            trained = sum(label != -100 for label in labels[1:])
            stats.trained_tokens += trained
            stats.most_trained = max(stats.most_trained, trained)
        columns["input_ids"].append(ids)
        columns["labels"].append(labels)
        columns["where"].append(ex.where)
    return columns


# ---------------------------------------------------------------- the whole pipeline


@dataclass
class Prepared:
    train: Any  # datasets.Dataset with input_ids, labels
    eval: Any | None
    stats: DataStats
    eval_rows: list[Row]  # held-out rows (canonical records), for generation metrics
    train_where: list[str] = field(default_factory=list)  # file:line of each train example


def prepare(recipe: Recipe, tokenizer, answer=None) -> Prepared:
    """Tokenized train/eval datasets ready for SFTTrainer (input_ids + labels, already truncated).

    Also installs the chat template used for the masks on `tokenizer`, so the adapter is saved
    with the template it was trained with. `answer` generates the base model's answers for data.preserve
    (lorafit.preserve.base_answerer); without it only answers cached earlier are used.
    """
    from datasets import Dataset

    started = time.perf_counter()
    template, warning = formats.resolve_chat_template(recipe.data.chat_template, tokenizer)
    train_src = [sources.resolve(s, "train") for s in recipe.data.sources("train")]
    eval_src = [sources.resolve(s, "eval") for s in recipe.data.sources("eval")]
    key = _cache_key(recipe, tokenizer, template, train_src + eval_src) if recipe.data.cache else None
    hit = _cache_load(key)
    if hit is not None:
        hit.stats.seconds = time.perf_counter() - started
        _install_template(tokenizer, recipe, template, hit.stats)
        return hit

    train, held_out, eval_rows, stats = _scan(recipe, tokenizer, train_src, eval_src, template, warning, answer)
    train_cols = _encode(train, tokenizer, recipe, stats, count=True)
    if not train_cols["input_ids"]:
        raise DataError(
            f"all {len(train)} training examples have no trainable token (every label is masked)",
            "check data.train_on and the chat template; assistant turns must be present and within training.max_length",
        )
    eval_cols = _encode(held_out, tokenizer, recipe, stats, count=False)
    train_where = train_cols.pop("where")
    eval_cols.pop("where")
    prepared = Prepared(
        Dataset.from_dict(train_cols),
        Dataset.from_dict(eval_cols) if eval_cols["input_ids"] else None,
        stats,
        eval_rows,
        train_where,
    )
    stats.seconds = time.perf_counter() - started
    _install_template(tokenizer, recipe, template, stats)
    # Without an answerer, data.preserve may lack answers not generated yet: such a result is not cached.
    if key is not None and stats.seconds >= CACHE_MIN_SECONDS and not (recipe.data.preserve and answer is None):
        _cache_store(key, prepared)
    return prepared


def _install_template(tokenizer, recipe: Recipe, template: str, stats: DataStats) -> None:
    """The template that made the masks becomes the tokenizer's (saved with the adapter, used to generate)."""
    if recipe.data.chat_template or stats.format in formats.CHAT_FORMATS or stats.format == "mixed":
        tokenizer.chat_template = template


# ---------------------------------------------------------------- cache


def _tokenizer_digest(tokenizer) -> str | None:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        return None  # slow tokenizers have no cheap, complete serialisation: no cache
    h = hashlib.sha256(backend.to_str().encode())
    h.update(json.dumps([type(tokenizer).__name__, str(tokenizer.special_tokens_map)]).encode())
    return h.hexdigest()


def _cache_key(recipe: Recipe, tokenizer, template: str, resolved: list[sources.Source]) -> str | None:
    tok = _tokenizer_digest(tokenizer)
    if tok is None:
        return None
    settings = recipe.data.model_dump(mode="json", exclude={"cache", "packing"})
    settings = {**settings, "train": None, "eval": None}  # paths: the digests below stand for them
    material = {
        "version": CACHE_VERSION,
        "sources": [
            [s.spec.model_dump(mode="json", exclude={"path"}), [(p.name, p.digest) for p in s.parts]] for s in resolved
        ],
        "n_train": len(recipe.data.sources("train")),
        "data": settings,
        "max_length": recipe.training.max_length,
        "seed": recipe.training.seed,
        "template": template,
        "tokenizer": tok,
    }
    return hashlib.sha256(json.dumps(material, sort_keys=True).encode()).hexdigest()[:32]


def _cache_dir() -> Path:
    from lorafit.core.paths import cache_root

    return cache_root() / "data"


def _cache_store(key: str, prepared: Prepared) -> None:
    """Tokens as Arrow files, the rest as JSON, written into a temp dir and renamed (atomic)."""
    from lorafit import runs

    try:
        with runs.atomic_dir(_cache_dir() / key, owned=True) as tmp:
            _write_arrow(prepared.train, tmp / "train.arrow")
            if prepared.eval is not None:
                _write_arrow(prepared.eval, tmp / "eval.arrow")
            meta = {
                "stats": asdict(prepared.stats),
                "eval_rows": [asdict(r) for r in prepared.eval_rows],
                "train_where": prepared.train_where,
            }
            (tmp / "meta.json").write_text(json.dumps(meta, default=str))
        entries = sorted(_cache_dir().iterdir(), key=lambda p: p.stat().st_mtime, reverse=True)
        for old in [e for e in entries if not e.name.startswith(".")][CACHE_KEEP:]:
            shutil.rmtree(old, ignore_errors=True)
    except OSError:
        pass  # a cache that cannot be written only costs time


def _write_arrow(dataset, path: Path) -> None:
    import pyarrow as pa

    table = dataset.with_format("arrow")[:]
    with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)


def _cache_load(key: str | None) -> Prepared | None:
    if key is None:
        return None
    entry = _cache_dir() / key
    if not (entry / "meta.json").is_file():
        return None
    from datasets import Dataset

    try:
        meta = json.loads((entry / "meta.json").read_text())
        train = Dataset.from_file(str(entry / "train.arrow"), in_memory=True)
        eval_ds = (
            Dataset.from_file(str(entry / "eval.arrow"), in_memory=True) if (entry / "eval.arrow").is_file() else None
        )
    except (OSError, ValueError):
        return None
    stats = DataStats(**meta["stats"])
    stats.cached = True
    entry.touch()
    return Prepared(train, eval_ds, stats, [Row(**r) for r in meta["eval_rows"]], meta["train_where"])
