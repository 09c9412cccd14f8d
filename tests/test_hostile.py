"""Hostile and broken inputs: a recipe or data file never hangs lorafit, never ends in a traceback, never starts a
run that cannot end. Each class of input has its exit code (2 recipe, 3 data, 7 missing) and a one-line fix."""

from __future__ import annotations

import gzip
import json
import signal
import subprocess
import sys
import typing
from pathlib import Path

import pytest
from typer.testing import CliRunner

from lorafit.cli import app
from lorafit.core.errors import RecipeError
from lorafit.recipe import MAX_EXTENDS, Recipe, load_recipe

from conftest import chat_records, tiny_recipe_text, write_jsonl

runner = CliRunner()


HANG = 120  # seconds: not a speed bound, a hang detector (the alias bomb ran for minutes and grew memory)


def _hung(signum, frame):
    raise TimeoutError(f"lorafit validate still running after {HANG} s: it hangs on this input")


def validate(*args: str):
    previous = signal.signal(signal.SIGALRM, _hung)
    signal.alarm(HANG)
    try:
        result = runner.invoke(app, ["validate", *map(str, args)], catch_exceptions=False)
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
    assert "Traceback" not in result.output, result.output
    return result


# ---------------------------------------------------------------- the loader's bounds

BOMB = (
    "".join(
        f"{name}: &{name} [{', '.join([f'*{prev}' if prev else '{x: lol}'] * 9)}]\n"
        for name, prev in zip("abcdefghi", [None, *"abcdefgh"])
    )
    + "data:\n  train: *i\n"
)


def test_alias_bomb_is_refused_at_once_with_its_line(tmp_path):
    recipe = tmp_path / "bomb.yaml"
    recipe.write_text(BOMB)
    result = validate(recipe, "--schema-only")
    assert result.exit_code == 2, result.output
    assert f"{recipe}:" in result.output and "anchors and aliases" in result.output


def test_merge_key_bomb_is_refused(tmp_path):
    lines = ["a0: &a0 {k: v}"] + [f"a{i}: &a{i} {{<<: [{', '.join([f'*a{i - 1}'] * 10)}]}}" for i in range(1, 8)]
    recipe = tmp_path / "merge.yaml"
    recipe.write_text("\n".join(lines) + "\ndata: {train: x.jsonl}\n")
    result = validate(recipe, "--schema-only")
    assert result.exit_code == 2 and "anchors and aliases" in result.output, result.output


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("data: &d\n  train: [*d]\n", "inside its own anchor"),
        ("data: {train: " + "[" * 5000 + "]" * 5000 + "}\n", "nested more than"),
        ("data:\n  train: a.jsonl\n  bad: &x [1, 2\n", "not valid YAML"),
        ("data: {train: a.jsonl}\n---\nmore: 1\n", "not valid YAML"),
        ('data:\n  train: "a\\0.jsonl"\n', "NUL character"),
        ("data:\n  train: " + "a" * 5000 + ".jsonl\n", "data file not found"),
        ("? [a, b]\n: 1\ndata: {train: x.jsonl}\n", "not valid YAML"),
    ],
)
def test_recipes_the_loader_refuses(tmp_path, text, words):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(text)
    result = validate(recipe)
    assert result.exit_code in (2, 7) and words in result.output, result.output


