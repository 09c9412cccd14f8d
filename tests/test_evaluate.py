"""`lorafit eval`: task accuracy per category with its failures, and off-task drift (KL, loss, unchanged answers)."""

import json
import math
import shutil

import pytest
from typer.testing import CliRunner

from lorafit.artifacts import drift, scoring
from lorafit.cli import app

from conftest import chat_records, write_jsonl

runner = CliRunner()


def _task(category: str, *references: str) -> scoring.Task:
    return scoring.Task(
        [{"role": "user", "content": f"about {category}"}], "expected", list(references), category, "f:1"
    )


def test_accuracy_per_category_and_failures_on_a_hand_made_case():
    tasks = [
        _task("damage", "DMG-1"),
        _task("damage", "DMG-2"),
        _task("damage", "DMG-3"),
        _task("tracking", "trace", "today"),
    ]
    base = ["no idea", "dmg-2 please", "no", "trace it"]
    adapter = ["Quote DMG-1.", "quote  dmg-2", "DMG-9", "We file a TRACE today."]
    scored = scoring.score_tasks(tasks, {"base": base, "adapter": adapter})
    assert scored["accuracy"] == {"base": 0.25, "adapter": 0.75}
    assert scored["categories"] == {
        "damage": {"examples": 3, "base": round(1 / 3, 4), "adapter": round(2 / 3, 4)},
        "tracking": {"examples": 1, "base": 0.0, "adapter": 1.0},
    }
    assert [(f["category"], f["answer"], f["reference"]) for f in scored["failures"]] == [
        ("damage", "DMG-9", ["DMG-3"])
    ]
    assert scored["exact_match"] == {"base": 0.0, "adapter": 0.0}


def test_an_avoid_phrase_in_the_answer_makes_it_wrong():
    from lorafit.data.sources import Row

    row = Row(
        "f.jsonl",
        7,
        {
            "messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "Refund approved."}],
            "reference": "refund approved",
            "avoid": ["escalated", "ESC-"],
            "category": "calm",
        },
        "messages",
    )
    (task,) = scoring.tasks_from([row])
    assert task.avoid == ["escalated", "ESC-"]
    answers = ["Refund approved.", "Refund approved. I've ESCALATED this.", "Refund approved as case esc-1.", "No."]
    scored = scoring.score_tasks([task] * 4, {"adapter": answers})
    assert scored["accuracy"] == {"adapter": 0.25}
    assert [f["answer"] for f in scored["failures"]] == answers[1:]
    assert scored["failures"][0]["avoid"] == ["escalated", "ESC-"]


def test_a_row_without_reference_or_category_is_scored_on_its_answer():
    from lorafit.data.sources import Row

    rows = [
        Row(
            "f.jsonl",
            3,
            {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "The answer."}]},
            "messages",
        ),
        Row(
            "f.jsonl",
            4,
            {"prompt": "p", "completion": "c", "reference": ["a", "b"], "category": "x"},
            "prompt_completion",
        ),
    ]
    first, second = scoring.tasks_from(rows)
    assert (first.references, first.category, first.where) == (["The answer."], scoring.UNCATEGORISED, "f.jsonl:3")
    assert (second.prompt, second.references, second.category) == ("p", ["a", "b"], "x")


def _general(model, tokenizer, tmp_path, recipe):
    path = write_jsonl(
        tmp_path / "general.jsonl",
        [
            {
                "messages": [{"role": "user", "content": f"What about {t}?"}, {"role": "assistant", "content": a}],
                "category": "everyday",
            }
            for t, a in [
                ("damaged", "It depends."),
                ("return", "Ask a friend."),
                ("tracking", "Look outside."),
                ("address", "Ten."),
            ]
        ],
    )
    return drift._general_data(recipe, path, tokenizer).eval


