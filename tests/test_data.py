"""Data: masks from the chat template, file:line validation."""

from pathlib import Path

import pytest
from transformers import AutoTokenizer

from lorafit import data
from lorafit.errors import DataError
from lorafit.recipe import Recipe


@pytest.fixture(scope="module")
def tok(tiny_model_dir):
    return AutoTokenizer.from_pretrained(tiny_model_dir)


def trained_text(tok, record, train_on="assistant"):
    ids, labels = data.tokenize(data.render(record, data.detect_format(record), tok, train_on), tok)
    return tok.decode([i for i, lab in zip(ids, labels) if lab != -100]), tok.decode(ids)


CHAT = {"messages": [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Where is order 12?"},
    {"role": "assistant", "content": "It ships today."},
    {"role": "user", "content": "And order 13?"},
    {"role": "assistant", "content": "Tomorrow."},
]}


def test_mask_trains_assistant_turns_and_end_of_turn_only(tok):
    trained, full = trained_text(tok, CHAT)
    assert trained == "It ships today.<|im_end|>Tomorrow.<|im_end|>"
    assert full.count("<|im_start|>") == 5


def test_mask_last_assistant_and_all(tok):
    assert trained_text(tok, CHAT, "last_assistant")[0] == "Tomorrow.<|im_end|>"
    trained, full = trained_text(tok, CHAT, "all")
    assert trained == full


def test_prompt_completion_and_text(tok):
    assert trained_text(tok, {"prompt": "Q: 2+2?", "completion": " 4"})[0] == " 4<|im_end|>"
    assert trained_text(tok, {"text": "plain words"})[0] == "plain words<|im_end|>"


def test_alpaca_and_sharegpt_become_chats(tok):
    alpaca = {"instruction": "Say hi", "input": "to Bo", "output": "Hi Bo"}
    assert trained_text(tok, alpaca)[0] == "Hi Bo<|im_end|>"
    share = {"conversations": [{"from": "human", "value": "yo"}, {"from": "gpt", "value": "hey"}]}
    assert trained_text(tok, share)[0] == "hey<|im_end|>"


def test_bad_records_are_reported_with_file_and_line(tmp_path, tok):
    lines = [
        '{"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]}',
        '{"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": ""}]}',
        '{"messages": [{"role": "user", "content": "a"}, {"role": "bot", "content": "b"}]}',
        '{"messages": [{"role": "user", "content": 5}, {"role": "assistant", "content": "b"}]}',
        '{"messages": [{"role": "user", "content": "a"}, {"role": "assistant"',
        '{"text": "wrong format"}',
    ]
    path = tmp_path / "bad.jsonl"
    path.write_text("\n".join(lines) + "\n")
    recipe = Recipe.model_validate({"data": {"train": str(path), "format": "messages", "eval_split": None}})
    with pytest.raises(DataError) as info:
        data.prepare(recipe, tok)
    text = str(info.value)
    assert f"{path}:2: messages[1].content is empty" in text
    assert f"{path}:3: messages[1]: unknown role 'bot'" in text
    assert f"{path}:4: messages[0].content must be a string, got int" in text
    assert f"{path}:5: invalid JSON" in text
    assert f"{path}:6: 'messages' must be a non-empty list" in text
    assert "5 bad record(s)" in text

    skipping = Recipe.model_validate({"data": {"train": str(path), "format": "messages", "eval_split": None, "on_bad_rows": "skip"}})
    prepared = data.prepare(skipping, tok)
    assert len(prepared.train) == 1 and prepared.stats.bad_rows == 5


def test_all_masked_is_an_error(tmp_path, tok):
    path = tmp_path / "d.jsonl"
    path.write_text('{"prompt": "a long prompt here", "completion": "b"}\n')
    recipe = Recipe.model_validate({"data": {"train": str(path), "eval_split": None}, "training": {"max_length": 3}})
    with pytest.raises(DataError, match="no trainable token"):
        data.prepare(recipe, tok)


def test_split_is_seeded_and_counts_truncation(tmp_path, tok):
    from conftest import chat_records, write_jsonl

    path = write_jsonl(tmp_path / "d.jsonl", chat_records(40))
    recipe = Recipe.model_validate({"data": {"train": str(path), "eval_split": 0.25}, "training": {"max_length": 72}})
    a, b = data.prepare(recipe, tok), data.prepare(recipe, tok)
    assert a.train["input_ids"] == b.train["input_ids"]
    assert (a.stats.train_rows, a.stats.eval_rows) == (30, 10)
    assert 0 < a.stats.truncated < 30 and a.stats.tokens_lost > 0
    assert max(len(x) for x in a.train["input_ids"]) == 72
