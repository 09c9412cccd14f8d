"""The Trainer callbacks of a run, one concern each: throughput, metrics and progress, the divergence guard,
stopping on a signal, and marking checkpoints complete.

Imports transformers: the training pipeline imports this module when it builds the trainer, never earlier.
Each class can be attached to any Trainer on its own (tests do)."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from transformers import TrainerCallback

from lorafit import runs
from lorafit.core import dist
from lorafit.train import health


@dataclass
class TokenCounter:
    """Counts the non-padding tokens of every training batch that reaches the model (not eval batches, nor the
    no-grad reference forwards of a preference objective, which score the same tokens again)."""

    tokens: int = 0

    def attach(self, model) -> None:
        model.register_forward_pre_hook(self._hook, with_kwargs=True)

    def _hook(self, module, args, kwargs):
        if module.training and torch.is_grad_enabled():
            mask = kwargs.get("attention_mask")
            ids = kwargs.get("input_ids", args[0] if args else None)
            self.tokens += int(mask.sum()) if mask is not None else int(ids.numel())


def _is_number(value) -> bool:
    return isinstance(value, (int, float))


class Throughput(TrainerCallback):
    """Tokens trained on and tokens/s after the first step (which pays one-off warm-up costs), summed over all
    ranks: the job's throughput."""

    def __init__(self, counter: TokenCounter):
        self.counter = counter
        self.first_step_at: float | None = None
        self.first_step_wall: float | None = None
        self.tokens_at_first_step = 0
        self.at_end: tuple[int, float] | None = None

    def on_step_end(self, args, state, control, **kw):
        if self.first_step_at is None:
            self.first_step_at, self.first_step_wall = time.perf_counter(), time.time()
            self.tokens_at_first_step = self.counter.tokens

    def totals(self) -> tuple[int, float]:
        """(tokens, tokens/s). A collective: every rank calls it at the same point."""
        started = self.first_step_at is not None
        since_first = self.counter.tokens - self.tokens_at_first_step if started else 0
        tokens, since_first = dist.all_sum([self.counter.tokens, since_first])
        elapsed = time.perf_counter() - self.first_step_at if started else 0.0
        return int(tokens), (since_first / elapsed if elapsed > 0 else 0.0)

    def on_train_end(self, args, state, control, **kw):
        self.at_end = self.totals()  # before the final held-out evaluation, which is not training throughput


class Metrics(TrainerCallback):
    """metrics.jsonl, the progress bar or lines, and the over-fitting warning (held-out loss rising while the
    training loss falls). Trainer logs on every rank at the same steps, so the collectives here are safe."""

    def __init__(
        self, run_dir: Path, throughput, console, quiet: bool, overfit_patience: int | None, record: Callable[..., dict]
    ):
        self.run_dir, self.throughput, self.console, self.quiet, self.record = (
            run_dir,
            throughput,
            console,
            quiet,
            record,
        )
        self.gap = health.EvalGap(overfit_patience)
        logged = runs.read_metrics(run_dir)  # a resumed run: what it logged up to its checkpoint
        self.gap.replay(logged)
        self.overfit_from_step = self.gap.overfit_from()
        self.first_loss: float | None = next((row["loss"] for row in logged if _is_number(row.get("loss"))), None)
        self.last_loss = float("nan")
        self.start = time.perf_counter()
        self.progress = self.task = None

    def on_train_begin(self, args, state, control, **kw):
        if self.console.is_terminal and not self.quiet:
            from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

            self.progress = Progress(
                TextColumn("[bold]train"),
                BarColumn(),
                TextColumn("{task.completed}/{task.total}"),
                TextColumn("{task.fields[info]}"),
                TimeRemainingColumn(),
                console=self.console,
            )
            self.progress.start()
            self.task = self.progress.add_task("train", total=state.max_steps, info="")

    def on_step_end(self, args, state, control, **kw):
        if self.progress is not None:
            self.progress.update(self.task, completed=state.global_step)

    def on_log(self, args, state, control, logs=None, **kw):
        logs = dict(logs or {})
        tokens, rate = self.throughput.totals()
        row = {"step": state.global_step, "tokens": tokens, "elapsed_s": round(time.perf_counter() - self.start, 3)}
        row.update({k: v for k, v in logs.items() if _is_number(v)})
        train_window = None
        if _is_number(logs.get("loss")):
            self.gap.train_loss(logs["loss"])
            self.first_loss = logs["loss"] if self.first_loss is None else self.first_loss
        if _is_number(logs.get("eval_loss")):
            train_window = self.gap.evaluation(state.global_step, logs["eval_loss"])
            if train_window is not None:
                row["train_loss_window"] = round(train_window, 4)  # the train side of this evaluation's gap
        if dist.is_main():
            runs.append_jsonl(self.run_dir / runs.METRICS, row)
        self._report(state, logs, rate, train_window)

    def _report(self, state, logs: dict, rate: float, train_window: float | None) -> None:
        if "loss" in logs:
            self.last_loss = logs["loss"]
            info = f"loss {logs['loss']:.4f}  {rate:.0f} tok/s"
            if self.progress is not None:
                self.progress.update(self.task, info=info)
            elif not self.quiet:
                self.console.print(f"step {state.global_step}/{state.max_steps}  {info}", highlight=False)
        if "eval_loss" in logs and not self.quiet:
            since = f", train loss {train_window:.4f} (since the evaluation before)" if train_window is not None else ""
            self.console.print(
                f"step {state.global_step}: held-out loss {logs['eval_loss']:.4f}{since}", highlight=False
            )
        start = self.gap.overfit_from() if train_window is not None else None
        if start is not None and self.overfit_from_step is None:
            self.overfit_from_step = start
            self.console.print(f"[yellow]warning[/] {self.gap.warning(start)}", highlight=False, soft_wrap=True)
            self.record(overfit_from_step=start)

    def on_train_end(self, args, state, control, **kw):
        if self.progress is not None:
            self.progress.stop()


