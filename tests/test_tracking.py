"""Experiment tracking: TensorBoard by default and offline, tracker names validated, online-only trackers fail early."""

import importlib.util

import pytest

from lorafit.core.errors import MissingError, RecipeError
from lorafit.recipe import load_recipe
from lorafit.train import tracking


def recipe_with(tmp_path, output: str):
    path = tmp_path / "r.yaml"
    path.write_text(f"data:\n  train: d.jsonl\noutput:\n{output}")
    (tmp_path / "d.jsonl").write_text("")
    return load_recipe(path)


def test_report_to_values_are_validated(tmp_path):
    assert recipe_with(tmp_path, "  tags: [a]\n").output.report_to == ["tensorboard"]  # the offline default
    assert recipe_with(tmp_path, "  report_to: mlflow\n").output.report_to == ["mlflow"]  # one name is a list of one
    assert recipe_with(tmp_path, "  report_to: []\n").output.report_to == ["none"]
    with pytest.raises(RecipeError, match=r"r.yaml:5: output.report_to.0: .*did you mean 'tensorboard'"):
        recipe_with(tmp_path, "  report_to:\n    - tensorbord\n")
    with pytest.raises(RecipeError, match="cannot be combined"):
        recipe_with(tmp_path, "  report_to: [none, tensorboard]\n")


def test_missing_tracker_package_is_exit_7(tmp_path, monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "mlflow" else real(name, *a))
    with pytest.raises(MissingError, match="mlflow is not installed") as info:
        tracking.check(recipe_with(tmp_path, "  report_to: [tensorboard, mlflow]\n"))
    assert info.value.exit_code == 7 and "pip install mlflow" in str(info.value)


def test_online_only_tracker_without_network_fails_in_one_line(tmp_path, monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: object() if name in ("wandb", "mlflow") else real(name, *a)
    )
    monkeypatch.delenv("WANDB_MODE", raising=False)
    recipe = recipe_with(tmp_path, "  report_to: [wandb]\n")
    with pytest.raises(RecipeError) as info:
        tracking.check(recipe, reachable=lambda url: False)
    assert info.value.exit_code == 2
    assert info.value.message == "output.report_to: wandb logs to https://api.wandb.ai, which this machine cannot reach"
    assert "WANDB_MODE=offline" in info.value.hint
    tracking.check(recipe, reachable=lambda url: True)  # online, with a network: fine
    monkeypatch.setenv("WANDB_MODE", "offline")
    tracking.check(recipe, reachable=lambda url: False)  # offline mode needs no network
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow.internal:5000")
    with pytest.raises(RecipeError, match="mlflow logs to http://mlflow.internal:5000"):
        tracking.check(recipe_with(tmp_path, "  report_to: [mlflow]\n"), reachable=lambda url: False)
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    tracking.check(recipe_with(tmp_path, "  report_to: [mlflow]\n"), reachable=lambda url: False)  # a local store


def test_environment_and_trainer_arguments(tmp_path, monkeypatch):
    import json
    import os

    monkeypatch.delenv("TENSORBOARD_LOGGING_DIR", raising=False)
    monkeypatch.setenv("WANDB_TAGS", "theirs")
    recipe = recipe_with(tmp_path, "  tags: [baseline, v2]\n")
    assert tracking.sft_kwargs(recipe, tmp_path / "run-7") == {
        "report_to": ["tensorboard"],
        "run_name": "run-7",
        "project": "lorafit",
    }
    assert tracking.sft_kwargs(recipe_with(tmp_path, "  report_to: [none]\n"), tmp_path)["report_to"] == "none"
    restore = tracking.set_environment(recipe, tmp_path / "run-7")
    assert os.environ["TENSORBOARD_LOGGING_DIR"] == str(tmp_path / "run-7" / "tensorboard")
    assert os.environ["WANDB_TAGS"] == "theirs,baseline,v2"
    assert json.loads(os.environ["MLFLOW_TAGS"])["lorafit.tags"] == "baseline,v2"
    restore()
    assert "TENSORBOARD_LOGGING_DIR" not in os.environ and os.environ["WANDB_TAGS"] == "theirs"


def test_mlflow_tags_that_are_not_json_are_one_line(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TAGS", "team=nlp")
    with pytest.raises(RecipeError, match="MLFLOW_TAGS is set but is not JSON"):
        tracking.environment(recipe_with(tmp_path, "  tags: [baseline]\n"), tmp_path / "run")


def test_tensorboard_event_files_in_the_run_dir(trained_run):
    """Needs the training hooks (tracking.set_environment, sft_kwargs, recipe_callback)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    logdir = trained_run / tracking.TENSORBOARD_DIR
    events = list(logdir.glob("events.out.tfevents.*"))
    assert events, f"no event files in {logdir}"
    acc = EventAccumulator(str(logdir))
    acc.Reload()
    scalars = acc.Tags()["scalars"]
    assert "train/loss" in scalars and "eval/loss" in scalars and "train/learning_rate" in scalars
    losses = acc.Scalars("train/loss")
    assert [e.step for e in losses] == list(range(1, 25))  # every logged step of the 24
    assert all(0 < e.value < 20 for e in losses)
    assert losses[-1].value < losses[0].value
    texts = acc.Tags()["tensors"]  # add_text is stored as a tensor summary
    assert "lorafit/recipe/text_summary" in texts and "args/text_summary" in texts
    recipe_text = acc.Tensors("lorafit/recipe/text_summary")[0].tensor_proto.string_val[0].decode()
    assert "max_steps: 24" in recipe_text
