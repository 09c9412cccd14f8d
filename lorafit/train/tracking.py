"""Experiment trackers through transformers' own integrations: a check before training, and the settings they read.

The check runs before any weights load, so a tracker that cannot work (not installed, or online-only with
no network) costs one clear line instead of a crash minutes into the run.
"""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from lorafit.core import hub
from lorafit.core.errors import MissingError, RecipeError

if TYPE_CHECKING:
    from lorafit.recipe import Recipe

TENSORBOARD_DIR = "tensorboard"  # RUN_DIR/tensorboard: `tensorboard --logdir runs/` shows every run by name
PACKAGES = {"tensorboard": "tensorboard", "mlflow": "mlflow", "wandb": "wandb", "trackio": "trackio"}


def trackers(recipe: Recipe) -> list[str]:
    return [t for t in recipe.output.report_to if t != "none"]


def _reachable(url: str, timeout: float = 3.0) -> bool:
    return hub.behind_proxy() or hub.connects(url, timeout)  # behind a proxy: let the tracker's client find out


def online_endpoint(tracker: str) -> tuple[str, str] | None:
    """(server URL, how to work offline) when this tracker, as configured by its environment, needs a network.

    TensorBoard and trackio (no Space id is passed) write local files; mlflow does unless pointed at a server."""
    env = os.environ
    if tracker == "wandb" and env.get("WANDB_MODE", "online").lower() not in ("offline", "disabled", "dryrun"):
        return env.get(
            "WANDB_BASE_URL", "https://api.wandb.ai"
        ), "set WANDB_MODE=offline (and `wandb sync` later), or use output.report_to: [tensorboard]"
    if tracker == "mlflow" and env.get("MLFLOW_TRACKING_URI", "").startswith(("http://", "https://")):
        return env[
            "MLFLOW_TRACKING_URI"
        ], "unset MLFLOW_TRACKING_URI to log to a local mlruns store, or use output.report_to: [tensorboard]"
    return None


def check(recipe: Recipe, reachable: Callable[[str], bool] = _reachable) -> None:
    """Fail before training when a tracker is not installed, or needs a server this machine cannot reach."""
    for tracker in trackers(recipe):
        if importlib.util.find_spec(PACKAGES[tracker]) is None:
            raise MissingError(
                f"output.report_to: {tracker} is not installed",
                f"pip install {PACKAGES[tracker]}, or remove it from output.report_to",
            )
        endpoint = online_endpoint(tracker)
        if endpoint and not reachable(endpoint[0]):
            raise RecipeError(
                f"output.report_to: {tracker} logs to {endpoint[0]}, which this machine cannot reach", endpoint[1]
            )


def sft_kwargs(recipe: Recipe, run_dir: Path) -> dict:
    """The SFTConfig arguments trackers read: which ones, and the run's name in their UIs."""
    return {"report_to": trackers(recipe) or "none", "run_name": Path(run_dir).name, "project": "lorafit"}


def environment(recipe: Recipe, run_dir: Path) -> dict[str, str]:
    """Settings the integrations read from the environment: TensorBoard's directory, the run's tags.

    A value the user already exported wins (tags are added to theirs)."""
    env = {"TENSORBOARD_LOGGING_DIR": os.environ.get("TENSORBOARD_LOGGING_DIR") or str(Path(run_dir) / TENSORBOARD_DIR)}
    tags = list(recipe.output.tags)
    if tags:
        try:
            mlflow_tags = json.loads(os.environ.get("MLFLOW_TAGS") or "{}")
        except json.JSONDecodeError:
            raise RecipeError(
                "MLFLOW_TAGS is set but is not JSON, so output.tags cannot be added to it",
                'export it as JSON, e.g. MLFLOW_TAGS=\'{"team": "nlp"}\', or unset it',
            ) from None
        env["MLFLOW_TAGS"] = json.dumps(
            {**mlflow_tags, **{f"lorafit.tag.{t}": "1" for t in tags}, "lorafit.tags": ",".join(tags)}
        )
        env["WANDB_TAGS"] = ",".join([t for t in os.environ.get("WANDB_TAGS", "").split(",") if t] + tags)
    return env


def set_environment(recipe: Recipe, run_dir: Path) -> Callable[[], None]:
    """Export `environment()` for the trainer's callbacks; returns the function that restores the previous values."""
    saved = {k: os.environ.get(k) for k in environment(recipe, run_dir)}
    os.environ.update(environment(recipe, run_dir))

    def restore() -> None:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value

    return restore


def recipe_callback(recipe: Recipe, run_dir: Path):
    """A TrainerCallback that logs the resolved recipe and the tags next to the metrics, in each tracker."""
    from transformers import TrainerCallback

    class RecipeLogger(TrainerCallback):
        def on_train_begin(self, args, state, control, **kw):
            if not state.is_world_process_zero:
                return
            text, tags = recipe.to_yaml(), list(recipe.output.tags)
            active = trackers(recipe)
            if "tensorboard" in active:
                from torch.utils.tensorboard import SummaryWriter

                with SummaryWriter(
                    log_dir=os.environ.get("TENSORBOARD_LOGGING_DIR") or str(Path(run_dir) / TENSORBOARD_DIR)
                ) as writer:
                    writer.add_text("lorafit/recipe", "```yaml\n" + text + "```", state.global_step)
                    writer.add_text("lorafit/tags", ", ".join(tags) or "(none)", state.global_step)
            if "mlflow" in active:
                import mlflow

                if mlflow.active_run() is not None:
                    mlflow.log_text(text, "recipe.yaml")
            if "wandb" in active:
                import wandb

                if wandb.run is not None:
                    wandb.run.config.update({"lorafit_recipe": recipe.model_dump(mode="json")}, allow_val_change=True)

    return RecipeLogger()