class DivergenceGuard(TrainerCallback):
    """Stops the run, without a checkpoint, when the loss or gradient norm turns NaN/inf, the loss rises far
    above its start, or the model collapses. Every rank sees the same logged figures and stops together."""

    def __init__(self, divergence_factor: float | None, vocab_size: int | None, run_dir: Path):
        self.watch = health.LossWatch(divergence_factor, vocab_size)
        for row in runs.read_metrics(run_dir):  # a resumed run: its history up to the checkpoint
            if _is_number(row.get("loss")) and isinstance(row.get("step"), int):
                self.watch.observe(row["step"], row["loss"], row.get("grad_norm"))
        self.divergence: health.Divergence | None = None
        self.diverged_at: int | None = None

    def on_log(self, args, state, control, logs=None, **kw):
        logs = logs or {}
        # fp16's loss scaler reports an inf gradient norm on the steps it skips (an overflow, routine): not a divergence
        for key in ("loss", "eval_loss") if args.fp16 else ("loss", "grad_norm", "eval_loss"):
            value = logs.get(key)
            if _is_number(value) and not math.isfinite(value):
                self._stop(control, state.global_step)
        if _is_number(logs.get("loss")) and self.diverged_at is None:
            found = self.watch.observe(state.global_step, logs["loss"], logs.get("grad_norm"))
            if found is not None:
                self.divergence = found
                self._stop(control, found.step)

    def _stop(self, control, step: int) -> None:
        self.diverged_at = step
        control.should_training_stop = True
        control.should_save = False  # never checkpoint a diverged model


class SignalStop(TrainerCallback):
    """A signal received during training (see signals.Signals): finish the step, write a resumable checkpoint,
    stop. Under DDP all ranks stop after the same step, whichever of them got the signal."""

    def __init__(self):
        self.signal: int | None = None

    def on_step_end(self, args, state, control, **kw):
        if dist.is_distributed():
            self.signal = dist.all_max(self.signal or 0) or None
        if self.signal is not None:
            control.should_save = True
            control.should_training_stop = True


class CheckpointCompletion(TrainerCallback):
    """Marks each checkpoint complete once every rank has written its share (rng_state_<rank>.pth), then
    rotates old ones and redraws loss.png. No rank goes on (or exits) before the marker is there."""

    def __init__(self, run_dir: Path, keep: int, throughput, on_saved: Callable[[], None]):
        self.run_dir, self.keep, self.throughput, self.on_saved = run_dir, keep, throughput, on_saved

    def on_save(self, args, state, control, **kw):
        tokens = self.throughput.totals()[0]
        dist.barrier()
        folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        if dist.is_main() and folder.is_dir():
            runs.atomic_write_json(folder / runs.COMPLETE, {"step": state.global_step, "tokens": tokens})
            self.on_saved()
            runs.rotate_checkpoints(Path(args.output_dir), self.keep)
        dist.barrier()
