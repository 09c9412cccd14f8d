"""The preference quickstart as a new user runs it, for a few steps: recipes/quickstart-dpo.yaml on the embedded
model, continuing a short SFT quickstart run, with the SFT policy as the reference. The learning figures of the
whole run: README, "Preference training"."""

import hashlib
import json
import math
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from lorafit.cli import app

from conftest import run_train

ROOT = Path(__file__).resolve().parents[1]
runner = CliRunner()


HELD_OUT = 8  # of each held-out file: a forward of the embedded model costs seconds at CI's one thread


def _head(path: Path, tmp_path: Path) -> Path:
    out = tmp_path / path.name
    out.write_text("".join(path.read_text().splitlines(keepends=True)[:HELD_OUT]))
    return out


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.slow
def test_dpo_quickstart_continues_a_short_sft_run(tmp_path):
    data = ROOT / "recipes" / "data"
    sft_held_out, dpo_held_out = (
        _head(data / "warehouse_eval.jsonl", tmp_path),
        _head(data / "warehouse_dpo_eval.jsonl", tmp_path),
    )
    sft = tmp_path / "sft"
    trained = run_train(
        ROOT / "recipes" / "quickstart.yaml",
        f"output.dir={sft}",
        "training.max_steps=8",
        "training.compile=off",
        f"data.eval={sft_held_out}",
    )
    assert trained.exit_code == 0, trained.output
    parent = sft / "adapter" / "adapter_model.safetensors"
    before = _sha(parent)

    dpo = tmp_path / "dpo"
    trained = run_train(
        ROOT / "recipes" / "quickstart-dpo.yaml",
        f"output.dir={dpo}",
        f"adapter.init_from={sft}",
        "training.max_steps=3",
        f"data.eval={dpo_held_out}",
    )
    assert trained.exit_code == 0, trained.output
    record = json.loads((dpo / "run.json").read_text())
    assert record["status"] in ("finished", "worse_than_base"), record["status"]
    assert record["lineage"]["parent"] == str(sft) and record["lineage"]["parent_adapter_sha256"] == before
    assert _sha(parent) == before, "training the DPO run must not write the parent's adapter"
    rows = [json.loads(line) for line in (dpo / "metrics.jsonl").read_text().splitlines()]
    first = next(r for r in rows if "loss" in r)
    # the policy starts as the SFT adapter and the reference is that same policy: no reward on either side, so the
    # DPO term is -log sigmoid(0), and the recipe's RPO term (rpo_alpha x the chosen side's NLL) comes on top
    assert first["rewards/chosen"] == pytest.approx(0, abs=1e-4) and first["rewards/margins"] == pytest.approx(
        0, abs=1e-4
    )
    rpo_alpha = yaml.safe_load((dpo / "recipe.yaml").read_text())["preference"]["rpo_alpha"]
    assert rpo_alpha > 0 and first["loss"] > math.log(2) + 1e-3

    evaluated = runner.invoke(app, ["eval", str(dpo), "--limit", "4", "--max-new-tokens", "64", "--general", "none"])
    assert evaluated.exit_code == 0, evaluated.output
    report = json.loads((dpo / "eval.json").read_text())
    assert report["examples"] == HELD_OUT and report["rewards_against"] == "reference"
    # an escalation appended to the reply is less likely than no escalation under the SFT policy, which has never
    # escalated: the reference prefers the rejected side of most upset customers' pairs
    assert report["reference"]["logp_accuracy"] <= 0.6
    assert report["generation"]["examples"] == 4
    first = report["parent_task"]  # the SFT run's held-out loss, under its adapter and under the DPO one
    assert first["run"] == str(sft) and first["examples"] == HELD_OUT
    assert math.isfinite(first["parent_loss"]) and math.isfinite(first["adapter_loss"])