def test_kl_is_zero_for_a_no_op_adapter_and_positive_after_training(trained_run, tiny_model_dir, tmp_path):
    import torch
    from peft import LoraConfig, get_peft_model

    from lorafit import models, runs

    recipe, _ = runs.load_run(trained_run)
    trained, tokenizer = models.load_with_adapter(recipe, trained_run / runs.ADAPTER)
    general = _general(trained, tokenizer, tmp_path, recipe)
    moved = drift.drift(trained, general, 2)
    assert moved["kl"] > 1e-4 and math.isfinite(moved["kl"])
    assert moved["adapter_loss"] != pytest.approx(moved["base_loss"], abs=1e-6)

    torch.manual_seed(0)
    fresh = get_peft_model(models.load_model(recipe), LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))  # B = 0
    still = drift.drift(fresh, general, 2)
    assert still["kl"] == pytest.approx(0.0, abs=1e-9)
    assert still["adapter_loss"] == pytest.approx(still["base_loss"], abs=1e-6)
    assert still["base_loss"] == pytest.approx(moved["base_loss"], rel=1e-5)  # same base under both adapters


def test_eval_cli_reports_categories_failures_and_drift(trained_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    rows = chat_records(8, seed=5)
    for i, row in enumerate(rows):
        row["category"] = "even" if i % 2 == 0 else "odd"
        row["reference"] = row["messages"][-1]["content"].split(":")[0]  # "For order NNNN"
    held = write_jsonl(tmp_path / "held.jsonl", rows)
    general = write_jsonl(
        tmp_path / "general.jsonl",
        [
            {"messages": [{"role": "user", "content": f"Say {w}."}, {"role": "assistant", "content": f"{w}!"}]}
            for w in ("hi", "ok", "yes")
        ],
    )
    result = runner.invoke(
        app,
        [
            "eval",
            str(run),
            "--data",
            str(held),
            "--max-new-tokens",
            "12",
            "--general",
            str(general),
            "--show-failures",
            "--max-kl",
            "0",
        ],
        env={"COLUMNS": "200"},
    )
    assert result.exit_code == 0, result.output
    report = json.loads((run / "eval.json").read_text())
    assert (
        set(report["categories"]) == {"even", "odd"} and sum(c["examples"] for c in report["categories"].values()) == 8
    )
    hits = sum(round(c["adapter"] * c["examples"]) for c in report["categories"].values())
    assert hits == round(report["adapter"]["accuracy"] * 8) and len(report["failures"]) == 8 - hits
    assert "task accuracy per category" in result.output
    for failure in report["failures"]:
        assert failure["prompt"] in result.output.replace("\n", " ") or failure["where"] in result.output
    g = report["general"]
    assert g["prompts"] == 3 and g["data"] == str(general) and 0 <= g["same_answer"] <= 1
    assert g["kl"] > 0 and math.isfinite(g["adapter_loss"]) and math.isfinite(g["base_loss"])
    assert "warning" in g and "drifts off-task" in result.output  # --max-kl 0: any drift is named

    skipped = runner.invoke(app, ["eval", str(run), "--data", str(held), "--max-new-tokens", "4", "--general", "none"])
    assert skipped.exit_code == 0, skipped.output
    assert "general" not in json.loads((run / "eval.json").read_text())
    missing = runner.invoke(app, ["eval", str(run), "--general", str(tmp_path / "nope.jsonl")])
    assert missing.exit_code == 7 and "nope.jsonl" in missing.output


def test_default_general_set_is_off_task_and_well_formed():
    rows = [json.loads(line) for line in drift.GENERAL_SET.read_text().splitlines()]
    assert len(rows) == 120 and {r["category"] for r in rows} == {"everyday", "arithmetic", "writing", "instructions"}
    assert all([m["role"] for m in r["messages"]] == ["user", "assistant"] for r in rows)
    from lorafit.data import preserve

    prompts = {r["messages"][0]["content"].lower() for r in rows}
    training = {p[0]["content"].lower() for p in preserve.read_prompts(preserve.GENERAL_PROMPTS)}
    assert len(training) == 200 and not prompts & training  # the drift check never measures on preserve's prompts
