"""Data: formats and field names, sources and weights, file:line validation, masks, templates,
truncation, packing boundaries, the tokenization cache and the data report."""

import json
import os
import time
from pathlib import Path

import pytest
from transformers import AutoTokenizer

from lorafit import data
from lorafit.core.errors import DataError, MissingError, RecipeError
from lorafit.data import formats, tokens
from lorafit.recipe import Recipe

from conftest import CHATML, chat_records, write_jsonl

FIXTURES = Path(__file__).parent / "fixtures" / "data"


@pytest.fixture(scope="module")
def tok(tiny_model_dir):
    return AutoTokenizer.from_pretrained(tiny_model_dir)


def recipe_for(train, **data_fields) -> Recipe:
    training = data_fields.pop("training", {})
    return Recipe.model_validate({"data": {"train": train, "eval_split": None, **data_fields}, "training": training})


def trained_text(tok, record, train_on="assistant", fields=None):
    fmt = formats.detect_format(record, fields)
    names = formats.names_for(fmt, fields)
    segments = formats.render(formats.canonical(record, fmt, names), fmt, tok, train_on, names=names)
    ids, labels = data.tokenize(segments, tok)
    return tok.decode([i for i, lab in zip(ids, labels) if lab != -100]), tok.decode(ids)


CHAT = {
    "messages": [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Where is order 12?"},
        {"role": "assistant", "content": "It ships today."},
        {"role": "user", "content": "And order 13?"},
        {"role": "assistant", "content": "Tomorrow."},
    ]
}


# ---------------------------------------------------------------- masks per format


def test_mask_trains_assistant_turns_and_end_of_turn_only(tok):
    trained, full = trained_text(tok, CHAT)
    assert trained == "It ships today.<|im_end|>Tomorrow.<|im_end|>"
    assert full.count("<|im_start|>") == 5 and full.startswith("<|im_start|>system\nBe brief.<|im_end|>")


def test_mask_last_assistant_and_all(tok):
    assert trained_text(tok, CHAT, "last_assistant")[0] == "Tomorrow.<|im_end|>"
    trained, full = trained_text(tok, CHAT, "all")
    assert trained == full


def test_prompt_completion_and_text(tok):
    assert trained_text(tok, {"prompt": "Q: 2+2?", "completion": " 4"})[0] == " 4<|im_end|>"
    assert trained_text(tok, {"prompt": "Q: 2+2?", "completion": " 4"}, "all")[0] == "Q: 2+2? 4<|im_end|>"
    assert trained_text(tok, {"text": "plain words"})[0] == "plain words<|im_end|>"


def test_alpaca_with_system_and_input(tok):
    alpaca = {"instruction": "Say hi", "input": "to Bo", "output": "Hi Bo", "system": "Be kind."}
    trained, full = trained_text(tok, alpaca)
    assert trained == "Hi Bo<|im_end|>"
    assert "<|im_start|>system\nBe kind.<|im_end|>" in full and "Say hi\n\nto Bo" in full


def test_sharegpt_multi_turn_with_system(tok):
    share = {
        "conversations": [
            {"from": "system", "value": "Be brief."},
            {"from": "human", "value": "yo"},
            {"from": "gpt", "value": "hey"},
            {"from": "human", "value": "bye"},
            {"from": "gpt", "value": "ciao"},
        ]
    }
    assert formats.detect_format(share) == "sharegpt"
    trained, full = trained_text(tok, share)
    assert trained == "hey<|im_end|>ciao<|im_end|>"
    assert full.count("<|im_start|>user") == 2


# ---------------------------------------------------------------- field names


