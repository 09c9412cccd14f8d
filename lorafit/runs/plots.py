"""Loss curves as PNG files: RUN_DIR/loss.png for one run, and overlays of several runs.

A picture answers "is it learning, is it overfitting, did the schedule do what I meant" faster than
metrics.jsonl. matplotlib's object API with the Agg canvas: no display, no global backend switch.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass, field
from pathlib import Path

from lorafit import runs

LOSS_PNG = "loss.png"


@dataclass
class Curves:
    """One run's logged series, each a list of (step, tokens, value); a re-logged step keeps its last value."""

    name: str
    train: list[tuple[int, int, float]] = field(default_factory=list)
    eval: list[tuple[int, int, float]] = field(default_factory=list)
    lr: list[tuple[int, int, float]] = field(default_factory=list)
    grad_norm: list[tuple[int, int, float]] = field(default_factory=list)


def read_curves(run_dir: Path, name: str | None = None) -> Curves:
    series: dict[str, dict[int, tuple[int, int, float]]] = {
        "loss": {},
        "eval_loss": {},
        "learning_rate": {},
        "grad_norm": {},
    }
    path = Path(run_dir) / runs.METRICS
    lines = path.read_text(encoding="utf-8").splitlines() if path.is_file() else []
    for line in lines:
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line being appended right now
        for key, points in series.items():
            value = row.get(key)
            if isinstance(value, (int, float)) and isinstance(row.get("step"), int):
                points[row["step"]] = (row["step"], int(row.get("tokens") or 0), float(value))
    ordered = {k: [v[s] for s in sorted(v)] for k, v in series.items()}
    return Curves(
        name or Path(run_dir).name,
        ordered["loss"],
        ordered["eval_loss"],
        ordered["learning_rate"],
        ordered["grad_norm"],
    )


def _smooth(values: list[float], weight: float = 0.9) -> list[float]:
    out, last = [], values[0]
    for v in values:
        last = weight * last + (1 - weight) * v
        out.append(last)
    return out


def _figure(curves: list[Curves], title: str, overfit_from_step: int | None = None):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(12, 8), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    (by_step, by_tokens), (lr_ax, gn_ax) = fig.subplots(2, 2)
    colors = [f"C{i % 10}" for i in range(len(curves))]
    for c, color in zip(curves, colors):
        for ax, x in ((by_step, 0), (by_tokens, 1)):
            if c.train:
                xs, ys = [p[x] for p in c.train], [p[2] for p in c.train]
                if len(ys) >= 50:  # long runs: faint raw curve under a smoothed one
                    ax.plot(xs, ys, color=color, alpha=0.25, linewidth=0.8)
                    ys = _smooth(ys)
                ax.plot(xs, ys, color=color, linewidth=1.6, label=f"{c.name} train")
            if c.eval:
                ax.plot(
                    [p[x] for p in c.eval],
                    [p[2] for p in c.eval],
                    color=color,
                    linestyle="--",
                    marker="o",
                    markersize=4,
                    linewidth=1.4,
                    label=f"{c.name} held-out",
                )
        if c.lr:
            lr_ax.plot([p[0] for p in c.lr], [p[2] for p in c.lr], color=color, label=c.name)
        if c.grad_norm:
            gn_ax.plot(
                [p[0] for p in c.grad_norm], [p[2] for p in c.grad_norm], color=color, linewidth=1.0, label=c.name
            )
    if overfit_from_step is not None:  # the step the held-out loss began rising while the train loss fell
        by_step.axvline(
            overfit_from_step,
            color="C3",
            linestyle=":",
            linewidth=1.2,
            label=f"over-fitting from step {overfit_from_step}",
        )
    by_step.set(title="loss by optimizer step", xlabel="step", ylabel="loss")
    by_tokens.set(title="loss by tokens trained on", xlabel="non-padding tokens", ylabel="loss")
    lr_ax.set(title="learning rate", xlabel="step", ylabel="learning rate")
    gn_ax.set(title="gradient norm (before clipping)", xlabel="step", ylabel="norm")
    lr_ax.ticklabel_format(axis="y", style="sci", scilimits=(-3, 3))
    lr_ax.set_ylim(bottom=0)  # warmup and decay read as fractions of the peak
    for ax in (by_step, by_tokens, lr_ax, gn_ax):
        ax.grid(True, alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize="small")
    fig.suptitle(title)
    return fig


def _save_atomically(fig, out: Path) -> Path:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    runs.atomic_write_bytes(Path(out), buffer.getvalue())
    return Path(out)


def _title(run_dir: Path, c: Curves) -> str:
    record = runs.read_run_json(run_dir)
    parts = [c.name]
    if record.get("model", {}).get("name"):
        parts.append(str(record["model"]["name"]).rsplit("/", 1)[-1])
    if c.train:
        parts.append(f"train loss {c.train[0][2]:.3f} -> {c.train[-1][2]:.3f}")
    if c.eval:
        parts.append(f"held-out {c.eval[0][2]:.3f} -> {c.eval[-1][2]:.3f}")
    return "  |  ".join(parts)


def write_loss_png(run_dir: Path) -> Path | None:
    """RUN_DIR/loss.png from metrics.jsonl (None while nothing is logged yet); safe to call at every checkpoint."""
    run_dir = Path(run_dir)
    curves = read_curves(run_dir)
    if not (curves.train or curves.eval):
        return None
    overfit = runs.read_run_json(run_dir).get("overfit_from_step")
    return _save_atomically(_figure([curves], _title(run_dir, curves), overfit), run_dir / LOSS_PNG)


def overlay(run_dirs: list[Path], out_png: Path, names: list[str] | None = None) -> Path:
    """Several runs' curves in one PNG, one color per run."""
    from lorafit.core.errors import MissingError

    dirs = [Path(d) for d in run_dirs]
    labels = names or _labels(dirs)
    curves = [read_curves(d, n) for d, n in zip(dirs, labels)]
    empty = [str(d) for d, c in zip(dirs, curves) if not (c.train or c.eval)]
    if empty:
        raise MissingError(
            f"no logged losses in {', '.join(empty)} (no {runs.METRICS})",
            "pass run directories written by `lorafit train`",
        )
    return _save_atomically(_figure(curves, "  vs  ".join(labels)), out_png)


def _labels(dirs: list[Path]) -> list[str]:
    """Run dir names, with their parent folder where two runs share a name."""
    names = [d.name for d in dirs]
    return [f"{d.parent.name}/{d.name}" if names.count(d.name) > 1 else d.name for d in dirs]
