"""lorafit plan against measured peaks: the estimate must be within 15% of what a run really used."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from lorafit import plan
from lorafit.recipe import load_recipe

ROOT = Path(__file__).resolve().parents[1]


def _measure(recipe_path: Path, out: Path, overrides: list[str]) -> tuple[float, float]:
    """Train in a fresh process: peak RSS is a whole-process figure, so other tests must not share it."""
    args = ["train", str(recipe_path), "--set", "training.max_steps=3", "--set", "data.eval=null", "--set", f"output.dir={out}"]
    for item in overrides:
        args += ["--set", item]
    result = subprocess.run([sys.executable, "-m", "lorafit.cli", *args], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    record = json.loads((out / "run.json").read_text())
    ran_eagerly = record["train"]["compiled_layers"] == 0  # training.compile: on without a C++ compiler runs eagerly
    recipe = load_recipe(recipe_path, overrides + ["data.eval=null"] + (["training.compile=off"] if ran_eagerly else []))
    tokens = record["data"]["tokens"]
    predicted = plan.for_recipe(recipe, plan.model_config(recipe), "cpu", seq_len=tokens["max"],
                                trained_fraction=record["data"]["most_trained_tokens"] / min(tokens["max"], recipe.training.max_length)).total
    return predicted / 2**20, record["train"]["peak_memory_mb"]


def test_plan_matches_a_tiny_run(tiny_recipe, tmp_path):
    predicted, measured = _measure(tiny_recipe, tmp_path / "run", [])
    assert predicted == pytest.approx(measured, rel=0.25)  # the tiny model is mostly process overhead


@pytest.mark.slow
@pytest.mark.parametrize("batch", [2, 4, 8])
def test_plan_matches_the_embedded_model(tmp_path, batch):
    # length grouping puts the longest batch first, so the first steps reach the run's peak
    predicted, measured = _measure(ROOT / "recipes" / "quickstart.yaml", tmp_path / "run", [f"training.batch_size={batch}"])
    assert predicted == pytest.approx(measured, rel=0.15)


@pytest.mark.slow
def test_plan_matches_the_embedded_model_uncompiled(tmp_path):
    predicted, measured = _measure(ROOT / "recipes" / "quickstart.yaml", tmp_path / "run", ["training.batch_size=4", "training.compile=off"])
    assert predicted == pytest.approx(measured, rel=0.15)