def test_field_mapping_for_messages_and_roles(tmp_path, tok):
    rows = [
        {
            "id": i,
            "conversation": [
                {"speaker": "human", "text": f"Where is order {i}?"},
                {"speaker": "bot", "text": f"Order {i} ships today."},
            ],
        }
        for i in range(6)
    ]
    path = write_jsonl(tmp_path / "mapped.jsonl", rows)
    fields = {
        "messages": "conversation",
        "role": "speaker",
        "content": "text",
        "roles": {"human": "user", "bot": "assistant"},
    }
    prepared = data.prepare(recipe_for(str(path), fields=fields), tok)
    assert prepared.stats.format == "messages" and len(prepared.train) == 6
    ids, labels = prepared.train[0]["input_ids"], prepared.train[0]["labels"]
    assert tok.decode([i for i, lab in zip(ids, labels) if lab != -100]) == "Order 0 ships today.<|im_end|>"
    assert prepared.stats.ignored_fields == {"id": 6}
    # Rows keep lorafit's names downstream (evaluate reads row.record["messages"]).
    assert (
        prepared.eval_rows == []
        and formats.to_messages(
            formats.canonical(
                rows[0],
                "messages",
                formats.names_for(
                    "messages", Recipe.model_validate({"data": {"train": "x", "fields": fields}}).data.fields
                ),
            ),
            "messages",
        )[1]["role"]
        == "assistant"
    )


def test_field_mapping_errors_use_the_users_names(tmp_path, tok):
    rows = [
        {"conversation": [{"speaker": "user", "text": "a"}, {"speaker": "assistant", "text": ""}]},
        {"conversation": [{"speaker": "user", "text": "a"}, {"speaker": "robot", "text": "b"}]},
    ]
    path = write_jsonl(tmp_path / "mapped.jsonl", rows)
    fields = {"messages": "conversation", "role": "speaker", "content": "text"}
    with pytest.raises(DataError) as info:
        data.prepare(recipe_for(str(path), fields=fields), tok)
    text = str(info.value)
    assert f"{path}:1: conversation[1].text is empty" in text
    assert f"{path}:2: conversation[1]: unknown role 'robot'" in text and "data.fields.roles" in text


def test_alpaca_mapping_and_per_source_fields(tmp_path, tok):
    qa = write_jsonl(tmp_path / "qa.jsonl", [{"question": "Capital of France?", "answer": "Paris."}] * 3)
    chat = write_jsonl(tmp_path / "chat.jsonl", chat_records(3))
    recipe = recipe_for([{"path": str(qa), "fields": {"instruction": "question", "output": "answer"}}, str(chat)])
    prepared = data.prepare(recipe, tok)
    assert prepared.stats.format == "mixed"
    assert [s["format"] for s in prepared.stats.sources] == ["alpaca", "messages"]
    ids, labels = prepared.train[0]["input_ids"], prepared.train[0]["labels"]
    assert tok.decode([i for i, lab in zip(ids, labels) if lab != -100]) == "Paris.<|im_end|>"


def test_field_and_source_typos_are_recipe_errors(tmp_path):
    from lorafit.recipe import load_recipe

    path = tmp_path / "r.yaml"
    path.write_text("data:\n  train:\n    - a.jsonl\n    - {path: b.jsonl, wieght: 2}\n  fields: {mesages: conv}\n")
    with pytest.raises(RecipeError) as info:
        load_recipe(path)
    text = str(info.value)
    assert f"{path}:5: data.fields.mesages: unknown field; did you mean 'messages'?" in text
    assert f"{path}:4: data.train.1.wieght: unknown field" in text and text.count("\n") == 1


def test_missing_field_suggests_the_close_key(tmp_path, tok):
    path = write_jsonl(tmp_path / "a.jsonl", [{"instruction": "a", "outptu": "b"}])
    with pytest.raises(DataError, match=r"a.jsonl:1: missing field 'output'; did you mean 'outptu'\?"):
        data.prepare(recipe_for(str(path), format="alpaca"), tok)


# ---------------------------------------------------------------- sources and weights


