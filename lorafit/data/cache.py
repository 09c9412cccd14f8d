"""The tokenization cache: prepared data kept by content (files, tokenizer, settings), so a re-run skips it."""

from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING

from lorafit.data import sources
from lorafit.data.results import DataStats, Prepared
from lorafit.data.sources import Row

if TYPE_CHECKING:
    from lorafit.recipe import Recipe

CACHE_VERSION = 2  # raise it whenever the cached examples change shape: older entries are then never read
CACHE_KEEP = 8  # most recent entries kept


def _tokenizer_digest(tokenizer) -> str | None:
    """The tokenizer's vocabulary, rules and special tokens as one digest: a changed tokenizer misses the cache."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        return None  # slow tokenizers have no cheap, complete serialisation: no cache
    h = hashlib.sha256(backend.to_str().encode())
    h.update(json.dumps([type(tokenizer).__name__, str(tokenizer.special_tokens_map)]).encode())
    return h.hexdigest()


def key_for(recipe: Recipe, tokenizer, template: str, resolved: list[sources.Source]) -> str | None:
    """The entry's name: a digest of everything the tokenized examples depend on (None: not cacheable)."""
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


def _dir() -> Path:
    from lorafit.core.paths import cache_root

    return cache_root() / "data"


def store(key: str, prepared: Prepared) -> None:
    """Tokens as Arrow files, the rest as JSON, written into a temp dir and renamed (atomic)."""
    from lorafit import runs

    try:
        with runs.atomic_dir(_dir() / key, owned=True) as tmp:
            _write_arrow(prepared.train, tmp / "train.arrow")
            if prepared.eval is not None:
                _write_arrow(prepared.eval, tmp / "eval.arrow")
            meta = {
                "stats": asdict(prepared.stats),
                "eval_rows": [asdict(r) for r in prepared.eval_rows],
                "train_where": prepared.train_where,
            }
            (tmp / "meta.json").write_text(json.dumps(meta, default=str))
        entries = sorted(_dir().iterdir(), key=lambda p: p.stat().st_mtime, reverse=True)
        for old in [e for e in entries if not e.name.startswith(".")][CACHE_KEEP:]:
            shutil.rmtree(old, ignore_errors=True)
    except OSError:
        pass  # a cache that cannot be written only costs time


def _write_arrow(dataset, path: Path) -> None:
    import pyarrow as pa

    table = dataset.with_format("arrow")[:]
    with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)


def load(key: str | None) -> Prepared | None:
    """The prepared data stored under `key`, or None: a missing or unreadable entry is prepared again."""
    if key is None:
        return None
    entry = _dir() / key
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
