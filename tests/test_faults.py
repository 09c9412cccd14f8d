"""Interrupted, resumed and diverged runs: exit codes, checkpoints, and resume equivalence."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import chat_records, run_train, tiny_recipe_text, write_jsonl


def losses(run_dir: Path) -> dict[int, float]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in rows if "loss" in r}


def _recipe(tmp_path, tiny_model_dir, name: str, **training) -> Path:
    data_file = tmp_path / "d.jsonl"
    if not data_file.exists():
        write_jsonl(data_file, chat_records(64))
    path = tmp_path / f"{name}.yaml"
    path.write_text(
        tiny_recipe_text(
            tiny_model_dir, data_file, tmp_path / name, training={"max_steps": 30, "logging_steps": 1, **training}
        )
    )
    return path


def test_sigterm_checkpoints_exits_6_and_resume_matches_uninterrupted(tmp_path, tiny_model_dir):
    straight = _recipe(tmp_path, tiny_model_dir, "straight")
    assert run_train(straight).exit_code == 0
    expected = losses(tmp_path / "straight")

    resumed = _recipe(tmp_path, tiny_model_dir, "resumed")
    proc = subprocess.Popen(
        [sys.executable, "-m", "lorafit.cli", "train", str(resumed)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    metrics = tmp_path / "resumed" / "metrics.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and not (
        metrics.exists()
        and any('"loss"' in line and json.loads(line)["step"] >= 3 for line in metrics.read_text().splitlines())
    ):
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 6, err
    assert "run the same command again to resume" in err
    record = json.loads((tmp_path / "resumed" / "run.json").read_text())
    assert record["status"] == "interrupted"
    stopped = record["interrupted_at_step"]
    assert 3 <= stopped < 30
    checkpoint = Path(record["checkpoint"])
    assert checkpoint.name == f"checkpoint-{stopped}" and (checkpoint / "lorafit-complete.json").is_file()
    assert not (tmp_path / "resumed" / "adapter").exists()

    # as if the run had gone on past its checkpoint and been killed (-9) mid-line: those steps are trained again
    with open(metrics, "a") as f:
        f.write(json.dumps({"step": stopped + 1, "loss": 99.0}) + "\n" + '{"step": ')
    again = run_train(resumed)
    assert again.exit_code == 0, again.output
    assert "resuming from" in again.output
    logged = [json.loads(line) for line in metrics.read_text().splitlines()]
    assert [row["step"] for row in logged if "loss" in row] == sorted(expected)  # each step once, in order
    got = losses(tmp_path / "resumed")
    assert sorted(got) == sorted(expected)
    for step in expected:
        assert abs(got[step] - expected[step]) < 1e-4, (step, got[step], expected[step])


def test_partial_checkpoint_is_ignored(tmp_path, tiny_model_dir):
    recipe = _recipe(tmp_path, tiny_model_dir, "run", max_steps=4, save_every=2)
    assert run_train(recipe, "training.max_steps=2").exit_code == 0
    from lorafit import runs

    run_dir = tmp_path / "run"
    assert runs.latest_checkpoint(run_dir).name == "checkpoint-2"
    fake = run_dir / "checkpoints" / "checkpoint-9"  # killed mid-save: no completion marker
    fake.mkdir()
    (fake / "adapter_model.safetensors").write_bytes(b"torn")
    assert runs.latest_checkpoint(run_dir).name == "checkpoint-2"


def test_resume_refuses_a_changed_recipe(tmp_path, tiny_model_dir):
    recipe = _recipe(tmp_path, tiny_model_dir, "run", save_every=2)
    run_dir = tmp_path / "run"
    proc = subprocess.Popen(
        [sys.executable, "-m", "lorafit.cli", "train", str(recipe)], stderr=subprocess.PIPE, text=True
    )
    metrics = run_dir / "metrics.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and not (metrics.exists() and '"loss"' in metrics.read_text()):
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    proc.communicate(timeout=120)
    assert proc.returncode == 6
    changed = run_train(recipe, "adapter.r=4")
    assert changed.exit_code == 2
    assert "adapter.r: 8 -> 4" in changed.output


def test_nan_loss_exits_5_without_checkpoint_after_it(tmp_path, tiny_model_dir):
    recipe = _recipe(tmp_path, tiny_model_dir, "run", lr=1.0e30, save_every=1, max_grad_norm=0.0)
    result = run_train(recipe)
    assert result.exit_code == 5, result.output
    assert "NaN/inf at step" in result.output and "lower training.lr" in result.output
    record = json.loads((tmp_path / "run" / "run.json").read_text())
    bad = record["failed_step"]
    saved = [int(p.name.split("-")[1]) for p in (tmp_path / "run" / "checkpoints").glob("checkpoint-*")]
    assert all(step < bad for step in saved)
    assert not (tmp_path / "run" / "adapter").exists()


def test_seeded_runs_give_identical_adapter_bytes(tmp_path, tiny_model_dir):
    for name in ("a", "b"):
        assert run_train(_recipe(tmp_path, tiny_model_dir, name, max_steps=4)).exit_code == 0
    a = (tmp_path / "a" / "adapter" / "adapter_model.safetensors").read_bytes()
    b = (tmp_path / "b" / "adapter" / "adapter_model.safetensors").read_bytes()
    assert a == b


def test_out_of_memory_message(monkeypatch, tmp_path, tiny_model_dir):
    import torch
    from transformers import Trainer

    def oom(self, *a, **k):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(Trainer, "train", oom)
    result = run_train(_recipe(tmp_path, tiny_model_dir, "run"))
    assert result.exit_code == 4
    assert "out of memory at micro-batch 4 x 128 tokens" in result.output
    assert "halve training.batch_size" in result.output


def test_signal_during_setup_stops_before_training_with_exit_6(tmp_path, tiny_model_dir, monkeypatch):
    """SIGUSR1 from `lorafit launch` (or Slurm) while the model loads: it is recorded (every rank agrees on it
    before the first step), the run stops before training, says nothing was trained, marks run.json
    interrupted, and gives the signal handlers back."""
    from lorafit import models

    load = models.load_model

    def load_then_signalled(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGUSR1)
        return load(*args, **kwargs)

    monkeypatch.setattr(models, "load_model", load_then_signalled)
    before = signal.getsignal(signal.SIGUSR1)
    recipe = _recipe(tmp_path, tiny_model_dir, "run")
    result = run_train(recipe)
    assert result.exit_code == 6, result.output
    assert "SIGUSR1 before training started; nothing was trained" in result.output
    assert json.loads((tmp_path / "run" / "run.json").read_text())["status"] == "interrupted"
    assert not (tmp_path / "run" / "adapter").exists() and not list((tmp_path / "run").glob("checkpoints/checkpoint-*"))
    assert (
        not (tmp_path / "run" / "metrics.jsonl").exists()
        or '"loss"' not in (tmp_path / "run" / "metrics.jsonl").read_text()
    )
    assert signal.getsignal(signal.SIGUSR1) == before


def test_sigterm_under_lorafit_launch_is_left_to_torchrun(monkeypatch):
    """Under `lorafit launch`, SIGTERM only comes from torchrun tearing down a job another rank failed: it keeps
    its default, so the failure is not turned into a resumable exit 6 that Slurm would requeue forever.
    Preemption arrives as SIGUSR1, taken from the start; Ctrl-C and kill stop a model load at once."""
    from types import SimpleNamespace

    from lorafit.cli import launching as launch
    from lorafit.train.signals import Signals

    for launched in (False, True):
        if launched:
            monkeypatch.setenv(launch.EXIT_FILE_ENV, "/nonexistent")
        term, intr = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
        with Signals() as signals:
            assert signal.getsignal(signal.SIGUSR1) == signals._handle
            assert (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)) == (
                term,
                intr,
            )  # setup: defaults
            signals.training(SimpleNamespace(signal=None))
            assert signal.getsignal(signal.SIGINT) == signals._handle
            assert (signal.getsignal(signal.SIGTERM) == signals._handle) is not launched
        assert (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)) == (term, intr)


def test_resume_refuses_changed_training_settings(tmp_path, tiny_model_dir):
    """A changed seed would move examples between the held-out split and training; a changed lr or max_length
    is another run. Speed and bookkeeping settings may change."""
    from lorafit.recipe import load_recipe
    from lorafit.train.rundir import resume_point

    recipe = _recipe(tmp_path, tiny_model_dir, "run", max_steps=4, save_every=2)
    assert run_train(recipe, "training.max_steps=2").exit_code == 0
    run_dir = tmp_path / "run"
    from lorafit.core.errors import RecipeError

    for change in ("training.seed=7", "training.lr=0.5", "training.max_length=64"):
        with pytest.raises(RecipeError, match=change.split("=")[0]):
            resume_point(run_dir, load_recipe(recipe, [change]))
    same_run = load_recipe(
        recipe,
        [
            "training.max_steps=2",
            "training.logging_steps=5",
            "training.compile=off",
            "training.batch_size=2",
            "training.grad_accum=2",
        ],
    )
    assert resume_point(run_dir, same_run).name == "checkpoint-2"