def test_directory_and_weights_are_seeded_and_counted(tmp_path, tok):
    folder = tmp_path / "dir"
    folder.mkdir()
    write_jsonl(folder / "a.jsonl", chat_records(10, seed=1))
    write_jsonl(folder / "b.jsonl", chat_records(10, seed=2))
    (folder / "notes.txt").write_text("not data")
    extra = write_jsonl(tmp_path / "extra.jsonl", chat_records(8, seed=3))
    recipe = recipe_for([{"path": str(folder), "weight": 0.5}, {"path": str(extra), "weight": 2.5}])
    a, b = data.prepare(recipe, tok), data.prepare(recipe, tok)
    assert a.train["input_ids"] == b.train["input_ids"]
    assert [(s["rows"], s["weight"], s["train_examples"]) for s in a.stats.sources] == [(20, 0.5, 10), (8, 2.5, 20)]
    assert a.stats.train_rows == 30 and len(a.train) == 30
    assert sorted(a.stats.files) == sorted([str(folder / "a.jsonl"), str(folder / "b.jsonl"), str(extra)])
    summary = a.stats.summary()
    assert summary["sources"][0]["source"] == str(folder) and json.dumps(summary)


def test_split_happens_before_weights(tmp_path, tok):
    path = write_jsonl(tmp_path / "d.jsonl", chat_records(20))
    recipe = Recipe.model_validate({"data": {"train": {"path": str(path), "weight": 3}, "eval_split": 0.25}})
    prepared = data.prepare(recipe, tok)
    assert (prepared.stats.train_rows, prepared.stats.eval_rows) == (45, 5)
    train_where, held = set(prepared.train_where), {f"{r.source}:{r.line}" for r in prepared.eval_rows}
    assert not train_where & held  # a repeated row never leaks into the held-out set


def test_csv_json_and_parquet_with_line_numbers(tmp_path, tok):
    import pyarrow as pa
    import pyarrow.parquet as pq

    csv_path = tmp_path / "d.csv"
    csv_path.write_text('prompt,completion\n"two\nlines",ok\nQ,\n')
    with pytest.raises(DataError, match=r"d.csv:4: completion is empty"):
        data.prepare(recipe_for(str(csv_path)), tok)
    json_path = tmp_path / "d.json"
    json_path.write_text(json.dumps([{"text": "a"}, 5, {"text": "b"}]))
    with pytest.raises(DataError, match=r"d.json:2: record 2 is not a JSON object"):
        data.prepare(recipe_for(str(json_path)), tok)
    pq.write_table(
        pa.Table.from_pylist([{"prompt": "Q", "completion": "A"}, {"prompt": "Q", "completion": None}]),
        tmp_path / "d.parquet",
    )
    with pytest.raises(DataError, match=r"d.parquet:2: completion is missing"):
        data.prepare(recipe_for(str(tmp_path / "d.parquet")), tok)


@pytest.mark.parametrize("why", ["HF_HUB_OFFLINE", "no network"])
def test_hub_dataset_offline_is_one_line_exit_7(tok, monkeypatch, why):
    if why == "HF_HUB_OFFLINE":
        monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    else:  # nothing listens on the discard port: the hub is unreachable, and must be found so at once
        monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
        monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
    started = time.perf_counter()
    with pytest.raises(MissingError) as info:
        data.prepare(recipe_for({"path": "lorafit-test/no-such-dataset", "split": "train", "subset": "default"}), tok)
    assert time.perf_counter() - started < 30
    assert info.value.exit_code == 7 and "\n" not in str(info.value)
    assert "lorafit-test/no-such-dataset[default:train] is not available offline" in str(info.value)


