"""Per-epoch eval/save cadence resolved to steps, warmup in steps, and the small fields peers need (tf32,
eval_split: 0, null for "no limit"). Schema and arithmetic only, except one tiny packed run."""

import json
import re
from pathlib import Path
from types import SimpleNamespace

import pytest

from lorafit.core.errors import RecipeError
from lorafit.recipe import Recipe, load_recipe
from lorafit.recipe.training import steps_for, steps_per_epoch
from lorafit.train import config

from conftest import chat_records, run_train, tiny_recipe_text, write_jsonl


def _recipe(data=None, **training) -> Recipe:
    return Recipe.model_validate({"data": {"train": "x", **(data or {})}, "training": training})


def test_epoch_forms_are_kept_and_checked():
    assert _recipe(eval_every="0.25epoch", save_every="2 epochs").training.eval_every == "0.25epoch"
    assert _recipe(save_every="2 epochs").training.save_every == "2epoch"
    assert _recipe(eval_every=50).training.eval_every == 50
    with pytest.raises(ValueError, match="a number of steps or a share of an epoch such as `0.25epoch`"):
        _recipe(eval_every="often")
    with pytest.raises(ValueError, match="'0epoch' is never; use 0 for only at the end"):
        _recipe(eval_every="0epoch")


def test_steps_per_epoch_and_resolved_steps():
    assert steps_per_epoch(36, 4, 1) == 9
    assert steps_per_epoch(36, 4, 2) == 5  # a last partial accumulation counts, as in transformers
    assert steps_per_epoch(36, 4, 1, world_size=2) == 5
    assert steps_per_epoch(3, 8, 4) == 1
    assert steps_for("0.5epoch", 9) == 5  # 4.5 rounds up
    assert steps_for("0.25epoch", 300) == 75
    assert steps_for("1epoch", 9) == 9
    assert steps_for("0.01epoch", 9) == 1  # never below one step
    assert steps_for(40, 9) == 40


@pytest.mark.parametrize(
    ("packing", "rows", "line", "eval_steps", "save_steps"),
    [
        (
            False,
            1200,
            "training.eval_every 0.25epoch = every 75 steps, training.save_every 1epoch = every 300 steps "
            "(300 steps per epoch: 1,200 examples)",
            75,
            300,
        ),
        (
            True,
            130,
            "training.eval_every 0.25epoch = every 8 steps, training.save_every 1epoch = every 33 steps "
            "(33 steps per epoch: 130 packed sequences)",
            8,
            33,
        ),
    ],
)
def test_cadence_is_set_on_the_trainer_arguments(packing, rows, line, eval_steps, save_steps):
    recipe = _recipe({"packing": packing}, batch_size=4, eval_every="0.25epoch", save_every="1epoch")
    args = SimpleNamespace(eval_steps=1, save_steps=1)
    assert config.resolve_cadence(recipe, args, rows, world_size=1) == line
    assert (args.eval_steps, args.save_steps) == (eval_steps, save_steps)
    assert config.resolve_cadence(_recipe(eval_every=10), args, rows, 1) is None


def test_warmup_steps_or_ratio():
    t = _recipe(warmup_steps=10).training
    assert (t.warmup_steps, t.warmup_ratio) == (10, 0.0)  # the default ratio steps aside
    shared = config.shared(_recipe(warmup_steps=10), Path("/tmp/r"), "float32", "cpu", False, False)
    assert shared["warmup_steps"] == 10 and shared["tf32"] is None
    assert config.shared(_recipe(), Path("/tmp/r"), "float32", "cpu", False, False)["warmup_steps"] == 0.05
    assert config.shared(_recipe(tf32=True), Path("/tmp/r"), "float32", "cuda", False, False)["tf32"] is True
    with pytest.raises(ValueError, match=r"warmup_steps \(10\) and warmup_ratio \(0.1\) are both set; keep one"):
        _recipe(warmup_steps=10, warmup_ratio=0.1)


def test_null_and_zero_where_peers_mean_none():
    assert _recipe({"eval_split": 0}).data.eval_split is None
    assert _recipe(max_steps=None).training.max_steps == -1
    assert _recipe(max_grad_norm=None).training.max_grad_norm == 0.0
    with pytest.raises(ValueError, match="a lorafit run is always seeded, so it can be reproduced; give a number"):
        _recipe(seed=None)


def test_eval_every_without_held_out_data_is_an_error(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text("data:\n  train: d.jsonl\n  eval_split: 0\ntraining:\n  eval_every: 100\n")
    with pytest.raises(RecipeError) as info:
        load_recipe(path)
    assert str(info.value) == (
        f"{path}:5: (recipe): training.eval_every 100 evaluates on held-out data, and this recipe has none; "
        "set data.eval_split (e.g. 0.1) or data.eval, or eval_every: 0"
    )


def test_per_epoch_evaluations_of_a_packed_run(tmp_path, tiny_model_dir):
    data = write_jsonl(tmp_path / "train.jsonl", chat_records(48))
    recipe = tmp_path / "r.yaml"
    text = tiny_recipe_text(
        tiny_model_dir,
        data,
        tmp_path / "run",
        data={"packing": True},
        training={"max_steps": -1, "epochs": 1, "batch_size": 2, "max_length": 256, "eval_every": "0.5epoch"},
    )
    recipe.write_text(text)
    result = run_train(recipe)
    assert result.exit_code == 0, result.output
    said = re.search(
        r"every (\d+) steps \((\d+) steps per epoch: (\d+) packed sequences\)", " ".join(result.output.split())
    )
    assert said, result.output
    every, per_epoch, rows = map(int, said.groups())
    assert rows < 36  # 36 training examples packed into fewer sequences of up to 256 tokens
    assert per_epoch == steps_per_epoch(rows, 2, 1) and every == steps_for("0.5epoch", per_epoch)
    metrics = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    evaluated = sorted({m["step"] for m in metrics if "eval_loss" in m and m["step"] > 0})
    assert evaluated[0] == every
