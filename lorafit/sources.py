"""Where training rows come from: files, directories of files, hub datasets; and source weights.

Each source is resolved (located and fingerprinted) before it is parsed, so the tokenization
cache can be looked up from fingerprints alone. Every row keeps its file and line, so every
problem found later can point at the line to fix.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import json
import os
import random
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator
from urllib.parse import urlparse

from lorafit.errors import DataError, MissingError

if TYPE_CHECKING:
    from lorafit.recipe import DataSection

SUFFIXES = (".jsonl", ".json", ".parquet", ".csv")


@dataclass
class Row:
    source: str  # file path, or hub id[split]
    line: int  # 1-based line (JSONL, CSV), record index (JSON array, parquet, hub)
    record: dict  # canonical keys once the pipeline has applied data.fields
    format: str = ""  # the source's format, once known


@dataclass
class Part:
    """One file, or one loaded hub split: named, fingerprinted, not yet parsed."""

    name: str
    digest: str  # sha256 of a file, the datasets fingerprint of a hub split
    path: Path | None = None
    dataset: Any = None  # a datasets.Dataset for hub sources


@dataclass
class Source:
    """One entry of data.train / data.eval, resolved."""

    spec: Any  # the recipe's DataSection.Source
    parts: list[Part]
    rows: list[Row] = field(default_factory=list)
    format: str = ""  # once detected (or as data.format says)
    names: Any = None  # formats.Names for that format and data.fields

    @property
    def name(self) -> str:
        return self.parts[0].name if len(self.parts) == 1 else self.spec.path


# ---------------------------------------------------------------- resolving


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _looks_local(spec: str) -> bool:
    # Hub ids are `org/name`; anything else that is not on disk (or sits in a local folder) is a missing file.
    path = Path(spec)
    return path.suffix in SUFFIXES or spec.startswith((".", "/", "~")) or spec.count("/") != 1 or path.parent.is_dir()


def resolve(spec: DataSection.Source, which: str) -> Source:
    """Locate a source and fingerprint it; hub datasets are loaded (from the local cache offline)."""
    p = Path(spec.path).expanduser()
    hub_only = spec.split is not None or spec.subset is not None or spec.revision is not None
    if p.is_dir():
        found = sorted(f for f in p.iterdir() if f.suffix in SUFFIXES and f.is_file() and not f.name.startswith("."))
        if not found:
            raise DataError(f"{p}: no {'/'.join(SUFFIXES)} files in this directory")
        parts = [Part(str(f), sha256(f), path=f) for f in found]
    elif p.is_file():
        parts = [Part(str(p), sha256(p), path=p)]
    elif _looks_local(spec.path) and not hub_only:
        raise MissingError(
            f"data file not found: {spec.path}",
            f"check data.{which} (relative paths resolve against the recipe file; hub dataset ids look like org/name)",
        )
    else:
        return Source(spec, [_load_hub(spec, which)])
    if hub_only:
        raise DataError(f"data.{which}: {spec.path} is a local path; split, subset and revision apply to hub datasets only")
    return Source(spec, parts)


def _offline() -> bool:
    """True when the hub cannot be used: HF_HUB_OFFLINE is set, or its host does not answer quickly."""
    if os.environ.get("HF_HUB_OFFLINE", "").upper() in ("1", "ON", "YES", "TRUE"):
        return True
    if any(os.environ.get(v) for v in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY")):
        return False  # only the proxy knows; let the hub client find out
    url = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    try:
        socket.create_connection((url.hostname, url.port or (443 if url.scheme == "https" else 80)), timeout=3).close()
    except OSError:
        return True
    return False


@contextlib.contextmanager
def _hub_mode(offline: bool) -> Iterator[None]:
    """Offline, make `datasets` answer from its local cache at once instead of retrying for ~30 s."""
    import datasets.config
    import huggingface_hub.constants

    saved = datasets.config.HF_HUB_OFFLINE, huggingface_hub.constants.HF_HUB_OFFLINE
    if offline:
        datasets.config.HF_HUB_OFFLINE = huggingface_hub.constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        datasets.config.HF_HUB_OFFLINE, huggingface_hub.constants.HF_HUB_OFFLINE = saved


def _load_hub(spec: DataSection.Source, which: str) -> Part:
    import datasets

    split = spec.split or "train"
    label = f"{spec.path}[{spec.subset + ':' if spec.subset else ''}{split}]" + (f"@{spec.revision}" if spec.revision else "")
    offline = _offline()
    verbosity = datasets.utils.logging.get_verbosity()
    datasets.utils.logging.set_verbosity_error()
    try:
        with _hub_mode(offline):
            pin = {"revision": spec.revision} if spec.revision else {}
            ds = datasets.load_dataset(spec.path, spec.subset, split=split, **pin)
    except Exception as exc:  # noqa: BLE001 - the hub client raises many types; all mean "not loadable"
        if offline:
            raise MissingError(
                f"data.{which}: hub dataset {label} is not available offline (no network or HF_HUB_OFFLINE=1) "
                f"and not in the local datasets cache; download it once online, or point data.{which} at a local file"
            ) from None
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        raise MissingError(f"data.{which}: cannot load hub dataset {label}: {first}") from None
    finally:
        datasets.utils.logging.set_verbosity(verbosity)
    return Part(label, f"hub:{getattr(ds, '_fingerprint', '')}", dataset=ds)


# ---------------------------------------------------------------- parsing


def read_rows(part: Part | Path, problems: list[str]) -> list[Row]:
    """All records of one part; unparseable lines go to `problems` as file:line messages."""
    if isinstance(part, Path):
        part = Part(str(part), "", path=part)
    name = part.name
    if part.dataset is not None:
        return [Row(name, i, dict(r)) for i, r in enumerate(part.dataset, 1)]
    path = part.path
    rows: list[Row] = []
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
        for i, o in enumerate(obj if isinstance(obj, list) else [obj], 1):
            if isinstance(o, dict):
                rows.append(Row(name, i, o))
            else:
                problems.append(f"{name}:{i}: record {i} is not a JSON object, got {type(o).__name__}")
    elif path.suffix == ".csv":
        with path.open(encoding="utf-8", newline="") as f:
            reader = csv.DictReader(f)
            for r in reader:  # blank lines are skipped, so count lines with the reader, not by record
                if None in r:
                    problems.append(f"{name}:{reader.line_num}: more values than the {len(reader.fieldnames or [])} header columns")
                else:
                    rows.append(Row(name, reader.line_num, dict(r)))
    elif path.suffix == ".parquet":
        import pyarrow.parquet as pq

        rows.extend(Row(name, i, r) for i, r in enumerate(pq.read_table(path).to_pylist(), 1))
    else:
        raise DataError(f"{name}: unsupported file type {path.suffix!r}", f"use one of {', '.join(SUFFIXES)}")
    return rows


# ---------------------------------------------------------------- weights


def weighted(items: list, weight: float, seed: str) -> list:
    """Each item `int(weight)` times, plus a seeded sample of the fractional rest (0.5: half, 1.5: all + half)."""
    whole, frac = int(weight), weight - int(weight)
    extra = int(len(items) * frac + 0.5)  # halves round up: one item at weight 0.5 stays, it does not vanish
    picked = sorted(random.Random(seed).sample(range(len(items)), extra)) if extra else []
    return items * whole + [items[i] for i in picked]