def test_hub_dataset_rows_weights_and_counts(tok, tmp_path, monkeypatch):
    """The hub path up to datasets.load_dataset (which needs a network here, so it is replaced)."""
    import datasets

    from lorafit.data import sources

    calls = []

    def fake_load_dataset(path, name=None, split=None):
        calls.append((path, name, split))
        return datasets.Dataset.from_list([{"conversation": r["messages"]} for r in chat_records(6)])

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    monkeypatch.setattr(sources.hub, "offline", lambda: False)
    local = write_jsonl(tmp_path / "local.jsonl", chat_records(4))
    recipe = recipe_for(
        [
            {
                "path": "org/support-chats",
                "subset": "en",
                "split": "train[:6]",
                "weight": 0.5,
                "fields": {"messages": "conversation"},
            },
            str(local),
        ]
    )
    prepared = data.prepare(recipe, tok)
    assert calls == [("org/support-chats", "en", "train[:6]")]
    assert [(s["source"], s["rows"], s["train_examples"]) for s in prepared.stats.sources] == [
        ("org/support-chats[en:train[:6]]", 6, 3),
        (str(local), 4, 4),
    ]
    assert prepared.stats.files["org/support-chats[en:train[:6]]"].startswith("hub:")
    assert all(w.startswith("org/support-chats[en:train[:6]]:") for w in prepared.train_where[:3])


def test_missing_local_file_is_exit_7(tok, tmp_path):
    with pytest.raises(MissingError, match="data file not found") as info:
        data.prepare(recipe_for(str(tmp_path / "nope.jsonl")), tok)
    assert info.value.exit_code == 7


def test_eval_sources_take_no_weights():
    with pytest.raises(Exception, match="weights apply to data.train sources only"):
        Recipe.model_validate({"data": {"train": "a", "eval": {"path": "b", "weight": 2}}})


# ---------------------------------------------------------------- validation


def test_broken_fixture_reports_every_problem_with_file_and_line(tok):
    path = FIXTURES / "broken.jsonl"
    with pytest.raises(DataError) as info:
        data.prepare(recipe_for(str(path)), tok)
    assert info.value.exit_code == 3
    text = str(info.value)
    assert text.startswith("6 bad record(s):")
    assert f"{path}:37: invalid JSON" in text
    assert f"{path}:5: missing field 'messages'; did you mean 'mesages'?" in text
    assert f"{path}:12: messages[1].content must be a string, got int" in text
    assert f"{path}:20: messages[2].content is empty" in text
    assert f"{path}:28: messages[2]: unknown role 'bot'" in text
    assert f"{path}:33: messages[1] is 'assistant', expected 'user'" in text
    skipping = data.prepare(recipe_for(str(path), on_bad_rows="skip"), tok)
    assert len(skipping.train) == 34 and skipping.stats.bad_rows == 6


def test_more_than_20_problems_are_counted(tmp_path, tok):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"text": ""}\n' * 25)
    with pytest.raises(DataError) as info:
        data.prepare(recipe_for(str(path)), tok)
    text = str(info.value)
    assert "25 bad record(s)" in text and "... and 5 more" in text
    assert f"{path}:20: text is empty" in text and f"{path}:21:" not in text


def test_all_masked_is_an_error(tmp_path, tok):
    path = tmp_path / "d.jsonl"
    path.write_text('{"prompt": "a long prompt here", "completion": "b"}\n')
    with pytest.raises(DataError, match="no trainable token"):
        data.prepare(recipe_for(str(path), training={"max_length": 3}), tok)


# ---------------------------------------------------------------- chat templates


def test_named_and_jinja_templates(tmp_path, tok):
    path = write_jsonl(tmp_path / "d.jsonl", [CHAT])
    plain = "{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }}{{ eos_token }}\n{% endfor %}{% if add_generation_prompt %}[assistant] {% endif %}"
    own = AutoTokenizer.from_pretrained(tok.name_or_path)
    prepared = data.prepare(recipe_for(str(path), chat_template=plain), own)
    ids, labels = prepared.train[0]["input_ids"], prepared.train[0]["labels"]
    assert (
        own.decode([i for i, lab in zip(ids, labels) if lab != -100]) == "It ships today.<|im_end|>Tomorrow.<|im_end|>"
    )
    assert own.decode(ids).startswith("[system] Be brief.") and own.chat_template == plain
    prepared = data.prepare(recipe_for(str(path), chat_template="chatml"), own)
    assert own.chat_template == CHATML and own.decode(prepared.train[0]["input_ids"]).startswith("<|im_start|>system")
    with pytest.raises(Exception, match="did you mean 'chatml'"):
        recipe_for("x", chat_template="chatm")


