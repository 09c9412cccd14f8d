"""Preference objectives (DPO, KTO, ORPO, SimPO): the recipe's rules, preference data with file:line errors,
and each objective training the tiny model through the CLI."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import yaml
from safetensors.torch import load_file
from typer.testing import CliRunner

from lorafit.cli import app

from conftest import TOPICS, tiny_recipe_text, write_jsonl

runner = CliRunner()
WRONG = [
    "We never replace anything, sorry.",
    "Returns are not possible at all.",
    "Tracking is not our problem.",
    "Addresses can never be changed.",
]


def pair_records(n: int, seed: int = 0, chat: bool = True) -> list[dict]:
    """Warehouse questions with the policy answer chosen and a wrong one rejected."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        (topic, answer), wrong = TOPICS[i % len(TOPICS)], WRONG[i % len(WRONG)]
        question = f"Question about order {rng.randint(1000, 9999)}: what about {topic}?"
        if chat:
            out.append(
                {
                    "prompt": [{"role": "user", "content": question}],
                    "chosen": [{"role": "assistant", "content": answer}],
                    "rejected": [{"role": "assistant", "content": wrong}],
                }
            )
        else:
            out.append({"prompt": question, "chosen": " " + answer, "rejected": " " + wrong})
    return out


def pref_recipe(tmp_path: Path, model_dir: Path, data: Path, objective: str, **sections) -> Path:
    training = {"objective": objective, "max_steps": 6, "lr": 5e-3, "batch_size": 4, "group_by_length": False}
    training.update(sections.pop("training", {}))
    text = tiny_recipe_text(model_dir, data, tmp_path / f"run-{objective}", training=training, **sections)
    path = tmp_path / f"{objective}.yaml"
    path.write_text(text)
    return path


def losses(run_dir: Path) -> list[float]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r["loss"] for r in rows if "loss" in r]


@pytest.mark.parametrize("objective", ["dpo", "kto", "orpo", "simpo"])
def test_each_objective_trains_the_adapter_through_the_cli(tmp_path, tiny_model_dir, objective):
    data = write_jsonl(tmp_path / "pairs.jsonl", pair_records(32))
    recipe = pref_recipe(tmp_path, tiny_model_dir, data, objective)
    result = runner.invoke(app, ["train", str(recipe)])
    assert result.exit_code == 0, result.output
    run_dir = tmp_path / f"run-{objective}"
    record = json.loads((run_dir / "run.json").read_text())
    assert record["status"] in ("finished", "worse_than_base"), record["status"]
    seen = losses(run_dir)
    assert len(seen) >= 3 and all(abs(x) < 1e6 for x in seen)
    assert seen[-1] != seen[0]
    resolved = yaml.safe_load((run_dir / "recipe.yaml").read_text())
    assert resolved["training"]["objective"] == objective
    assert resolved["preference"]["beta"] == 0.1
    saved = load_file(str(run_dir / "adapter" / "adapter_model.safetensors"))
    assert saved and all("lora_" in k for k in saved)
    assert not (run_dir / "adapter" / "ref").exists(), "TRL's reference adapter is not part of the saved adapter"
