"""data.preserve: the base model's own answers to general prompts are mixed into training at preserve_ratio,
trained on their answers only, generated once and then read from the cache; unfinished answers are left out."""

from __future__ import annotations

import json
import random

import pytest
from transformers import AutoTokenizer
from typer.testing import CliRunner

from lorafit import data
from lorafit.cli import app
from lorafit.data import preserve
from lorafit.recipe import Recipe

from conftest import build_tiny_model, chat_records, run_train, tiny_recipe_text, write_jsonl

PROMPTS = [
    "How many days are in a week?",
    "Name a primary colour.",
    "What is 7 plus 5?",
    "Write one sentence about rain.",
    "Give me an unfinished story.",
    "Spell 'cat' backwards.",
]


def write_prompts(path, prompts):
    path.write_text("".join(json.dumps({"messages": [{"role": "user", "content": p}]}) + "\n" for p in prompts))
    return path


@pytest.fixture()
def prompts_file(tmp_path):
    return write_prompts(tmp_path / "general.jsonl", PROMPTS)


class FakeBase:
    """Stands in for the base model: a fixed answer per prompt; 'unfinished' ones never reach their end."""

    def __init__(self):
        self.asked: list[str] = []

    def __call__(self, prompts, template):
        self.asked += [p[-1]["content"] for p in prompts]
        return [(f"Base says: {p[-1]['content'][::-1]}", "unfinished" not in p[-1]["content"]) for p in prompts]


def test_base_answers_are_mixed_in_at_the_ratio_trained_on_and_cached(tmp_path, tiny_model_dir, prompts_file):
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    train_file = write_jsonl(tmp_path / "train.jsonl", chat_records(12))
    recipe = Recipe.model_validate(
        {
            "model": {"name": str(tiny_model_dir)},
            "data": {
                "train": str(train_file),
                "eval_split": None,
                "cache": False,
                "preserve": str(prompts_file),
                "preserve_ratio": 0.5,
            },
        }
    )
    base = FakeBase()
    prepared = data.prepare(recipe, tok, answer=base)

    assert sorted(base.asked) == sorted(PROMPTS)  # 0.5 x 12 = 6 prompts, each once
    preserved = [i for i, w in enumerate(prepared.train_where) if w.startswith("preserve:")]
    assert len(preserved) == 5 and len(prepared.train) == 12 + 5  # the unfinished answer is left out
    assert any("1 of 6 prompts left out" in w for w in prepared.stats.warnings)
    for i in preserved:
        row = prepared.train[i]
        trained = tok.decode([t for t, lab in zip(row["input_ids"], row["labels"]) if lab != -100])
        assert any(trained.startswith(f"Base says: {p[::-1]}") for p in PROMPTS)  # the answer, not the prompt

    again = FakeBase()
    cached = data.prepare(recipe, tok, answer=again)
    assert again.asked == [] and len(cached.train) == len(prepared.train)  # read from the cache
    rows = [json.loads(line) for line in preserve.cache_file(recipe, str(tiny_model_dir)).read_text().splitlines()]
    rows = [r for r in rows if r["messages"][-1]["content"] in PROMPTS]
    assert len(rows) == 6 and sum(r["ended"] for r in rows) == 5


def test_train_with_preserve_generates_the_base_answers_once_through_the_cli(tmp_path, tiny_model_dir):
    asked = [f"{p} (asked through the CLI)" for p in PROMPTS]  # not in the cache the test above filled
    prompts_file = write_prompts(tmp_path / "general.jsonl", asked)
    train_file = write_jsonl(tmp_path / "train.jsonl", chat_records(16))
    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        tiny_recipe_text(
            tiny_model_dir,
            train_file,
            tmp_path / "run",
            training={"max_steps": 2},
            data={"preserve": str(prompts_file), "preserve_ratio": 0.25},
        )
    )
    result = run_train(recipe)
    assert result.exit_code == 0, result.output
    assert "generating the base model's answers to 3 prompts" in " ".join(result.output.split())
    loaded = Recipe.model_validate(
        {
            "model": {"name": str(tiny_model_dir)},
            "data": {"train": str(train_file), "preserve": str(prompts_file)},
            "training": {"max_length": 128},
        }
    )
    rows = [json.loads(line) for line in preserve.cache_file(loaded, str(tiny_model_dir)).read_text().splitlines()]
    # 12 training rows after the 25% split, x 0.25 = 3 prompts answered by the tiny base model and cached
    answered = [r for r in rows if r["messages"][-1]["content"] in asked]  # one cache file per base model
    assert len(answered) == 3
    again = run_train(recipe, f"output.dir={tmp_path / 'again'}")
    assert again.exit_code == 0, again.output
    assert "generating" not in again.output  # the second run reads them from the cache


def sums(low: int, high: int, seed: int, n: int) -> list[tuple[str, str]]:
    """A synthetic general skill: 'What is a plus b?' -> 'a plus b is c.'; disjoint number ranges per use."""
    r = random.Random(seed)
    return [
        (f"What is {a} plus {b}?", f"{a} plus {b} is {a + b}.")
        for a, b in ((r.randint(low, high), r.randint(low, high)) for _ in range(n))
    ]


@pytest.fixture(scope="module")
def taught_base(tmp_path_factory):
    """A tiny model fully trained on sums, so that it has a general behaviour to lose: its greedy answers end,
    which a random model's never do (it would give preserve nothing to keep)."""
    import torch
    from transformers import LlamaForCausalLM

    out = build_tiny_model(tmp_path_factory.mktemp("taught"))
    tok, model = AutoTokenizer.from_pretrained(out), LlamaForCausalLM.from_pretrained(out)
    texts = [
        tok.apply_chat_template([{"role": "user", "content": q}, {"role": "assistant", "content": a}], tokenize=False)
        for q, a in sums(1, 40, seed=0, n=200)
    ]
    torch.manual_seed(0)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for step in range(200):
        batch = tok(random.Random(step).sample(texts, 16), return_tensors="pt", padding=True)
        model(**batch, labels=batch.input_ids.masked_fill(batch.attention_mask == 0, -100)).loss.backward()
        opt.step()
        opt.zero_grad()
    model.save_pretrained(out, safe_serialization=True)
    return out


def test_preserve_cuts_the_drift_on_held_out_general_prompts(tmp_path, taught_base):
    prompts = write_prompts(tmp_path / "prompts.jsonl", [q for q, _ in sums(41, 60, seed=1, n=64)])
    general = tmp_path / "general.jsonl"  # other numbers than preserve's prompts: drift is measured off its data
    general.write_text(
        "".join(
            json.dumps({"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]}) + "\n"
            for q, a in sums(61, 80, seed=2, n=32)
        )
    )
    train_file = write_jsonl(tmp_path / "train.jsonl", chat_records(64))
    kl = {}
    for name, extra in (("without", {}), ("with", {"preserve": str(prompts), "preserve_ratio": 1.0})):
        recipe = tmp_path / f"{name}.yaml"
        recipe.write_text(
            tiny_recipe_text(taught_base, train_file, tmp_path / name, training={"max_steps": 24}, data=extra)
        )
        trained = run_train(recipe)
        assert trained.exit_code == 0, trained.output
        evaluated = CliRunner().invoke(app, ["eval", str(tmp_path / name), "--limit", "4", "--general", str(general)])
        assert evaluated.exit_code == 0, evaluated.output
        kl[name] = json.loads((tmp_path / name / "eval.json").read_text())["general"]["kl"]
    # measured: 3.17 without, 0.18 with (the task data alone pulls the model off its sums)
    assert kl["without"] > 0.5 and kl["with"] < 0.5 * kl["without"], kl