def test_base_model_without_template_gets_chatml_and_a_warning(tmp_path, tiny_model_dir):
    base = AutoTokenizer.from_pretrained(tiny_model_dir)
    base.chat_template = None
    path = write_jsonl(tmp_path / "d.jsonl", chat_records(4))
    prepared = data.prepare(recipe_for(str(path)), base)
    assert prepared.stats.warnings and "no chat template; using ChatML" in prepared.stats.warnings[0]
    assert base.chat_template == formats.DEFAULT_CHAT_TEMPLATE
    assert prepared.stats.summary()["warnings"] == prepared.stats.warnings
    text_only = AutoTokenizer.from_pretrained(tiny_model_dir)
    text_only.chat_template = None
    plain = write_jsonl(tmp_path / "t.jsonl", [{"text": "plain words"}])
    assert data.prepare(recipe_for(str(plain)), text_only).stats.warnings == []


@pytest.mark.slow
def test_real_smollm2_tokenizer_masks():
    root = Path(os.environ.get("LORAFIT_CACHE") or Path.home() / ".cache" / "lorafit")
    path = root / "models" / "smollm2-135m-instruct"
    if not (path / "tokenizer.json").is_file():
        pytest.skip(f"no converted SmolLM2 at {path} (run the quickstart once)")
    real = AutoTokenizer.from_pretrained(path)  # tokenizer only: no weights are loaded
    trained, full = trained_text(real, CHAT)
    assert trained == "It ships today.<|im_end|>Tomorrow.<|im_end|>"
    assert "<|im_start|>system\nBe brief.<|im_end|>" in full
    no_system = {"messages": CHAT["messages"][1:3]}
    trained, full = trained_text(real, no_system)
    assert trained == "It ships today.<|im_end|>" and "SmolLM" in full  # the template's own default system prompt
    assert trained_text(real, {"instruction": "Say hi", "output": "Hi"})[0] == "Hi<|im_end|>"


# ---------------------------------------------------------------- length


def test_split_is_seeded_and_counts_truncation(tmp_path, tok):
    path = write_jsonl(tmp_path / "d.jsonl", chat_records(40))
    recipe = Recipe.model_validate({"data": {"train": str(path), "eval_split": 0.25}, "training": {"max_length": 72}})
    a, b = data.prepare(recipe, tok), data.prepare(recipe, tok)
    assert a.train["input_ids"] == b.train["input_ids"]
    assert (a.stats.train_rows, a.stats.eval_rows) == (30, 10)
    assert 0 < a.stats.truncated < 30 and a.stats.tokens_lost > 0
    assert max(len(x) for x in a.train["input_ids"]) == 72


def test_drop_long_drops_instead_of_truncating(tmp_path, tok):
    path = write_jsonl(tmp_path / "d.jsonl", chat_records(40))
    cut = data.prepare(recipe_for(str(path), training={"max_length": 72}), tok)
    dropped = data.prepare(recipe_for(str(path), drop_long=True, training={"max_length": 72}), tok)
    assert dropped.stats.dropped_long == cut.stats.truncated > 0
    assert dropped.stats.truncated == 0 and dropped.stats.tokens_lost == 0
    assert len(dropped.train) == 40 - dropped.stats.dropped_long
    assert max(len(x) for x in dropped.train["input_ids"]) <= 72
    assert dropped.stats.summary()["dropped_long"] == dropped.stats.dropped_long


# ---------------------------------------------------------------- packing


