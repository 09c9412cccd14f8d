"""The quickstart as a new user runs it: the adapter learns the task's rules on held-out questions and the
base does not, and its off-task drift is measured. Minutes on a CPU (the whole quickstart trains)."""

import json
import math
from pathlib import Path

import pytest
from typer.testing import CliRunner

from lorafit.cli import app

ROOT = Path(__file__).resolve().parents[1]
runner = CliRunner()


@pytest.mark.slow
def test_quickstart_learns_its_rules_and_reports_drift(tmp_path):
    run = tmp_path / "quickstart"
    trained = runner.invoke(app, ["train", str(ROOT / "recipes" / "quickstart.yaml"), "--set", f"output.dir={run}"])
    assert trained.exit_code == 0, trained.output
    record = json.loads((run / "run.json").read_text())
    assert record["status"] == "finished"
    evaluated = runner.invoke(app, ["eval", str(run)])
    assert evaluated.exit_code == 0, evaluated.output
    report = json.loads((run / "eval.json").read_text())
    assert report["generated"] == report["examples"] == 112
    assert report["base"]["accuracy"] < 0.10
    # Measured 0.598 (README, "What the quickstart learns"): rules without a number comparison are learned,
    # rules that compare two numbers are not yet. The bar sits below the measured figure, above one epoch's 0.30.
    assert report["adapter"]["accuracy"] >= 0.50, [(f["category"], f["answer"]) for f in report["failures"]]
    assert report["adapter"]["loss"] < 0.5 * report["base"]["loss"]
    assert len(report["failures"]) == round((1 - report["adapter"]["accuracy"]) * 112)
    general = report["general"]
    assert general["prompts"] == 120
    for key in ("kl", "base_loss", "adapter_loss", "same_answer"):
        assert math.isfinite(general[key]), key
    assert general["kl"] > 0 and 0 <= general["same_answer"] <= 1
