"""What the phases of a run pass on: the run's state, and each phase's product."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from lorafit.core.device import DeviceInfo
    from lorafit.recipe import Recipe
    from lorafit.train.signals import Signals


@dataclass
class Result:
    record: dict  # the final run.json
    model: Any  # the trained PEFT model, still in memory (tests compare it with the saved adapter)
    run_dir: Path | None = None  # where the run went (--no-resume may choose a new directory)


@dataclass
class Run:
    """What every phase of one attempt reads: the recipe as it stands (auto_batch_size may have halved it), where
    the run goes and what it resumes from, the device, and how to report."""

    recipe: Recipe
    run_dir: Path
    resume_from: Path | None
    console: Any
    quiet: bool
    force: bool
    signals: Signals
    halvings: tuple[dict, ...] = ()  # training.auto_batch_size's notes, in order
    info: DeviceInfo | None = None
    dtype_name: str = "float32"
    started: float = field(default_factory=time.time)
    t0: float = field(default_factory=time.perf_counter)

    def say(self, text: str, **kw) -> None:
        if not self.quiet:
            self.console.print(text, highlight=False, **kw)

    def warn(self, text: str, **kw) -> None:
        self.console.print(f"[yellow]warning[/] {text}", highlight=False, **kw)


@dataclass
class Inputs:
    """What the model and the trainer are built from."""

    model_path: str
    tokenizer: Any
    prepared: Any  # data.Prepared
    previous: dict  # run.json of the run this one resumes ({} when fresh)


@dataclass
class Memory:
    """The memory plan's decisions for this run."""

    checkpointing: bool
    planned: dict  # the data's figures the plan was asked with (seq_len, trained_fraction)
    prefaulted: int = 0
    prefaulting: Any = None  # the helper thread faulting in the first step's memory


@dataclass
class Built:
    """The model and the trainer around it, with the callbacks the later phases read."""

    model: Any
    trainer: Any
    args: Any
    callbacks: dict[str, Any]
    summary: dict
    compiled: int


@dataclass
class Before:
    """The held-out loss of the untrained model, now or (before_at_end) after training."""

    loss: float | None
    at_end: bool
