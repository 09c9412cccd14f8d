"""Property: whatever a careless colleague does to a valid recipe and its data file, `lorafit validate` ends (no hang)
with exit 0, 2, 3 or 7, prints no traceback, and changes no input file.

Mutations: field values of any type and range, deleted and unknown fields, duplicated and deleted lines, nested
aliases, truncation, random bytes, other encodings (UTF-16/32, Latin-1, BOM); for the data: records with wrong
types, deleted and duplicated records, every reader (.jsonl, .json, .csv, .parquet) and a file under another
reader's suffix. The fast variant runs a fixed, bounded set of examples; the slow one explores more.
LORAFIT_PROPERTY_EXAMPLES sets the number of examples; LORAFIT_PROPERTY_SHOW=1 prints how each one ended.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import signal
import tempfile
from collections import Counter
from contextlib import contextmanager
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from lorafit.cli import app
from lorafit.recipe import Recipe

from conftest import chat_records

ALLOWED = {0, 2, 3, 7}
HANG = 60  # an example still running after this is a hang: fail it instead of waiting
SEEN: Counter = Counter()  # exit codes of all examples run in this session, reported at the end

SPECIAL = st.sampled_from(
    [
        "auto",
        "on",
        "off",
        "lora",
        "dora",
        "ia3",
        "prompt_tuning",
        "all-linear",
        "chatml",
        "messages",
        "alpaca",
        "text",
        "-1",
        "0",
        "1e400",
        "nan",
        "a/b",
        "org/dataset",
        "~nobody/x",
        "..",
        "/",
        "/dev/zero",
        "embedded:x",
        "embedded:smollm2-135m-instruct",
        "",
        " ",
        "{{ messages }}",
        "(",
        ".*",
        "\x00",
        "é",
        "train.jsonl",
        "x" * 300,
    ]
)
SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.integers(-3, 300),
    st.floats(allow_nan=True, allow_infinity=True),
    st.floats(0, 2),
    st.text(max_size=10),
    SPECIAL,
)
VALUES = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=5,
)
FIELDS = [
    (section, name)
    for section, field in Recipe.model_fields.items()
    for name in getattr(field.annotation, "model_fields", {})
]
ENCODINGS = st.sampled_from(["utf-8", "utf-8-sig", "utf-16", "utf-16-le", "utf-32", "latin-1"])
SUFFIXES = [".jsonl", ".json", ".csv", ".parquet"]
# YAML that safe_dump never writes: tags, timestamps, aliases to nowhere, merge keys, block scalars, odd numbers.
YAML_TOKENS = st.sampled_from(
    [
        "!!binary aGVsbG8=",
        "!!python/object/apply:os.system ['true']",
        "2024-01-01",
        "2024-01-01T10:00:00Z",
        "*nowhere",
        "&a x",
        "!!set {a, b}",
        "!!omap [a: 1]",
        "!custom x",
        "0x1F",
        "0o17",
        "1_000",
        ".NaN",
        "-.Inf",
        "~",
        "|\n  text",
        ">-\n  text",
        "[",
        "{",
        "'",
        '"\\x00"',
        "? [a]\n: b",
        "{<<: {a: 1}}",
        "!!float 1e999",
        "!!int 99999999999999999999999",
    ]
)
EXTENDS = st.sampled_from(
    ["recipe.yaml", "train.jsonl", "nope.yaml", "/dev/zero", ".", "/", "~nobody/x.yaml", "a" * 300, ""]
)


def base_recipe(model_dir: Path, data_name: str, out: Path) -> dict:
    return {
        "model": {"name": str(model_dir)},
        "data": {"train": data_name, "eval_split": 0.25},
        "adapter": {"r": 8, "alpha": 16, "dropout": 0.0},
        "training": {"max_steps": 4, "batch_size": 4, "max_length": 128},
        "output": {"dir": str(out)},
    }


# ---------------------------------------------------------------- mutations


def _paths(value, prefix=()):
    yield prefix
    if isinstance(value, dict):
        for k, v in value.items():
            yield from _paths(v, prefix + (k,))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from _paths(v, prefix + (i,))


def _set(root, path, value):
    node = root
    for part in path[:-1]:
        if isinstance(node, dict) and part in node and isinstance(node[part], (dict, list)):
            node = node[part]
        elif isinstance(node, dict):
            node[part] = {}
            node = node[part]
        else:
            return
    if isinstance(node, dict) or (isinstance(node, list) and isinstance(path[-1], int) and path[-1] < len(node)):
        node[path[-1]] = value


def _delete(root, path):
    node = root
    for part in path[:-1]:
        node = node[part]
    del node[path[-1]]


def mutate_tree(draw, tree):
    """Field-level changes to a recipe or a record: set (any type, any range), delete, duplicate, unknown keys."""
    for _ in range(draw(st.integers(0, 3))):
        op = draw(st.sampled_from(["set", "set_known", "delete", "unknown", "duplicate", "extends"]))
        paths = [p for p in _paths(tree) if p]
        if op == "set" and paths:
            _set(tree, draw(st.sampled_from(paths)), draw(VALUES))
        elif op == "set_known" and isinstance(tree, dict) and "model" in tree:
            _set(tree, draw(st.sampled_from(FIELDS)), draw(VALUES))
        elif op == "delete" and paths:
            _delete(tree, draw(st.sampled_from(paths)))
        elif op == "unknown" and isinstance(tree, dict):
            _set(
                tree, (draw(st.sampled_from(list(tree) or ["x"])), draw(st.text(min_size=1, max_size=8))), draw(VALUES)
            )
        elif op == "extends" and isinstance(tree, dict) and "model" in tree:
            tree["extends"] = draw(EXTENDS)
        elif op == "duplicate" and paths:
            path = draw(st.sampled_from(paths))
            node = tree
            for part in path:
                node = node[part]
            _set(
                tree,
                path[:-1] + (f"{path[-1]}_copy",) if isinstance(path[-1], str) else path,
                json.loads(json.dumps(node, default=str)),
            )
    return tree


def mutate_bytes(draw, raw: bytes, text: str) -> bytes:
    """Byte-level damage: another encoding, truncation, random bytes, duplicated or deleted lines."""
    if draw(st.integers(0, 4)) == 0:
        raw = text.encode(draw(ENCODINGS), errors="replace")
    for _ in range(draw(st.integers(0, 2))):
        op = draw(st.sampled_from(["truncate", "insert", "overwrite", "dup_line", "del_line", "empty"]))
        lines = raw.splitlines(keepends=True)
        if op == "truncate" and raw:
            raw = raw[: draw(st.integers(0, len(raw) - 1))]
        elif op == "insert":
            at = draw(st.integers(0, len(raw)))
            raw = raw[:at] + draw(st.binary(min_size=1, max_size=16)) + raw[at:]
        elif op == "overwrite" and raw:
            at = draw(st.integers(0, len(raw) - 1))
            junk = draw(st.binary(min_size=1, max_size=8))
            raw = raw[:at] + junk + raw[at + len(junk) :]
        elif op == "dup_line" and lines:
            i = draw(st.integers(0, len(lines) - 1))
            raw = b"".join(lines[: i + 1] + lines[i:])
        elif op == "del_line" and lines:
            i = draw(st.integers(0, len(lines) - 1))
            raw = b"".join(lines[:i] + lines[i + 1 :])
        elif op == "empty":
            raw = b""
    return raw


def recipe_bytes(draw, recipe: dict, damage: bool) -> bytes:
    if damage:
        recipe = mutate_tree(draw, recipe)
    text = yaml.safe_dump(recipe, sort_keys=False, allow_unicode=True)
    if damage and draw(st.integers(0, 3)) == 0:  # a value replaced by YAML that safe_dump would not write
        lines = text.splitlines()
        i = draw(st.integers(0, len(lines) - 1))
        key = lines[i].split(":", 1)[0]
        lines[i] = f"{key}: {draw(YAML_TOKENS)}"
        text = "\n".join(lines) + "\n"
    if damage and draw(st.integers(0, 7)) == 0:  # anchors and aliases, a few levels deep
        width, depth = draw(st.integers(1, 9)), draw(st.integers(1, 9))
        bomb = "".join(f"z{i}: &z{i} [{', '.join([f'*z{i - 1}' if i else 'v'] * width)}]\n" for i in range(depth))
        text = bomb + text
    if damage and draw(st.integers(0, 2)) == 0:
        return mutate_bytes(draw, text.encode(), text)
    return text.encode()


def data_bytes(draw, records: list[dict], suffix: str, tmp: Path, damage: bool) -> bytes:
    if damage:
        records = [mutate_tree(draw, r) if draw(st.integers(0, 3)) == 0 else r for r in records]
    if damage and draw(st.booleans()) and records:
        records = records + [records[draw(st.integers(0, len(records) - 1))]]
    text = ""
    if suffix == ".jsonl":
        text = "".join(json.dumps(r, ensure_ascii=False, default=str) + "\n" for r in records)
    elif suffix == ".json":
        text = json.dumps(records, ensure_ascii=False, default=str)
    elif suffix == ".csv":
        out = io.StringIO()
        keys = list(dict.fromkeys(k for r in records for k in r)) or ["text"]
        writer = csv.DictWriter(out, fieldnames=keys)
        writer.writeheader()
        for r in records:
            writer.writerow({k: v if isinstance(v, str) else json.dumps(v, default=str) for k, v in r.items()})
        text = out.getvalue()
    else:
        import pyarrow as pa
        import pyarrow.parquet as pq

        try:
            pq.write_table(pa.Table.from_pylist(records), tmp / "made.parquet")
            raw = (tmp / "made.parquet").read_bytes()
        except (
            pa.ArrowException,
            ValueError,
            TypeError,
            OverflowError,
        ):  # mixed types: JSON lines under a .parquet name
            raw = "".join(json.dumps(r, default=str) + "\n" for r in records).encode()
        finally:
            (tmp / "made.parquet").unlink(missing_ok=True)
        return mutate_bytes(draw, raw, raw.decode("utf-8", errors="replace")) if damage and draw(st.booleans()) else raw
    return mutate_bytes(draw, text.encode(), text) if damage and draw(st.booleans()) else text.encode()


# ---------------------------------------------------------------- the property


def _snapshot(*folders: Path) -> dict[str, str]:
    return {
        str(f): hashlib.sha256(f.read_bytes()).hexdigest()
        for folder in folders
        for f in sorted(folder.rglob("*"))
        if f.is_file()
    }


@contextmanager
def _deadline(seconds: int):
    def alarm(signum, frame):
        raise TimeoutError(f"lorafit validate still running after {seconds} s")

    previous = signal.signal(signal.SIGALRM, alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def check_validate(draw, model_dir: Path) -> None:
    runner = CliRunner()
    with tempfile.TemporaryDirectory(prefix="lorafit-prop-") as name:
        tmp = Path(name)
        damaged = draw(st.sampled_from(["recipe", "data", "both", "both"]))
        written = draw(st.sampled_from(SUFFIXES))
        named = written if draw(st.integers(0, 5)) else draw(st.sampled_from(SUFFIXES))  # sometimes the wrong reader
        data_file = tmp / f"train{named}"
        records = (
            chat_records(12)
            if written != ".csv"
            else [{"prompt": f"question {i}?", "completion": f"answer {i}"} for i in range(12)]
        )
        data_file.write_bytes(data_bytes(draw, records, written, tmp, damaged != "recipe"))
        recipe_file = tmp / "recipe.yaml"
        recipe_file.write_bytes(
            recipe_bytes(draw, base_recipe(model_dir, data_file.name, tmp / "run"), damaged != "data")
        )
        args = ["validate", str(recipe_file)]
        if draw(st.integers(0, 5)) == 0:
            args += ["--set", f"{'.'.join(draw(st.sampled_from(FIELDS)))}={draw(SCALARS)!s}"]
        before = _snapshot(tmp, model_dir)
        with _deadline(HANG):
            result = runner.invoke(app, args)
        SEEN[result.exit_code] += 1
        if os.environ.get("LORAFIT_PROPERTY_SHOW"):
            print(result.exit_code, (result.output.split("error ", 1) + [""])[1][:160].replace("\n", " "))
        shown = f"{args}\n{result.output[-3000:]}\n{result.exception!r}"
        assert result.exit_code in ALLOWED, shown
        assert "Traceback" not in result.output, shown
        assert _snapshot(tmp, model_dir) == before, f"an input changed: {shown}"


COMMON = dict(deadline=None, database=None, suppress_health_check=list(HealthCheck), print_blob=True)


@settings(max_examples=int(os.environ.get("LORAFIT_PROPERTY_EXAMPLES", 60)), derandomize=True, **COMMON)
@given(draw=st.data())
def test_validate_survives_mutated_inputs(tiny_model_dir, draw):
    check_validate(draw.draw, tiny_model_dir)


@pytest.mark.slow
@settings(max_examples=int(os.environ.get("LORAFIT_PROPERTY_EXAMPLES", 300)), **COMMON)
@given(draw=st.data())
def test_validate_survives_mutated_inputs_many(tiny_model_dir, draw):
    check_validate(draw.draw, tiny_model_dir)


@pytest.fixture(scope="module", autouse=True)
def _report():
    """How many generated inputs ended how (shown with -s)."""
    yield
    print(f"\nproperty examples by exit code: {dict(sorted(SEEN.items()))} ({sum(SEEN.values())} in all)")
