"""loss.png and `lorafit runs plot`: real PNGs with real content, written atomically."""

import json
import math
import struct
from pathlib import Path

import pytest
from typer.testing import CliRunner

from lorafit.cli import app
from lorafit.core.errors import MissingError
from lorafit.runs import plots

runner = CliRunner()
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def fake_metrics(run_dir: Path, steps: int = 40, scale: float = 1.0) -> Path:
    """A metrics.jsonl as RunCallback writes it: train rows, eval rows, a repeated final eval, the summary row."""
    run_dir.mkdir(parents=True, exist_ok=True)
    rows = [{"step": 0, "tokens": 0, "eval_loss": 6.0 * scale}]
    for s in range(1, steps + 1):
        rows.append(
            {
                "step": s,
                "tokens": 300 * s,
                "loss": scale * (2 + 4 * math.exp(-s / 10)) + 0.1 * math.sin(s),
                "grad_norm": 0.5 + 0.1 * math.cos(s),
                "learning_rate": 1e-3 * min(1.0, s / 5) * (1 - s / (steps + 1)),
            }
        )
        if s % 10 == 0:
            rows.append({"step": s, "tokens": 300 * s, "eval_loss": scale * (2.2 + 4 * math.exp(-s / 10))})
    rows.append({"step": steps, "tokens": 300 * steps, "eval_loss": scale * (2.2 + 4 * math.exp(-steps / 10))})
    rows.append({"step": steps, "tokens": 300 * steps, "train_loss": 3.0, "train_runtime": 1.0})
    (run_dir / "metrics.jsonl").write_text(
        "".join(json.dumps(r) + "\n" for r in rows) + '{"step": 41, "lo'
    )  # torn last line
    return run_dir


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC and data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def assert_real_png(path: Path, min_w: int = 800, min_h: int = 600) -> None:
    from matplotlib.image import imread

    assert path.is_file() and path.stat().st_size > 20_000, "a plot with curves, text and axes, not an empty canvas"
    w, h = png_size(path)
    assert w >= min_w and h >= min_h
    pixels = imread(str(path))[..., :3]
    inked = (pixels.sum(axis=-1) < 2.9).mean()  # share of pixels that are not (near) white
    assert 0.01 < inked < 0.6, inked
    assert not list(path.parent.glob(f".{path.name}.*")), "no temporary file left behind"


def test_loss_png_from_metrics(tmp_path):
    run = fake_metrics(tmp_path / "run")
    out = plots.write_loss_png(run)
    assert out == run / "loss.png"
    assert_real_png(out)
    curves = plots.read_curves(run)
    assert len(curves.train) == 40 and len(curves.lr) == 40
    assert [p[0] for p in curves.eval] == [0, 10, 20, 30, 40]  # the repeated final eval counted once
    assert curves.train[-1][1] == 12_000  # tokens


def test_no_metrics_yet_writes_nothing(tmp_path):
    assert plots.write_loss_png(tmp_path) is None
    assert not (tmp_path / "loss.png").exists()


def test_overlay_of_runs_and_the_cli(tmp_path, monkeypatch):
    monkeypatch.setenv("LORAFIT_REGISTRY", str(tmp_path / "reg.sqlite"))
    a = fake_metrics(tmp_path / "a" / "run")
    b = fake_metrics(tmp_path / "b" / "run", scale=0.8)
    out = plots.overlay([a, b], tmp_path / "both.png")
    assert_real_png(out)
    result = runner.invoke(app, ["runs", "plot", str(a), str(b), "--out", str(tmp_path / "cli.png")])
    assert result.exit_code == 0, result.output
    assert_real_png(tmp_path / "cli.png")
    assert plots._labels([a, b]) == ["a/run", "b/run"]
    with pytest.raises(MissingError, match="no logged losses"):
        plots.overlay([a, tmp_path], tmp_path / "x.png")
    missing = runner.invoke(app, ["runs", "plot", "no-such-run", "--out", str(tmp_path / "y.png")])
    assert missing.exit_code == 7 and "no run 'no-such-run'" in missing.output


def test_training_writes_loss_png_at_each_checkpoint_and_at_the_end(tmp_path, tiny_model_dir, monkeypatch):
    """Needs the training hooks (CheckpointCompletion.on_save and the end of the run)."""
    from rich.console import Console

    from lorafit.recipe import load_recipe
    from lorafit.train import pipeline as train

    from conftest import chat_records, tiny_recipe_text, write_jsonl

    written = []
    real = plots.write_loss_png
    monkeypatch.setattr(plots, "write_loss_png", lambda run_dir: written.append(real(run_dir)))
    data = write_jsonl(tmp_path / "d.jsonl", chat_records(32))
    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        tiny_recipe_text(tiny_model_dir, data, tmp_path / "run", training={"max_steps": 6, "save_every": 3})
    )
    train.run(load_recipe(recipe), console=Console(quiet=True), quiet=True)
    assert len(written) >= 3  # checkpoint 3, checkpoint 6, the end
    assert_real_png(tmp_path / "run" / "loss.png")
