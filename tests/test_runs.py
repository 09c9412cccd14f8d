"""Atomic writes: a crash mid-write leaves the old file (or none), never a torn one."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from lorafit import runs


def test_atomic_write_replaces_whole_file(tmp_path):
    target = tmp_path / "run.json"
    runs.atomic_write_json(target, {"a": 1})
    runs.atomic_write_json(target, {"a": 2})
    assert json.loads(target.read_text()) == {"a": 2}
    assert os.listdir(tmp_path) == ["run.json"]


def test_failed_write_keeps_the_previous_file(tmp_path, monkeypatch):
    target = tmp_path / "run.json"
    runs.atomic_write_json(target, {"ok": True})

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(os, "fsync", boom)
    with pytest.raises(OSError):
        runs.atomic_write_json(target, {"ok": False})
    assert json.loads(target.read_text()) == {"ok": True}
    assert os.listdir(tmp_path) == ["run.json"]


def test_killed_during_directory_save_leaves_no_partial_dir(tmp_path):
    """kill -9 in the middle of writing an adapter directory: the target never appears half-written."""
    script = f"""
import os, signal
from pathlib import Path
from lorafit import runs
with runs.atomic_dir(Path({str(tmp_path / "adapter")!r})) as tmp:
    (tmp / "adapter_model.safetensors").write_bytes(b"x" * 1000)
    os.kill(os.getpid(), signal.SIGKILL)
"""
    proc = subprocess.run([sys.executable, "-c", script])
    assert proc.returncode == -9
    assert not (tmp_path / "adapter").exists()


def test_atomic_dir_replaces_existing(tmp_path):
    target = tmp_path / "adapter"
    with runs.atomic_dir(target) as tmp:
        (tmp / "v").write_text("1")
    with runs.atomic_dir(target) as tmp:
        (tmp / "v").write_text("2")
    assert (target / "v").read_text() == "2"
    assert sorted(os.listdir(tmp_path)) == ["adapter"]


def test_atomic_dir_never_replaces_a_folder_lorafit_did_not_write(tmp_path):
    """A mistyped --out (a home directory, another run) must not be deleted: only empty or lorafit-written folders go."""
    from lorafit.core.errors import RecipeError

    mine = tmp_path / "models"
    mine.mkdir()
    (mine / "my_other_model.bin").write_text("precious")
    with pytest.raises(RecipeError, match="did not write"):
        with runs.atomic_dir(mine) as tmp:
            (tmp / "adapter_model.safetensors").write_text("new")
    assert sorted(os.listdir(mine)) == ["my_other_model.bin"]
    assert sorted(os.listdir(tmp_path)) == ["models"]  # no temp dir left behind either

    with runs.atomic_dir(tmp_path / "out") as tmp:
        (tmp / "v").write_text("1")
    with runs.atomic_dir(tmp_path / "out") as tmp:  # lorafit wrote it: a re-export replaces it
        (tmp / "v").write_text("2")
    assert (tmp_path / "out" / "v").read_text() == "2"
    with runs.atomic_dir(mine, owned=True) as tmp:  # a place only lorafit writes to (a run's adapter/)
        (tmp / "v").write_text("3")
    assert (mine / "v").read_text() == "3"
    (tmp_path / "file").write_text("x")
    with pytest.raises(RecipeError, match="is a file"):
        runs.check_replaceable(tmp_path / "file")


def test_rotation_ignores_stray_checkpoint_folders(tmp_path):
    folder = tmp_path / "checkpoints"
    for name in ("checkpoint-2", "checkpoint-4", "checkpoint-old"):
        (folder / name).mkdir(parents=True)
        (folder / name / runs.COMPLETE).write_text("{}")
    runs.rotate_checkpoints(folder, keep=1)
    assert sorted(p.name for p in folder.iterdir()) == ["checkpoint-4", "checkpoint-old"]


def test_rotation_keeps_the_newest_complete_checkpoint(tmp_path):
    folder = tmp_path / "checkpoints"
    for step, complete in ((2, True), (4, True), (6, True), (8, False), (3, False)):
        (folder / f"checkpoint-{step}").mkdir(parents=True)
        if complete:
            (folder / f"checkpoint-{step}" / runs.COMPLETE).write_text("{}")
    runs.rotate_checkpoints(folder, keep=1)
    # 8 is partial but newer than the newest complete one: it may still be being written, so it stays
    assert sorted(p.name for p in folder.iterdir()) == ["checkpoint-6", "checkpoint-8"]
    assert runs.latest_checkpoint(tmp_path).name == "checkpoint-6"


def test_reproduce_default_out_for_dot_and_dotdot(tmp_path, monkeypatch):
    from lorafit.train.reproduce import default_out

    run = tmp_path / "run"
    (run / "sub").mkdir(parents=True)
    monkeypatch.chdir(run)
    assert default_out(Path(".")) == tmp_path / "run-repro"
    assert default_out(Path("sub/..")) == tmp_path / "run-repro"