def _model(tiny_model_dir, attn):
    from lorafit import models
    from lorafit.models import adapters

    recipe = Recipe.model_validate(
        {"model": {"name": str(tiny_model_dir), "attn_implementation": attn}, "data": {"train": "x"}}
    )
    import torch

    torch.manual_seed(0)
    model = adapters.wrap(models.load_model(recipe, str(tiny_model_dir)), recipe, str(tiny_model_dir))
    return model.eval()


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_packed_loss_equals_unpacked_loss(tmp_path, tok, tiny_model_dir, attn):
    """Packing must not let examples attend to each other: the same examples give the same loss
    packed (TRL's BFD packing + padding-free collator, as lorafit trains) and unpacked, and every
    packed token sees exactly what it would see alone."""
    import torch
    from trl import SFTTrainer

    from lorafit.train import trainer as training

    records = chat_records(12)
    records[3]["messages"].extend(
        [{"role": "user", "content": "And the return?"}, {"role": "assistant", "content": "30 days."}]
    )
    path = write_jsonl(tmp_path / "d.jsonl", records)
    model = _model(tiny_model_dir, attn)
    losses, batches = {}, {}
    for packing in (False, True):
        recipe = Recipe.model_validate(
            {
                "model": {"name": str(tiny_model_dir)},
                "data": {"train": str(path), "eval_split": None, "packing": packing},
                "training": {"max_length": 256, "batch_size": 12, "group_by_length": False},
            }
        )
        prepared = data.prepare(recipe, tok)
        args = training.sft_config(recipe, tmp_path / f"run-{packing}", "float32", "cpu", False, False)
        trainer = SFTTrainer(model=model, args=args, train_dataset=prepared.train, processing_class=tok)
        rows = [trainer.train_dataset[i] for i in range(len(trainer.train_dataset))]
        batch = batches[packing] = trainer.data_collator(rows)
        with torch.no_grad():
            losses[packing] = float(trainer.compute_loss(trainer.model, dict(batch)))
    assert losses[True] == pytest.approx(losses[False], rel=1e-5, abs=1e-5)

    packed = batches[True]
    assert "attention_mask" not in packed and packed["input_ids"].shape[0] == 1  # padding-free: one row
    starts = (packed["position_ids"][0] == 0).nonzero().flatten().tolist() + [packed["input_ids"].shape[1]]
    assert len(starts) - 1 == 12  # positions restart at each of the 12 examples
    ids = packed["input_ids"]
    with torch.no_grad():
        together = model(input_ids=ids, position_ids=packed["position_ids"]).logits[0]
        alone = torch.cat([model(input_ids=ids[:, a:b]).logits[0] for a, b in zip(starts, starts[1:])])
        # Control: the same row with an all-ones attention mask, as a generic collator would add, leaks.
        leaky = model(input_ids=ids, position_ids=packed["position_ids"], attention_mask=torch.ones_like(ids)).logits[0]
    assert (together - alone).abs().max() < 1e-4
    assert (leaky - alone).abs().max() > 1e-2


# ---------------------------------------------------------------- cache


