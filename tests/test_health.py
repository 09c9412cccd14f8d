"""Training-time health: finite divergence (loss rise, collapse) stops a run with exit 5, a held-out loss worse
than the base's is flagged and refused by merge/export, and over-fitting is warned of."""

import json
import math
import random
import sqlite3

import pytest
from typer.testing import CliRunner

from lorafit.cli import app
from lorafit.train import health

from conftest import TOPICS, chat_records, run_train, tiny_recipe_text, write_jsonl

runner = CliRunner()
LN_V = math.log(400)


def _rows(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def _registry_row(run_dir):
    import os

    conn = sqlite3.connect(os.environ["LORAFIT_REGISTRY"])
    conn.row_factory = sqlite3.Row
    return dict(
        conn.execute(
            "SELECT status, exit_code, message FROM runs WHERE run_dir = ?", (str(run_dir.resolve()),)
        ).fetchone()
    )


# ---------------------------------------------------------------- the rules, on synthetic curves


def test_watchdog_fires_on_a_rising_loss_and_names_the_figures():
    rising = [(1, 2.7), (2, 2.6), (3, 2.8)] + [(s, 2.7 * 1.5 ** (s - 3)) for s in range(4, 20)]
    found = health.first_divergence(rising, factor=3.0)
    # start 2.7 (mean of 2.7, 2.6, 2.8); the mean of the last 3 first exceeds 8.1 at step 7: (6.075 + 9.1125 + 13.669) / 3
    assert found.kind == "loss_rise" and found.step == 7
    assert found.details == {"smoothed_loss": pytest.approx(9.6188, abs=1e-4), "start_loss": 2.7, "factor": 3.0}
    assert "step 7" in found.message and "9.6188" in found.message and "3 x 2.7000" in found.message


def test_watchdog_ignores_a_healthy_curve_a_single_spike_and_can_be_off():
    healthy = [(s, 3.0 * 0.9**s + 0.2) for s in range(1, 200)]
    assert health.first_divergence(healthy, factor=3.0) is None
    spike = [(s, 3.0) for s in range(1, 20)]
    spike[10] = (11, 20.0)  # one bad batch: the 3-log mean is (3 + 3 + 20) / 3 = 8.67 < 9
    assert health.first_divergence(spike, factor=3.0) is None
    rising = [(s, 2.0 * s) for s in range(1, 30)]
    assert health.first_divergence(rising, factor=None) is None
    assert (
        health.first_divergence(rising, factor=3.0).step == 8
    )  # (12 + 14 + 16) / 3 = 14 > 3 x 4; at step 7 it is 12, not over


def test_collapse_to_uniform_with_zero_gradient_fires_and_a_random_start_does_not():
    collapsed = [(1, 2.7, 1.3), (2, 10.8, 51.0)] + [(s, 10.8, 0.0) for s in range(3, 10)]
    found = health.first_divergence(collapsed, factor=None, vocab_size=49152)
    assert found.kind == "collapse" and found.step == 3 and found.details["until_step"] == 5
    assert found.details["uniform_loss"] == pytest.approx(math.log(49152), abs=1e-4)  # 10.8027
    assert "ln(vocab size 49152)" in found.message
    # a random model starts at ln(V) too, but its gradients are not zero
    random_start = [(s, LN_V - 0.001 * s, 0.3) for s in range(1, 30)]
    assert health.first_divergence(random_start, factor=3.0, vocab_size=400) is None
    # zero gradient far from ln(V) (nothing trainable on those steps) is not a collapse either
    assert health.first_divergence([(s, 2.0, 0.0) for s in range(1, 30)], factor=None, vocab_size=400) is None
    # a collapse interrupted by one step with a gradient starts counting again
    broken = [(1, LN_V, 0.0), (2, LN_V, 0.0), (3, LN_V, 0.5), (4, LN_V, 0.0), (5, LN_V, 0.0), (6, LN_V, 0.0)]
    assert health.first_divergence(broken, factor=None, vocab_size=400).step == 4


def test_overfit_fires_on_a_widening_gap_and_not_on_a_healthy_run():
    steps = range(10, 110, 10)
    train = [3.0 - 0.25 * i for i in range(10)]  # falls throughout
    overfitting = [3.1, 2.8, 2.6, 2.5, 2.55, 2.6, 2.7, 2.8, 2.9, 3.0]  # lowest at step 40, rising from step 50
    healthy = [3.1, 2.8, 2.6, 2.5, 2.45, 2.42, 2.40, 2.39, 2.385, 2.38]
    noisy = [3.1, 2.8, 2.85, 2.6, 2.65, 2.5, 2.55, 2.4, 2.45, 2.3]  # rises once at a time: noise, not a trend
    assert health.overfit_from(list(zip(steps, train, overfitting)), patience=3) == 50
    assert health.overfit_from(list(zip(steps, train, overfitting)), patience=6) == 50
    assert health.overfit_from(list(zip(steps, train, overfitting)), patience=7) is None  # only 6 rises
    assert health.overfit_from(list(zip(steps, train, healthy)), patience=3) is None
    assert health.overfit_from(list(zip(steps, train, noisy)), patience=2) is None
    assert health.overfit_from(list(zip(steps, train, overfitting)), patience=0) is None
    # the held-out loss rising while the train loss rises too is divergence, not over-fitting
    assert health.overfit_from(list(zip(steps, train[::-1], overfitting)), patience=3) is None


def test_eval_gap_pairs_each_evaluation_with_the_train_losses_since_the_last_and_replays():
    rows = [{"step": 0, "eval_loss": 3.2}]  # the 'before' evaluation: no train losses yet, no point
    losses = {1: 3.0, 2: 2.8, 3: 2.6, 4: 2.4, 5: 2.2, 6: 2.0}
    held_out = {2: 2.9, 4: 3.0, 6: 3.1}
    for step in range(1, 7):
        rows.append({"step": step, "loss": losses[step]})
        if step in held_out:
            rows.append({"step": step, "eval_loss": held_out[step]})
    rows.append({"step": 6, "eval_loss": 3.1})  # the final evaluation at an eval_every step: no new point
    gap = health.EvalGap(patience=2)
    gap.replay(rows)
    assert gap.points == [(2, pytest.approx(2.9), 2.9), (4, pytest.approx(2.5), 3.0), (6, pytest.approx(2.1), 3.1)]
    assert gap.overfit_from() == 4
    warning = gap.warning(4)
    assert "from step 4" in warning and "held-out 2.9000 at step 2 -> 3.1000 at step 6" in warning
    assert "train 2.9000 -> 2.1000" in warning and "stop near step 2" in warning


def test_divergence_factor_is_above_one_or_off():
    from pydantic import ValidationError

    from lorafit.recipe import TrainingSection

    assert TrainingSection().divergence_factor == 3.0 and TrainingSection().overfit_patience == 3
    assert TrainingSection(divergence_factor=0).divergence_factor is None
    with pytest.raises(ValidationError, match="above 1"):
        TrainingSection(divergence_factor=0.9)


# ---------------------------------------------------------------- through the CLI, on the tiny model


def _recipe(tmp_path, tiny_model_dir, name, data=None, **training):
    data_file = tmp_path / "d.jsonl"
    if not data_file.exists():
        write_jsonl(data_file, chat_records(64))
    path = tmp_path / f"{name}.yaml"
    sections = {"data": data} if data else {}
    path.write_text(
        tiny_recipe_text(
            tiny_model_dir,
            data_file,
            tmp_path / name,
            training={"max_steps": 20, "logging_steps": 1, **training},
            **sections,
        )
    )
    return path


def test_huge_learning_rate_collapses_exits_5_without_adapter(tmp_path, tiny_model_dir):
    """lr 1000 saturates the tiny model at step 2: from step 3 its loss is ln(400) = 5.9915 and its gradient 0."""
    result = run_train(_recipe(tmp_path, tiny_model_dir, "run", lr=1000.0, save_every=1, keep_checkpoints=10))
    assert result.exit_code == 5, result.output
    assert "collapsed at step 3" in result.output and "ln(vocab size 400)" in result.output
    assert "lower training.lr (now 1000)" in result.output
    run_dir = tmp_path / "run"
    record = json.loads((run_dir / "run.json").read_text())
    assert record["status"] == "diverged" and record["failed_step"] == 3
    assert record["divergence"]["kind"] == "collapse" and record["divergence"]["until_step"] == 5
    assert record["divergence"]["loss"] == pytest.approx(LN_V, abs=1e-3)
    logged = {r["step"]: r for r in _rows(run_dir) if "loss" in r}
    assert max(logged) == 5 and all(logged[s]["grad_norm"] == 0.0 for s in (3, 4, 5))
    assert not (run_dir / "adapter").exists()
    saved = sorted(int(p.name.split("-")[1]) for p in (run_dir / "checkpoints").glob("checkpoint-*"))
    assert saved == [1, 2]  # 3, 4 and 5 were written before the collapse was certain, then removed
    row = _registry_row(run_dir)
    assert row["status"] == "diverged" and row["exit_code"] == 5 and "collapsed at step 3" in row["message"]


def test_rising_loss_stops_the_run_with_exit_5(tmp_path, tiny_model_dir, monkeypatch):
    """The watchdog's wiring: the logged loss is scaled up by the step (as a too-large learning rate would make
    it climb; the tiny random model itself starts at ln(V), where an adapter cannot push its loss much higher)."""
    from transformers import Trainer

    compute_loss = Trainer.compute_loss

    def climbing(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        loss = compute_loss(self, model, inputs, return_outputs, num_items_in_batch)
        return loss * 1.5**self.state.global_step

    monkeypatch.setattr(Trainer, "compute_loss", climbing)
    result = run_train(_recipe(tmp_path, tiny_model_dir, "run", lr=1e-4))
    assert result.exit_code == 5, result.output
    run_dir = tmp_path / "run"
    record = json.loads((run_dir / "run.json").read_text())
    assert record["status"] == "diverged" and record["divergence"]["kind"] == "loss_rise"
    losses = [r["loss"] for r in _rows(run_dir) if "loss" in r]
    step = record["failed_step"]
    # ln(400) x 1.5^(step-1): start (6 + 9 + 13.5) / 3 = 9.5; last-3 means 21.4 at step 5, 32.1 > 28.5 at step 6
    assert step == len(losses) == 6
    details = record["divergence"]
    assert details["start_loss"] == pytest.approx(sum(losses[:3]) / 3, abs=1e-3)
    assert details["smoothed_loss"] == pytest.approx(sum(losses[-3:]) / 3, abs=1e-3)
    assert details["smoothed_loss"] > 3 * details["start_loss"] > sum(losses[-4:-1]) / 3
    assert f"diverged at step {step}" in result.output and "divergence_factor" in result.output
    assert not (run_dir / "adapter").exists()
    off = run_train(_recipe(tmp_path, tiny_model_dir, "off", lr=1e-4, max_steps=12), "training.divergence_factor=null")
    assert off.exit_code == 0, off.output


def _disjoint_task(tmp_path):
    """Trains on answers of digits only, holds out answers of words only: learning one unlearns the other."""
    rng = random.Random(0)
    digits = [
        {
            "messages": [
                {"role": "user", "content": "Numbers?"},
                {"role": "assistant", "content": " ".join(str(rng.randint(1000, 9999)) for _ in range(12))},
            ]
        }
        for _ in range(48)
    ]
    words = " ".join(a for _, a in TOPICS)
    for d in "0123456789":
        words = words.replace(d, "")
    held = [
        {"messages": [{"role": "user", "content": "Policy?"}, {"role": "assistant", "content": words}]}
        for _ in range(8)
    ]
    train = write_jsonl(tmp_path / "digits.jsonl", digits)
    held_out = write_jsonl(tmp_path / "words.jsonl", held)
    return {"train": str(train), "eval": str(held_out), "eval_split": None}


def test_worse_than_base_finishes_flagged_and_merge_export_refuse_without_force(tmp_path, tiny_model_dir):
    recipe = _recipe(
        tmp_path, tiny_model_dir, "run", data=_disjoint_task(tmp_path), max_steps=12, lr=0.05, eval_every=2
    )
    result = run_train(recipe)
    assert result.exit_code == 0, result.output
    run_dir = tmp_path / "run"
    record = json.loads((run_dir / "run.json").read_text())
    before, after = record["eval"]["loss_before"], record["eval"]["loss_after"]
    assert after > before + 0.01  # 6.0074 -> 6.0251
    assert record["status"] == "worse_than_base" and (run_dir / "adapter" / "adapter_model.safetensors").is_file()
    assert f"held-out loss after training {after} is above the base's {before}" in result.output
    assert "worse than base" in result.output and "done" not in result.output
    row = _registry_row(run_dir)
    assert row["status"] == "worse_than_base" and row["exit_code"] == 0 and f"{before} -> {after}" in row["message"]

    # the same run over-fits by the rule: held-out up, train down, evaluation after evaluation
    evals = [r for r in _rows(run_dir) if "train_loss_window" in r]
    assert [r["step"] for r in evals] == [2, 4, 6, 8, 10, 12]
    start = record["overfit_from_step"]
    points = [(r["step"], r["train_loss_window"], r["eval_loss"]) for r in evals]
    assert start == health.overfit_from(points, patience=3) == 6
    assert f"over-fitting from step {start}" in result.output

    merged = runner.invoke(app, ["merge", str(run_dir)])
    assert (
        merged.exit_code == 5 and "lorafit merge refuses this adapter" in merged.output and "--force" in merged.output
    )
    exported = runner.invoke(app, ["export", str(run_dir), "--format", "peft"])
    assert exported.exit_code == 5 and "lorafit export refuses this adapter" in exported.output
    assert not (run_dir / "merged").exists() and not (run_dir / "export").exists()
    forced = runner.invoke(app, ["export", str(run_dir), "--format", "peft", "--force"])
    assert forced.exit_code == 0, forced.output
    assert (run_dir / "export" / "peft" / "adapter_model.safetensors").is_file()
    forced = runner.invoke(app, ["merge", str(run_dir), "--force"])
    assert forced.exit_code == 0, forced.output
    assert (run_dir / "merged" / "config.json").is_file()


def test_train_and_held_out_losses_are_logged_together(tmp_path, tiny_model_dir):
    result = run_train(_recipe(tmp_path, tiny_model_dir, "run", max_steps=12, lr=5e-3, eval_every=4))
    assert result.exit_code == 0, result.output
    run_dir = tmp_path / "run"
    rows = _rows(run_dir)
    evals = [(i, r) for i, r in enumerate(rows) if "train_loss_window" in r]
    assert [r["step"] for _, r in evals] == [4, 8, 12]
    previous = 0
    for i, row in evals:  # the mean of the train losses logged since the evaluation before
        window = [r["loss"] for r in rows[previous:i] if "loss" in r]
        assert len(window) == 4 and row["train_loss_window"] == pytest.approx(sum(window) / 4, abs=1e-4)
        assert math.isfinite(row["eval_loss"])
        previous = i
    assert (
        evals[-1][1]["eval_loss"] < evals[0][1]["eval_loss"]
        and evals[-1][1]["train_loss_window"] < evals[0][1]["train_loss_window"]
    )
    record = json.loads((run_dir / "run.json").read_text())
    assert record["status"] == "finished" and "overfit_from_step" not in record
    first, last = record["train"]["first_logged_loss"], record["train"]["last_logged_loss"]
    assert f"train loss {first:.4f} -> {last:.4f}" in " ".join(result.output.split())
    assert "step 8: held-out loss" in result.output and "train loss" in result.output
    assert (run_dir / "loss.png").is_file()
