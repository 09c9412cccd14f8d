"""Training-time health rules as pure functions of logged losses, so tests can feed them synthetic curves.

Three ways a run goes wrong while every number stays finite (the NaN guard in train/callbacks.py sees none of them):
the loss climbs far above where it started, the model collapses to predicting every token equally likely
(loss ln(vocab size), gradient 0: nothing can train it back), and the held-out loss rises while the train
loss falls (over-fitting). train/callbacks.py's DivergenceGuard feeds these rules the values Trainer logs; no math here
touches the model.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field
from typing import Iterable, Sequence

REFERENCE_LOGS = 3  # the first logged losses whose mean is "where the loss started" (step 1's is the base's own)
SMOOTHING_LOGS = 3  # a short moving mean: one noisy batch alone cannot stop a run
COLLAPSE_LOGS = 3  # consecutive logs at ln(V) with zero gradient before calling it a collapse
COLLAPSE_TOLERANCE = 0.01  # relative distance from ln(V) that still reads as uniform prediction
ZERO_GRAD = 1e-12


@dataclass(frozen=True)
class Divergence:
    """Why a run was stopped: `kind` is loss_rise or collapse (nan comes from DivergenceGuard's own check)."""

    kind: str
    step: int
    message: str
    details: dict


@dataclass
class LossWatch:
    """Watches the logged train loss for a finite divergence. `factor` None or 0 disables the rise rule;
    `vocab_size` None disables the collapse rule."""

    factor: float | None
    vocab_size: int | None
    first: list[float] = field(default_factory=list)
    recent: deque = field(default_factory=lambda: deque(maxlen=SMOOTHING_LOGS))
    flat_steps: list[int] = field(default_factory=list)

    def observe(self, step: int, loss: float, grad_norm: float | None = None) -> Divergence | None:
        if not math.isfinite(loss):
            return None  # the NaN guard's case
        if len(self.first) < REFERENCE_LOGS:
            self.first.append(loss)
        self.recent.append(loss)
        return self._collapse(step, loss, grad_norm) or self._rise(step)

    def _rise(self, step: int) -> Divergence | None:
        if not self.factor or len(self.first) < REFERENCE_LOGS or len(self.recent) < SMOOTHING_LOGS:
            return None
        start = sum(self.first) / len(self.first)
        smoothed = sum(self.recent) / len(self.recent)
        if smoothed <= self.factor * start:
            return None
        return Divergence(
            "loss_rise",
            step,
            f"the loss diverged at step {step}: {smoothed:.4f} (mean of the last {len(self.recent)} logged) "
            f"is over training.divergence_factor {self.factor:g} x {start:.4f} (mean of the first {len(self.first)})",
            {"smoothed_loss": round(smoothed, 4), "start_loss": round(start, 4), "factor": self.factor},
        )

    def _collapse(self, step: int, loss: float, grad_norm: float | None) -> Divergence | None:
        if not self.vocab_size or grad_norm is None:
            return None
        uniform = math.log(self.vocab_size)
        if abs(loss - uniform) <= COLLAPSE_TOLERANCE * uniform and abs(grad_norm) <= ZERO_GRAD:
            self.flat_steps.append(step)
        else:
            self.flat_steps = []
        if len(self.flat_steps) < COLLAPSE_LOGS:
            return None
        return Divergence(
            "collapse",
            self.flat_steps[0],
            f"the model collapsed at step {self.flat_steps[0]}: loss {loss:.4f} = ln(vocab size {self.vocab_size}), "
            f"i.e. every token equally likely, with gradient norm 0 for {len(self.flat_steps)} logged steps (to step {step})",
            {
                "loss": round(loss, 4),
                "uniform_loss": round(uniform, 4),
                "vocab_size": self.vocab_size,
                "until_step": step,
            },
        )


def first_divergence(curve: Iterable[tuple], factor: float | None, vocab_size: int | None = None) -> Divergence | None:
    """The first divergence in a logged curve of (step, loss) or (step, loss, grad_norm), as training would stop."""
    watch = LossWatch(factor, vocab_size)
    for step, loss, *grad in curve:
        found = watch.observe(step, loss, grad[0] if grad else None)
        if found is not None:
            return found
    return None


def overfit_from(points: Sequence[tuple[int, float, float]], patience: int) -> int | None:
    """points: (step, train loss since the previous evaluation, held-out loss), one per evaluation, in order.

    The step of the first evaluation of the first `patience` consecutive evaluations at which the held-out
    loss rose and the train loss fell, both against the evaluation before: the gap widening, not noise in
    one of them. None when it never happens, or `patience` is 0."""
    if patience <= 0:
        return None
    streak = 0
    for i in range(1, len(points)):
        (_, train_before, eval_before), (_, train, held_out) = points[i - 1], points[i]
        streak = streak + 1 if held_out > eval_before and train < train_before else 0
        if streak == patience:
            return points[i - patience + 1][0]
    return None


@dataclass
class EvalGap:
    """Pairs each held-out loss with the mean train loss logged since the evaluation before it, so the two are
    compared over the same stretch of training (one step's loss is one batch: too noisy to compare)."""

    patience: int
    window: list[float] = field(default_factory=list)
    points: list[tuple[int, float, float]] = field(default_factory=list)

    def train_loss(self, loss: float) -> None:
        self.window.append(loss)

    def evaluation(self, step: int, held_out: float) -> float | None:
        """The train loss to log beside this held-out loss; None when no step trained since the last evaluation
        (the one before training, or the final one at an eval_every step), which then is no new point."""
        if not self.window or step <= 0:
            return None
        train = sum(self.window) / len(self.window)
        self.window = []
        self.points.append((step, train, held_out))
        return train

    def replay(self, rows: Iterable[dict]) -> None:
        """Rebuild from metrics.jsonl's rows (a resumed run goes on where its checkpoint left off)."""
        for row in rows:
            if isinstance(row.get("loss"), (int, float)):
                self.train_loss(row["loss"])
            if isinstance(row.get("eval_loss"), (int, float)) and isinstance(row.get("step"), int):
                self.evaluation(row["step"], row["eval_loss"])

    def overfit_from(self) -> int | None:
        return overfit_from(self.points, self.patience)

    def warning(self, start: int) -> str:
        """What a user reads: where it began, the curves' figures, and what to change."""
        i = next(i for i, p in enumerate(self.points) if p[0] == start)
        best_step, best_train, best_eval = self.points[i - 1]
        step, train, held_out = self.points[-1]
        return (
            f"over-fitting from step {start}: held-out loss rose for {len(self.points) - i} evaluations in a row while "
            f"the train loss fell (held-out {best_eval:.4f} at step {best_step} -> {held_out:.4f} at step {step}; "
            f"train {best_train:.4f} -> {train:.4f}); stop near step {best_step} (training.max_steps), train fewer "
            "epochs, or add data"
        )
