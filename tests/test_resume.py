"""The train options a preemptible job relies on: --no-resume starts fresh, --force resumes a changed recipe,
training.auto_batch_size answers an out-of-memory step with half the micro-batch."""

import json
import shutil
from pathlib import Path

import pytest
import yaml
from safetensors.torch import load_file
from typer.testing import CliRunner

from lorafit.cli import app

from conftest import chat_records, run_train, set_args, tiny_recipe_text, write_jsonl

runner = CliRunner()


@pytest.fixture()
def recipe(tmp_path, tiny_model_dir) -> Path:
    data_file = write_jsonl(tmp_path / "d.jsonl", chat_records(32))
    path = tmp_path / "tiny.yaml"
    path.write_text(tiny_recipe_text(tiny_model_dir, data_file, tmp_path / "run", training={"max_steps": 2}))
    return path


def flat(output: str) -> str:
    """Console output with rich's line wrapping undone."""
    return " ".join(output.split())


def test_no_resume_starts_fresh_in_a_new_directory(recipe, tmp_path):
    assert run_train(recipe).exit_code == 0
    before = (tmp_path / "run" / "adapter" / "adapter_model.safetensors").read_bytes()
    for n in (2, 3):
        result = runner.invoke(app, ["train", str(recipe), "--no-resume"])
        assert result.exit_code == 0, result.output
        assert f"starting fresh in {tmp_path / 'run'}-{n}" in flat(result.output)
        fresh = tmp_path / f"run-{n}"
        assert (fresh / "adapter" / "adapter_model.safetensors").is_file()
        assert yaml.safe_load((fresh / "recipe.yaml").read_text())["output"]["dir"] == str(fresh)  # resumable as is
    assert (tmp_path / "run" / "adapter" / "adapter_model.safetensors").read_bytes() == before  # never overwritten


def test_force_resumes_although_the_recipe_changed(recipe, tmp_path):
    run_dir = tmp_path / "run"
    assert run_train(recipe, "training.save_every=2").exit_code == 0
    shutil.rmtree(run_dir / "adapter")  # as if stopped right after checkpoint-2
    changed = ["adapter.dropout=0.1", "training.max_steps=4", "training.save_every=2"]
    refused = run_train(recipe, *changed)
    assert refused.exit_code == 2
    assert "adapter.dropout: 0.0 -> 0.1" in flat(refused.output) and "--force" in refused.output
    forced = runner.invoke(app, ["train", str(recipe), *set_args(*changed), "--force"])
    assert forced.exit_code == 0, forced.output
    assert "although the recipe changed (--force)" in flat(forced.output) and "resuming from" in forced.output
    assert json.loads((run_dir / "run.json").read_text())["train"]["steps"] == 4


def test_auto_batch_size_halves_the_micro_batch_and_keeps_the_global_batch(recipe, tmp_path, monkeypatch):
    import torch
    from transformers import Trainer

    straight = run_train(recipe, f"output.dir={tmp_path / 'straight'}", "training.max_steps=3")
    assert straight.exit_code == 0, straight.output
    original = Trainer.train
    attempts = []

    def train(self, *args, **kwargs):  # the GPU runs out of memory at micro-batch 4 only
        attempts.append(self.args.per_device_train_batch_size)
        if self.args.per_device_train_batch_size > 2:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return original(self, *args, **kwargs)

    monkeypatch.setattr(Trainer, "train", train)
    off = run_train(recipe, f"output.dir={tmp_path / 'off'}")
    assert off.exit_code == 4 and "halve training.batch_size" in off.output
    attempts.clear()
    result = run_train(recipe, "training.auto_batch_size=true", "training.max_steps=3")
    assert result.exit_code == 0, result.output
    assert attempts == [4, 2]
    assert "batch_size 4 -> 2, grad_accum 1 -> 2" in flat(result.output)
    record = json.loads((tmp_path / "run" / "run.json").read_text())
    assert record["auto_batch_size"] == [
        {"at_step": 0, "from": {"batch_size": 4, "grad_accum": 1}, "to": {"batch_size": 2, "grad_accum": 2}}
    ]
    resolved = yaml.safe_load((tmp_path / "run" / "recipe.yaml").read_text())["training"]
    assert (resolved["batch_size"], resolved["grad_accum"]) == (2, 2)
    # Same global batch, same examples per step: the same training up to float32 round-off.
    a = load_file(tmp_path / "run" / "adapter" / "adapter_model.safetensors")
    b = load_file(tmp_path / "straight" / "adapter" / "adapter_model.safetensors")
    assert max((a[k] - b[k]).abs().max().item() for k in a) < 1e-5
