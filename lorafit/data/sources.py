"""Where training rows come from: files, directories of files, hub datasets; and source weights.

Each source is resolved (located and fingerprinted) before it is parsed, so the tokenization
cache can be looked up from fingerprints alone. Every row keeps its file and line, so every
problem found later can point at the line to fix.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import random
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

from lorafit.core import hub
from lorafit.core.errors import DataError, MissingError
from lorafit.core.textfiles import HEAD, SUFFIXES, UTF8_BOM, describe_bytes, encoding_fix

if TYPE_CHECKING:
    from lorafit.recipe import DataSection


@dataclass
class Row:
    source: str  # file path, or hub id[split]
    line: int  # 1-based line (JSONL, CSV), record index (JSON array, parquet, hub)
    record: dict  # canonical keys once the pipeline has applied data.fields
    format: str = ""  # the source's format, once known
    meta: dict = field(default_factory=dict)  # a preference row's `reference` / `category`, for generation metrics


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
    return (
        path.suffix in SUFFIXES or spec.startswith((".", "/", "~")) or spec.count("/") != 1 or _is(path.parent, "dir")
    )


def _is(path: Path, kind: str) -> bool:
    """is_dir / is_file, False for names the OS cannot look up (too long, an unknown ~user, a NUL byte)."""
    try:
        return path.is_dir() if kind == "dir" else path.is_file()
    except (OSError, ValueError):
        return False


def _fingerprint(path: Path) -> str:
    try:
        return sha256(path)
    except OSError as exc:
        raise DataError(f"{path}: cannot read it ({exc.strerror})", "check the file's permissions") from None


def resolve(spec: DataSection.Source, which: str) -> Source:
    """Locate a source and fingerprint it; hub datasets are loaded (from the local cache offline)."""
    try:
        p = Path(spec.path).expanduser()
    except RuntimeError:  # ~user that does not exist
        p = Path(spec.path)
    hub_only = spec.split is not None or spec.subset is not None or spec.revision is not None
    if _is(p, "dir"):
        try:
            found = sorted(
                f for f in p.iterdir() if f.suffix in SUFFIXES and f.is_file() and not f.name.startswith(".")
            )
        except OSError as exc:
            raise DataError(f"{p}: cannot list the directory ({exc.strerror})", "check its permissions") from None
        if not found:
            raise DataError(f"{p}: no {'/'.join(SUFFIXES)} files in this directory")
        parts = [Part(str(f), _fingerprint(f), path=f) for f in found]
    elif _is(p, "file"):
        parts = [Part(str(p), _fingerprint(p), path=p)]
    elif _looks_local(spec.path) and not hub_only:
        raise MissingError(
            f"data file not found: {spec.path}",
            f"check data.{which} (relative paths resolve against the recipe file; hub dataset ids look like org/name)",
        )
    else:
        return Source(spec, [_load_hub(spec, which)])
    if hub_only:
        raise DataError(
            f"data.{which}: {spec.path} is a local path; split, subset and revision apply to hub datasets only"
        )
    return Source(spec, parts)


def _load_hub(spec: DataSection.Source, which: str) -> Part:
    import datasets

    split = spec.split or "train"
    label = f"{spec.path}[{spec.subset + ':' if spec.subset else ''}{split}]" + (
        f"@{spec.revision}" if spec.revision else ""
    )
    offline = hub.offline()
    verbosity = datasets.utils.logging.get_verbosity()
    datasets.utils.logging.set_verbosity_error()
    try:
        with hub.mode(offline):
            pin = {"revision": spec.revision} if spec.revision else {}
            ds = datasets.load_dataset(spec.path, spec.subset, split=split, **pin)
    except Exception as exc:  # noqa: BLE001 - the hub client raises many types; all mean "not loadable"
        undecodable = _undecodable(exc)
        if undecodable is not None:  # the dataset is there, but its files are not what they claim to be
            raise DataError(
                f"data.{which}: hub dataset {label}: its files cannot be read: {undecodable}",
                f"pin a revision whose files load (data.{which}.revision), or download the files and point data.{which} at them",
            ) from None
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


def _undecodable(exc: BaseException) -> str | None:
    """The decoding or format error behind a hub loading failure (datasets wraps it), in one line; None for others."""
    import pyarrow as pa

    seen = 0
    while exc is not None and seen < 8:
        if isinstance(exc, (UnicodeDecodeError, json.JSONDecodeError, pa.ArrowInvalid, csv.Error)):
            return (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        exc, seen = exc.__cause__ or exc.__context__, seen + 1
    return None


_EXPECTED = {".jsonl": "JSON lines", ".json": "JSON", ".csv": "CSV"}


def _check_text(path: Path, name: str, head: bytes) -> None:
    """DataError unless the file starts as UTF-8 text (a UTF-8 BOM is fine): what it is instead, and the fix."""
    kind = describe_bytes(head)
    if kind in ("JSON text", "text", "empty") or kind.startswith("text in another encoding") or "truncated" in kind:
        return  # Latin-1 lines, and a character cut off at the end, are reported with their line numbers
    raise DataError(f"{name}: {kind}, not UTF-8 {_EXPECTED[path.suffix]}", encoding_fix(kind, name))


def _not_utf8(name: str, raw: bytes, exc: UnicodeDecodeError, last: bool) -> str:
    """A line that is not UTF-8, in words: which byte, and the likely encoding or a truncation."""
    if last and exc.reason == "unexpected end of data":
        return f"the file ends in the middle of a UTF-8 character at column {exc.start + 1} (truncated?)"
    return f"not UTF-8: byte 0x{raw[exc.start]:02x} at column {exc.start + 1}; {encoding_fix('text in another encoding', name)}"


def _lines(path: Path, name: str) -> Iterator[tuple[int, str | None, str]]:
    """(line number, text, why not) for each line of a UTF-8 text file, BOM dropped; text is None for a line that
    does not decode. A file that is not text at all (UTF-16, binary, compressed, ...) raises DataError first."""
    with path.open("rb") as f:
        _check_text(path, name, f.read(HEAD))
        f.seek(0)
        pending: tuple[int, bytes] | None = None
        for n, raw in enumerate(f, 1):
            if pending is not None:
                yield _decoded(name, *pending, last=False)
            pending = (n, raw[len(UTF8_BOM) :] if n == 1 and raw.startswith(UTF8_BOM) else raw)
        if pending is not None:
            yield _decoded(name, *pending, last=True)


def _decoded(name: str, n: int, raw: bytes, last: bool) -> tuple[int, str | None, str]:
    try:
        return n, raw.decode("utf-8"), ""
    except UnicodeDecodeError as exc:
        return n, None, _not_utf8(name, raw, exc, last)


def _json_problem(exc: ValueError | RecursionError, text: str, at_end: bool) -> str:
    if isinstance(exc, RecursionError):
        return "invalid JSON: nested too deeply"
    if isinstance(exc, json.JSONDecodeError):
        # A record cut off by a truncated download or copy ends without its closing bracket.
        cut = (
            " (the file ends here, mid-record: truncated?)" if at_end and not text.rstrip().endswith(("}", "]")) else ""
        )
        return f"invalid JSON: {exc.msg} (column {exc.colno}){cut}"
    return f"invalid JSON: {str(exc).split(';')[0]}"  # e.g. an integer of more than 4300 digits


# ---------------------------------------------------------------- parsing


def read_rows(part: Part | Path, problems: list[str]) -> list[Row]:
    """All records of one part; unparseable lines go to `problems` as file:line messages.

    A file that is not UTF-8 text (UTF-16, binary, compressed, a Parquet file under another name) or not
    Parquet is a DataError saying what it looks like and how to convert it; a UTF-8 BOM is accepted."""
    if isinstance(part, Path):
        part = Part(str(part), "", path=part)
    name = part.name
    if part.dataset is not None:
        return [Row(name, i, dict(r)) for i, r in enumerate(part.dataset, 1)]
    path = part.path
    if path.suffix not in SUFFIXES:
        raise DataError(f"{name}: unsupported file type {path.suffix!r}", f"use one of {', '.join(SUFFIXES)}")
    try:
        return _READERS[path.suffix](path, name, problems)
    except OSError as exc:
        raise DataError(
            f"{name}: cannot read it ({exc.strerror or exc})", "check the file and its permissions"
        ) from None


def _read_jsonl(path: Path, name: str, problems: list[str]) -> list[Row]:
    rows: list[Row] = []
    lines = list(_lines(path, name))
    for n, text, why in lines:
        if text is None:
            problems.append(f"{name}:{n}: {why}")
            continue
        if not text.strip():
            continue
        try:
            obj = json.loads(text)
        except (ValueError, RecursionError) as exc:
            last = n == lines[-1][0] and not text.endswith("\n")
            problems.append(f"{name}:{n}: {_json_problem(exc, text, last)}")
            continue
        if not isinstance(obj, dict):
            problems.append(f"{name}:{n}: expected a JSON object, got {type(obj).__name__}")
            continue
        rows.append(Row(name, n, obj))
    return rows


def _read_json(path: Path, name: str, problems: list[str]) -> list[Row]:
    rows: list[Row] = []
    raw = path.read_bytes()
    _check_text(path, name, raw[:HEAD])
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        start = raw.rfind(b"\n", 0, exc.start) + 1
        problems.append(
            f"{name}:{line}: {_not_utf8(name, raw[start:], UnicodeDecodeError('utf-8', raw[start:], exc.start - start, exc.end - start, exc.reason), last=True)}"
        )
        return rows
    try:
        obj = json.loads(text)
    except (ValueError, RecursionError) as exc:
        line = exc.lineno if isinstance(exc, json.JSONDecodeError) else 1
        message = _json_problem(exc, text, at_end=True)
        if isinstance(exc, json.JSONDecodeError) and exc.msg == "Extra data":
            message += "; one JSON object per line is JSON lines: name the file .jsonl"
        problems.append(f"{name}:{line}: {message}")
        return rows
    for i, o in enumerate(obj if isinstance(obj, list) else [obj], 1):
        if isinstance(o, dict):
            rows.append(Row(name, i, o))
        else:
            problems.append(f"{name}:{i}: record {i} is not a JSON object, got {type(o).__name__}")
    return rows


def _read_csv(path: Path, name: str, problems: list[str]) -> list[Row]:
    rows: list[Row] = []
    bad: set[int] = set()

    def text_lines() -> Iterator[str]:
        for n, text, why in _lines(path, name):
            if text is None:
                problems.append(f"{name}:{n}: {why}")
                bad.add(n)
                text = "\ufffd\n"  # a placeholder, so the record it belongs to is known and skipped
            yield text

    # A long document in one cell is a fair CSV field; the module's default limit is 128 KiB.
    csv.field_size_limit(max(csv.field_size_limit(), min(sys.maxsize, 1 << 30)))
    reader = csv.DictReader(text_lines())
    done = 0  # the last line read before the next record
    while True:
        try:
            r = next(reader)
        except StopIteration:
            break
        except csv.Error as exc:
            problems.append(f"{name}:{reader.line_num}: not valid CSV: {exc}")
            if reader.line_num == done:
                break  # no progress: stop rather than loop
            done = reader.line_num
            continue
        first, done = done + 1, reader.line_num
        if any(first <= n <= done for n in bad):
            continue  # its undecodable line is already reported
        if None in r:  # blank lines are skipped, so count lines with the reader, not by record
            problems.append(
                f"{name}:{reader.line_num}: more values than the {len(reader.fieldnames or [])} header columns"
            )
        else:
            rows.append(Row(name, reader.line_num, dict(r)))
    return rows


def _read_parquet(path: Path, name: str, problems: list[str]) -> list[Row]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        records = pq.read_table(path).to_pylist()
    except (pa.ArrowException, ValueError) as exc:
        with path.open("rb") as f:
            head = f.read(HEAD)
            f.seek(max(0, path.stat().st_size - 4))
            tail = f.read(4)
        if not head.startswith(b"PAR1"):
            kind = describe_bytes(head)
            what = f"not a Parquet file (it looks like {kind})"
            fix = (
                f"rename it to the extension of what it holds (e.g. {os.path.splitext(name)[0]}.jsonl)"
                if kind in ("JSON text", "text")
                else encoding_fix(kind, name)
                if kind not in ("binary", "empty")
                else "write it again as Parquet (e.g. pandas' DataFrame.to_parquet)"
            )
        elif tail != b"PAR1":
            what, fix = (
                "a truncated Parquet file (its footer is missing)",
                "the file is cut off: copy or write it again",
            )
        else:
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
            what, fix = f"a damaged Parquet file ({first})", "write it again (e.g. pandas' DataFrame.to_parquet)"
        raise DataError(f"{name}: {what}", fix) from None
    return [Row(name, i, r) for i, r in enumerate(records, 1)]


_READERS = {".jsonl": _read_jsonl, ".json": _read_json, ".csv": _read_csv, ".parquet": _read_parquet}


# ---------------------------------------------------------------- weights


def weighted(items: list, weight: float, seed: str) -> list:
    """Each item `int(weight)` times, plus a seeded sample of the fractional rest (0.5: half, 1.5: all + half)."""
    whole, frac = int(weight), weight - int(weight)
    extra = int(len(items) * frac + 0.5)  # halves round up: one item at weight 0.5 stays, it does not vanish
    picked = sorted(random.Random(seed).sample(range(len(items)), extra)) if extra else []
    return items * whole + [items[i] for i in picked]
