"""The quickstart as a new user runs it: the adapter learns the task's rules on held-out questions and the
base does not, and its off-task drift is measured; then the rest of the product on the real model: merge, export
gguf, generate. Every test that reads the trained quickstart lives here: `make test` distributes tests by file
(pytest-xdist's loadfile), so one worker trains it once. CI trains its first 100 of 300 steps (conftest.quickstart_run);
the whole run's figures (96.4% held-out task accuracy): README, "What the quickstart learns"."""

import json
import math
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from lorafit.artifacts.drift import GENERAL_SET
from lorafit.cli import app

from conftest import QUICKSTART_HELD_OUT

runner = CliRunner()
# Measured after 100 steps: 62.5% of all 112 held-out questions (base 3.6%); every rule's decision is still being
# learned then (README). The bar leaves room for the 32-question sample.
ACCURACY = 0.45
GENERAL_PROMPTS = 24  # every fifth of lorafit's 120 general prompts: the drift report, at a fifth of its cost


@pytest.mark.slow
def test_quickstart_learns_its_rules_and_reports_drift(quickstart_run, tmp_path):
    record = json.loads((quickstart_run / "run.json").read_text())
    assert record["status"] == "finished"
    assert record["model"]["name"] == "embedded:smollm2-135m-instruct"
    assert record["adapter"]["matched_modules"]["q_proj"] == 30
    assert (quickstart_run / "adapter" / "adapter_model.safetensors").stat().st_size > 1_000_000

    general = tmp_path / "general.jsonl"
    general.write_text("".join(Path(GENERAL_SET).read_text().splitlines(keepends=True)[::5]))
    evaluated = runner.invoke(app, ["eval", str(quickstart_run), "--general", str(general)])
    assert evaluated.exit_code == 0, evaluated.output
    report = json.loads((quickstart_run / "eval.json").read_text())
    assert report["generated"] == report["examples"] == QUICKSTART_HELD_OUT
    assert report["base"]["accuracy"] < 0.10
    assert report["adapter"]["accuracy"] >= ACCURACY, [(f["category"], f["answer"]) for f in report["failures"]]
    assert report["adapter"]["loss"] < 0.1 * report["base"]["loss"]
    assert len(report["failures"]) == round((1 - report["adapter"]["accuracy"]) * QUICKSTART_HELD_OUT)
    assert len(report["categories"]) >= 10 and sum(c["examples"] for c in report["categories"].values()) == 32
    drift = report["general"]
    assert drift["prompts"] == GENERAL_PROMPTS
    for key in ("kl", "base_loss", "adapter_loss", "same_answer"):
        assert math.isfinite(drift[key]), key
    assert drift["kl"] > 0 and 0 <= drift["same_answer"] <= 1


@pytest.mark.slow
def test_merge_export_generate(tmp_path, quickstart_run):
    run = tmp_path / "qs"
    shutil.copytree(quickstart_run, run)  # merge and export write into the run directory

    merge = runner.invoke(app, ["merge", str(run)])
    assert merge.exit_code == 0, merge.output
    merged = json.loads((run / "run.json").read_text())["merge"]
    assert merged["max_logit_diff_vs_adapter"] < 1e-3

    gguf = runner.invoke(app, ["export", str(run), "--format", "gguf", "--gguf-type", "q8_0"])
    assert gguf.exit_code == 0, gguf.output
    record = json.loads((run / "run.json").read_text())["exports"]["gguf_q8_0"]
    assert record["greedy_agreement"] >= 0.75 and record["bytes"] > 100_000_000

    answer = runner.invoke(
        app,
        [
            "generate",
            str(run),
            "My frying pan from order 71234 arrived broken this morning. What do I do?",
            "--max-new-tokens",
            "80",
        ],
    )
    assert answer.exit_code == 0, answer.output
    assert "DMG-71234" in answer.output  # the damage rule: a claim code for a parcel delivered this morning