def test_tokenization_cache_round_trip(tmp_path, tok, monkeypatch):
    monkeypatch.setenv("LORAFIT_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(data, "CACHE_MIN_SECONDS", 0.0)
    path = write_jsonl(tmp_path / "d.jsonl", chat_records(30))
    recipe = Recipe.model_validate({"data": {"train": str(path), "eval_split": 0.2}, "training": {"max_length": 72}})
    first = data.prepare(recipe, tok)
    second = data.prepare(recipe, tok)
    assert not first.stats.cached and second.stats.cached
    assert len(list((tmp_path / "cache" / "data").iterdir())) == 1
    assert second.train["input_ids"] == first.train["input_ids"] and second.train["labels"] == first.train["labels"]
    assert second.eval["input_ids"] == first.eval["input_ids"]
    assert [r.record for r in second.eval_rows] == [r.record for r in first.eval_rows]
    assert {**second.stats.summary(), "cached": False, "seconds": 0} == {**first.stats.summary(), "seconds": 0}
    other = Recipe.model_validate({"data": {"train": str(path), "eval_split": 0.2}, "training": {"max_length": 64}})
    assert not data.prepare(other, tok).stats.cached  # settings are part of the key
    write_jsonl(path, chat_records(31))
    assert not data.prepare(recipe, tok).stats.cached  # so is the file's content
    off = Recipe.model_validate(
        {"data": {"train": str(path), "eval_split": 0.2, "cache": False}, "training": {"max_length": 72}}
    )
    assert not data.prepare(off, tok).stats.cached


# ---------------------------------------------------------------- report


def test_data_report_shows_examples_lengths_sources_and_masking(tmp_path, tok):
    from rich.console import Console

    from lorafit.data import data_report

    path = write_jsonl(tmp_path / "d.jsonl", chat_records(20) + [{"messages": CHAT["messages"], "id": 1}])
    recipe = Recipe.model_validate({"data": {"train": str(path), "eval_split": 0.1}, "training": {"max_length": 72}})
    console = Console(record=True, width=120, color_system="truecolor")
    data_report.report(recipe, tok, console, n=2)
    text = console.export_text()
    assert "19 train / 2 held-out examples, format messages" in text
    assert text.count("example ") >= 2 and f"{path}:1" in text and "You are the warehouse support assistant." in text
    assert "token lengths" in text and "│█" in text and "(longer than training.max_length)" in text
    assert str(path) in text and "truncation" in text and "tokens trained" in text
    assert "ignored fields: id (1 rows)" in text
    styled = data_report.highlighted(*data.tokenize(formats.render(CHAT, "messages", tok, "assistant"), tok), tok)
    trained = "".join(styled.plain[s.start : s.end] for s in styled.spans if s.style == data_report.TRAINED)
    assert trained == "It ships today.<|im_end|>Tomorrow.<|im_end|>"


def test_csv_line_numbers_count_blank_lines(tmp_path, tok):
    csv_path = tmp_path / "d.csv"
    csv_path.write_text("prompt,completion\nQ,A\n\nQ,\n")
    with pytest.raises(DataError, match=r"d.csv:4: completion is empty"):
        data.prepare(recipe_for(str(csv_path)), tok)


def test_a_small_source_weighted_down_does_not_vanish_silently(tmp_path, tok):
    from lorafit.data import sources

    assert sources.weighted(["only"], 0.5, "s") == ["only"]  # half rounds up, not to even (0)
    big, small = (
        write_jsonl(tmp_path / "big.jsonl", chat_records(8)),
        write_jsonl(tmp_path / "small.jsonl", chat_records(3)),
    )
    prepared = data.prepare(recipe_for([{"path": str(big)}, {"path": str(small), "weight": 0.1}]), tok)
    assert any("weight 0.1 leaves none of its 3 examples" in w for w in prepared.stats.warnings)


def test_a_template_that_cannot_mask_a_row_names_the_row(tmp_path, tok):
    """Like Qwen3's (it drops earlier turns' reasoning): single-turn rows render prefix by prefix, multi-turn
    rows do not. The bad rows are listed as file:line, and on_bad_rows: skip drops just them."""
    hides_earlier = (
        "{% for m in messages %}<|im_start|>{{ m['role'] }}\n"
        "{% if m['role'] == 'assistant' and not loop.last %}...{% else %}{{ m['content'] }}{% endif %}<|im_end|>\n"
        "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
    )
    path = write_jsonl(tmp_path / "d.jsonl", chat_records(4) + [CHAT])
    with pytest.raises(DataError, match=r"d.jsonl:5: the chat template does not render conversations prefix by prefix"):
        data.prepare(recipe_for(str(path), chat_template=hides_earlier), tok)
    skipped = data.prepare(recipe_for(str(path), chat_template=hides_earlier, on_bad_rows="skip"), tok)
    assert len(skipped.train) == 4 and skipped.stats.bad_rows == 1


def test_packed_rows_are_planned_at_max_length():
    from lorafit.data import DataStats

    stats = DataStats(lengths=[100, 120], most_trained=30, tokens=220, trained_tokens=50)
    assert stats.plan_inputs(2048) == {"seq_len": 120, "trained_fraction": 30 / 120}
    assert stats.plan_inputs(2048, packing=True) == {"seq_len": 2048, "trained_fraction": 1.0}


def test_sentencepiece_prefix_space_is_tokenized_as_at_inference():
    """A Metaspace tokenizer (Llama 2, Mistral v0.1) puts '▁' at the start of every text it is given: examples
    are tokenized whole, so the ids are the ones inference sees, and only the reply and </s> carry loss."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.BPE(unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Metaspace(
        replacement="▁", prepend_scheme="always", split=False
    )  # as Llama 2
    backend.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always", split=False)
    corpus = ["[INST] where is my order [/INST]", "it ships today", "thanks a lot", "I am the warehouse assistant"] * 50
    backend.train_from_iterator(
        corpus, trainers.BpeTrainer(vocab_size=120, special_tokens=["<unk>", "<s>", "</s>"])
    )  # [INST] is plain text, as in Llama 2
    tok = PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>", bos_token="<s>", eos_token="</s>")
    template = (
        "{{ bos_token }}{% for m in messages %}{% if m['role'] == 'user' %}[INST] {{ m['content'] }} [/INST]"
        "{% else %}{{ m['content'] }}{{ eos_token }}{% endif %}{% endfor %}"
    )  # Mistral v0.1: no space after [/INST]
    record = {
        "messages": [
            {"role": "user", "content": "where is my order"},
            {"role": "assistant", "content": "it ships today"},
        ]
    }
    segments = formats.render(record, "messages", tok, "assistant", template)
    ids, labels = data.tokenize(segments, tok)
    whole = "".join(text for text, _ in segments)
    assert ids == tok(whole, add_special_tokens=False)["input_ids"]
    assert tokens._tokenize_segments([segments], tok)[0][0] != ids  # segment by segment: spurious '▁' tokens
    assert tok.decode([i for i, lab in zip(ids, labels) if lab != -100]).strip() == "it ships today</s>"


def test_formats_without_a_template_start_with_the_models_bos_id():
    """text and prompt_completion rows of a tokenizer that adds a BOS (Llama, Gemma) start with the BOS id,
    untrained, and the text after it is tokenized as at inference: with a Llama-style Metaspace
    (prepend_scheme 'first'), '<s>' written as text would cost the first word its '▁'."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.BPE(unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first", split=False)
    backend.train_from_iterator(
        ["hello world, where is my order", "it ships today"] * 50,
        trainers.BpeTrainer(vocab_size=90, special_tokens=["<unk>", "<s>", "</s>"]),
    )
    backend.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    tok = PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>", bos_token="<s>", eos_token="</s>")
    assert formats.adds_bos(tok)
    record = {"prompt": "hello world ", "completion": "it ships today"}
    example = data.Example(formats.render(record, "prompt_completion", tok, "assistant"), "d.jsonl:1", bos=True)
    stats = data.DataStats()
    columns = tokens.encode([example], tok, Recipe.model_validate({"data": {"train": "d.jsonl"}}), stats, count=True)
    ids, labels = columns["input_ids"][0], columns["labels"][0]
    assert ids == tok("hello world it ships today</s>")["input_ids"]  # exactly what the tokenizer gives, BOS included
    trained = "".join(tok.convert_ids_to_tokens([i for i, lab in zip(ids, labels) if lab != -100]))
    assert labels[0] == -100 and trained.replace("▁", " ").strip() == "it ships today</s>"
