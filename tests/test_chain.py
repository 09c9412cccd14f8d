"""The whole product on the real embedded model, through the CLI: the quickstart's run (evaluated in
test_quickstart), then merge, export gguf, generate."""

import json
import shutil

import pytest
from typer.testing import CliRunner

from lorafit.cli import app

runner = CliRunner()


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