def test_an_alias_bomb_in_a_set_value_is_refused(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("data: {train: x.jsonl}\n")
    levels = ["&a [x, x, x, x, x, x, x, x, x, x]"] + [
        f"&{c} [{', '.join([f'*{p}'] * 10)}]" for p, c in zip("abcdefg", "bcdefgh")
    ]
    result = validate(recipe, "--schema-only", "--set", f"output.tags=[{', '.join(levels)}]")
    assert result.exit_code == 2 and "anchors and aliases" in result.output, result.output


def test_a_recipe_file_of_megabytes_is_refused_before_it_is_parsed(tmp_path):
    recipe = tmp_path / "big.yaml"
    recipe.write_text("data: {train: x.jsonl}\n" + "# padding\n" * 200_000)
    result = validate(recipe, "--schema-only")
    assert result.exit_code == 2 and "more than a recipe can be" in result.output, result.output


def test_utf16_recipe_says_so_and_a_bom_is_fine(tmp_path):
    text = "data:\n  train: x.jsonl\n"
    (tmp_path / "u16.yaml").write_bytes(text.encode("utf-16"))
    result = validate(tmp_path / "u16.yaml", "--schema-only")
    assert result.exit_code == 2 and "UTF-16" in result.output and "iconv -f utf-16 -t utf-8" in result.output, (
        result.output
    )
    (tmp_path / "bom.yaml").write_bytes(b"\xef\xbb\xbf" + text.encode())
    assert validate(tmp_path / "bom.yaml", "--schema-only").exit_code == 0


def test_extends_chain_depth_and_total_size_are_bounded(tmp_path):
    for i in range(MAX_EXTENDS + 4):
        (tmp_path / f"c{i}.yaml").write_text(f"extends: c{i + 1}.yaml\n")
    (tmp_path / f"c{MAX_EXTENDS + 4}.yaml").write_text("data: {train: x.jsonl}\n")
    with pytest.raises(RecipeError, match=f"a chain of more than {MAX_EXTENDS} recipes"):
        load_recipe(tmp_path / "c0.yaml")
    # Each file alone is within the bounds; together they are not.
    values = "data:\n  train: x.jsonl\noutput:\n  tags: [" + ", ".join(["t"] * 60_000) + "]\n"
    (tmp_path / "base.yaml").write_text(values)
    (tmp_path / "child.yaml").write_text("extends: base.yaml\n" + values.replace("data:\n  train: x.jsonl\n", ""))
    load_recipe(tmp_path / "base.yaml")
    with pytest.raises(RecipeError, match="more than 100,000 values"):
        load_recipe(tmp_path / "child.yaml")


def test_extends_with_a_merge_key_and_number_keys_merges(tmp_path):
    (tmp_path / "base.yaml").write_text("data: {train: x.jsonl}\ntraining: {lr: 0.001}\n")
    (tmp_path / "child.yaml").write_text("extends: base.yaml\ncommon: &c {lr: 0.002}\ntraining:\n  <<: *c\n  1: 2\n")
    with pytest.raises(RecipeError, match="unknown field") as info:  # one error per unknown key, not a KeyError
        load_recipe(tmp_path / "child.yaml")
    assert "child.yaml:1: common" in str(info.value) or "common: unknown field" in str(info.value)


# ---------------------------------------------------------------- non-finite numbers


def _float_fields() -> list[str]:
    out = []
    for section, field in Recipe.model_fields.items():
        model = field.annotation
        if not isinstance(model, type):
            continue
        for name, sub in getattr(model, "model_fields", {}).items():
            if sub.annotation is float or float in typing.get_args(sub.annotation):
                out.append(f"{section}.{name}")
    return out


@pytest.mark.parametrize("field", _float_fields())
@pytest.mark.parametrize("value", [".inf", "-.inf", ".nan"])
def test_non_finite_numbers_are_refused_in_every_float_field(tmp_path, field, value):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("data:\n  train: x.jsonl\n")
    with pytest.raises(RecipeError, match="finite number"):
        load_recipe(recipe, [f"{field}={value}"])


def test_non_finite_numbers_point_at_their_line(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        "data:\n  train:\n    - path: x.jsonl\n      weight: .nan\ntraining:\n  epochs: .inf\n  max_steps: .inf\n"
    )
    result = validate(recipe, "--schema-only")
    assert result.exit_code == 2
    for line, field in ((4, "data.train.0.weight"), (6, "training.epochs"), (7, "training.max_steps")):
        assert f"r.yaml:{line}: {field}" in result.output, result.output


def test_huge_source_weight_is_refused(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("data:\n  train:\n    - path: x.jsonl\n      weight: 1.0e9\n")
    assert validate(recipe, "--schema-only").exit_code == 2


# ---------------------------------------------------------------- lengths against the model's positions


def test_max_length_beyond_the_models_positions_is_an_error_and_no_plan(tiny_recipe):
    result = validate(tiny_recipe, "--set", "training.max_length=100000000000")
    assert result.exit_code == 2, result.output
    assert "256 positions" in result.output and "max_position_embeddings" in result.output
    assert "set training.max_length: 256 or less" in result.output
    assert "largest micro-batch" not in result.output  # no plan from it
    assert validate(tiny_recipe, "--set", "training.max_length=256").exit_code == 0


def test_max_length_line_and_the_embedded_model_without_torch(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("data:\n  train: x.jsonl\ntraining:\n  max_length: 100000\n")
    code = (
        "import sys\nfrom lorafit.recipe import load_recipe\nfrom lorafit.core.errors import RecipeError\n"
        f"try:\n    load_recipe({str(recipe)!r})\nexcept RecipeError as e:\n    print(e)\n"
        "print('torch' in sys.modules, 'transformers' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert f"{recipe}:4: training.max_length: 100,000 tokens is beyond the model's context of 8,192 positions" in out, (
        out
    )
    assert out.strip().endswith("False False")


def test_hub_model_lengths_are_checked_where_its_config_is_read():
    from lorafit import models

    recipe = Recipe.model_validate(
        {"model": {"name": "org/model"}, "data": {"train": "x"}, "training": {"max_length": 4096}}
    )
    models.check_context(recipe, {"max_position_embeddings": 8192})
    models.check_context(recipe, {"model_type": "no positions given"})
    with pytest.raises(
        RecipeError, match="beyond org/model's context of 2,048 positions \\(n_positions in its config\\)"
    ):
        models.check_context(recipe, {"n_positions": 2048})
    with pytest.raises(RecipeError, match="1,024 positions"):
        models.check_context(recipe, {"text_config": {"max_position_embeddings": 1024}})


# ---------------------------------------------------------------- data files that are not what they claim

TEXT = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in chat_records(12))


def _parquet_bytes(tmp_path: Path) -> bytes:
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist([{"text": f"document {i}"} for i in range(12)]), tmp_path / "ok.parquet")
    return (tmp_path / "ok.parquet").read_bytes()


BROKEN = {  # name: (bytes or a function of tmp_path, words the message must hold)
    "utf16.jsonl": (TEXT.encode("utf-16"), ["train.jsonl: UTF-16 text", "iconv -f utf-16 -t utf-8"]),
    "utf16le.jsonl": (TEXT.encode("utf-16-le"), ["UTF-16 text", "iconv -f utf-16"]),
    "utf32.json": (json.dumps(chat_records(4)).encode("utf-32"), ["UTF-32 text", "iconv -f utf-32"]),
    "binary.jsonl": (bytes(range(256)) * 40, ["binary, not UTF-8 JSON lines"]),
    "gzip.jsonl": (gzip.compress(TEXT.encode()), ["gzip-compressed", "gunzip -k"]),
    "latin1.jsonl": (
        TEXT.replace("Question", "Quéstion").encode("latin-1"),
        ["train.jsonl:1: not UTF-8: byte 0xe9", "iconv -f cp1252"],
    ),
    "truncated.jsonl": (TEXT.encode()[:-25], ["train.jsonl:12: invalid JSON", "truncated?"]),
    "cut-char.jsonl": (
        (TEXT.rstrip("\n") + ' é"').encode()[:-2],
        ["train.jsonl:12: the file ends in the middle of a UTF-8 character"],
    ),
    "truncated.json": (json.dumps(chat_records(4)).encode()[:-9], ["train.json:1: invalid JSON", "truncated?"]),
    "jsonlines.json": (TEXT.encode(), ["train.json:2: invalid JSON: Extra data", "name the file .jsonl"]),
    "utf16.csv": ("text\nhello there\n".encode("utf-16"), ["UTF-16 text, not UTF-8 CSV", "iconv"]),
    "latin1.csv": ("text\nhéllo\n".encode("latin-1"), ["train.csv:2: not UTF-8: byte 0xe9"]),
    "text.parquet": (TEXT.encode(), ["train.parquet: not a Parquet file (it looks like JSON text)", "train.jsonl"]),
    "binary.parquet": (bytes(range(256)) * 4, ["not a Parquet file (it looks like binary)"]),
    "truncated.parquet": (lambda tmp: _parquet_bytes(tmp)[:-12], ["a truncated Parquet file"]),
    "parquet.jsonl": (
        lambda tmp: _parquet_bytes(tmp),
        ["a Parquet file, not UTF-8 JSON lines", "give it the .parquet extension: mv"],
    ),
    "deep.jsonl": (b"[" * 100_000 + b"\n", ["train.jsonl:1: invalid JSON: nested too deeply"]),
}


@pytest.mark.parametrize("case", sorted(BROKEN))
def test_every_reader_turns_a_broken_file_into_exit_3(tiny_model_dir, tmp_path, case):
    content, words = BROKEN[case]
    content = content(tmp_path) if callable(content) else content
    data = tmp_path / f"train{Path(case).suffix}"
    data.write_bytes(content)
    recipe = tmp_path / "r.yaml"
    recipe.write_text(tiny_recipe_text(tiny_model_dir, data, tmp_path / "run"))
    result = validate(recipe)
    assert result.exit_code == 3, result.output
    for word in words:
        assert word in result.output, result.output
    assert data.read_bytes() == content


def test_a_directory_with_one_broken_file_names_it(tiny_model_dir, tmp_path):
    folder = tmp_path / "data"
    folder.mkdir()
    write_jsonl(folder / "a.jsonl", chat_records(12))
    (folder / "b.jsonl").write_bytes(TEXT.encode("utf-16"))
    recipe = tmp_path / "r.yaml"
    recipe.write_text(tiny_recipe_text(tiny_model_dir, folder, tmp_path / "run"))
    result = validate(recipe)
    assert result.exit_code == 3 and "b.jsonl: UTF-16 text" in result.output, result.output


@pytest.mark.parametrize("suffix", [".jsonl", ".json", ".csv"])
def test_a_utf8_bom_is_accepted(tiny_model_dir, tmp_path, suffix):
    records = chat_records(12)
    text = {
        ".jsonl": TEXT,
        ".json": json.dumps(records),
        ".csv": "prompt,completion\n" + "".join(f"question {i},answer {i}\n" for i in range(12)),
    }[suffix]
    data = tmp_path / f"train{suffix}"
    data.write_bytes(b"\xef\xbb\xbf" + text.encode())
    recipe = tmp_path / "r.yaml"
    recipe.write_text(tiny_recipe_text(tiny_model_dir, data, tmp_path / "run"))
    result = validate(recipe)
    assert result.exit_code == 0, result.output
    assert '"rows": 12' in result.output
    assert "\\ufeff" not in result.output and '"ignored_fields": {}' in result.output  # the BOM is not part of a key


def test_a_hub_dataset_whose_files_do_not_decode_is_exit_3(monkeypatch):
    import datasets

    from lorafit.core.errors import DataError
    from lorafit.data import sources
    from lorafit.recipe import DataSection

    def broken(*args, **kwargs):
        try:
            b"\xff\xfe{".decode("utf-8")
        except UnicodeDecodeError as exc:
            raise datasets.exceptions.DatasetGenerationError("An error occurred while generating the dataset") from exc

    monkeypatch.setattr(datasets, "load_dataset", broken)
    monkeypatch.setattr(sources.hub, "offline", lambda: False)
    with pytest.raises(DataError, match=r"hub dataset org/name\[train\]: its files cannot be read: 'utf-8' codec"):
        sources.resolve(DataSection.Source(path="org/name"), "train")


# ---------------------------------------------------------------- the other commands that read a user's file
# (`lorafit import` does not exist: `runs import` is the import command.)


def _fake_run(tmp_path: Path, model_dir: Path) -> Path:
    """A run directory as `lorafit train` leaves it, as far as the commands read it before loading a model."""
    run = tmp_path / "run"
    (run / "adapter").mkdir(parents=True)
    (run / "adapter" / "adapter_config.json").write_text("{}")
    data = write_jsonl(tmp_path / "train.jsonl", chat_records(12))
    recipe = load_recipe(_write(tmp_path / "r.yaml", tiny_recipe_text(model_dir, data, run)))
    (run / "recipe.yaml").write_text(recipe.to_yaml())
    (run / "run.json").write_text(json.dumps({"status": "finished", "data": {"files": {}}}))
    return run


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_eval_with_a_broken_data_file_is_exit_3_before_the_model_loads(tiny_model_dir, tmp_path):
    run = _fake_run(tmp_path, tiny_model_dir)
    broken = tmp_path / "held.jsonl"
    broken.write_bytes(TEXT.encode("utf-16"))
    result = runner.invoke(app, ["eval", str(run), "--data", str(broken)])
    assert result.exit_code == 3, result.output
    assert "held.jsonl: UTF-16 text" in result.output and "Traceback" not in result.output


@pytest.mark.parametrize(
    ("name", "content", "code", "words"),
    [
        ("recipe.yaml", BOMB, 2, "anchors and aliases"),
        ("recipe.yaml", "\x00\x01\x02binary".encode("utf-16"), 2, "not UTF-8 text"),
        ("run.json", '{"status": "finished", "data": {"fi', 3, "not valid JSON (cut off: truncated?)"),
    ],
)
def test_reproduce_with_a_broken_run_file(tiny_model_dir, tmp_path, name, content, code, words):
    run = _fake_run(tmp_path, tiny_model_dir)
    (run / name).write_bytes(content.encode() if isinstance(content, str) else content)
    result = runner.invoke(app, ["reproduce", str(run), "--out", str(tmp_path / "again")])
    assert result.exit_code == code, result.output
    assert words in result.output and "Traceback" not in result.output
    assert not (tmp_path / "again").exists()  # nothing was trained


@pytest.mark.parametrize(
    ("name", "content", "code", "words"),
    [
        ("recipe.yaml", BOMB, 2, "anchors and aliases"),
        ("recipe.yaml", "model: [unclosed\n", 2, "not valid YAML"),
        ("run.json", b"\xff\xfe\x00\x01", 3, "not UTF-8 JSON"),
        ("run.json", '{"train": [1, 2], "status": {"a": 1}, "data": "x", "model": {"name": [1]}}', 0, "#"),
        ("eval.json", "[1, 2]", 3, "expected a JSON object"),
    ],
)
def test_runs_import_with_a_broken_run_file(tiny_model_dir, tmp_path, name, content, code, words):
    run = _fake_run(tmp_path, tiny_model_dir)
    (run / name).write_bytes(content.encode() if isinstance(content, str) else content)
    result = runner.invoke(app, ["runs", "import", str(run)])
    assert result.exit_code == code, result.output
    assert words in result.output and "Traceback" not in result.output


def test_a_hub_model_with_the_hub_unreachable_fails_at_once_without_retries(tmp_path, monkeypatch):
    """Offline without HF_HUB_OFFLINE set, the hub client retried each file for about a minute."""
    import huggingface_hub.constants

    from lorafit.core import hub

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    hub._answers.cache_clear()
    refused = []

    def no_route(address, timeout=None):
        refused.append(address)
        raise OSError("unreachable")

    monkeypatch.setattr(hub.socket, "create_connection", no_route)
    data = write_jsonl(tmp_path / "train.jsonl", chat_records(4))
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"model:\n  name: someorg/not-cached-model\ndata:\n  train: {data}\n")
    try:
        result = validate(recipe)
    finally:
        hub._answers.cache_clear()
    assert result.exit_code == 7, result.output
    assert "someorg/not-cached-model" in result.output and "unreachable" in result.output
    assert "Retrying" not in result.output and refused
    assert huggingface_hub.constants.HF_HUB_OFFLINE is False  # the offline switch does not outlive the load
