"""The run registry: rows that follow a run's life, queries, the `lorafit runs` commands, concurrent writers."""

import json
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from lorafit.cli import app
from lorafit.core import paths
from lorafit.core.errors import DataError, Diverged, Interrupted, MissingError, RecipeError
from lorafit.recipe import load_recipe
from lorafit.runs import comparison, registry, registry_db

from conftest import chat_records, run_train, tiny_recipe_text, write_jsonl

runner = CliRunner()


@pytest.fixture(autouse=True)
def own_registry(tmp_path, monkeypatch) -> Path:
    path = tmp_path / "registry" / "runs.sqlite"
    monkeypatch.setenv("LORAFIT_REGISTRY", str(path))
    return path


def fake_run(
    root: Path, name: str, *, r: int = 8, lr: float = 1e-3, tags=(), status: str = "finished", eval_json: bool = True
) -> Path:
    """A run directory as `lorafit train` (and `lorafit eval`) leave it, without training."""
    (root / "d.jsonl").write_text("{}\n")
    recipe_file = root / f"{name}.yaml"
    recipe_file.write_text(
        yaml.safe_dump(
            {
                "model": {"name": "org/base-1b"},
                "data": {"train": "d.jsonl"},
                "adapter": {"r": r, "alpha": 2 * r},
                "training": {"lr": lr, "max_steps": 10},
                "output": {"dir": str(root / name), "tags": list(tags)},
            }
        )
    )
    recipe = load_recipe(recipe_file)
    run_dir = root / name
    run_dir.mkdir(parents=True)
    (run_dir / "recipe.yaml").write_text(recipe.to_yaml())
    (run_dir / "run.json").write_text(
        json.dumps(
            {
                "status": status,
                "started": "2026-01-01T10:00:00+0000",
                "finished": "2026-01-01T10:05:00+0000",
                "git_sha": "abc123",
                "versions": {"torch": "2.13.0"},
                "model": {"name": "org/base-1b"},
                "adapter": {"method": "lora"},
                "data": {"files": {str(root / "d.jsonl"): "f" * 64}, "train_rows": 90, "eval_rows": 10},
                "train": {
                    "steps": 10,
                    "tokens": 5000,
                    "seconds": 12.5,
                    "tokens_per_s": 400.0,
                    "peak_memory_mb": 900.0,
                    "train_loss": 1.9,
                    "last_logged_loss": 1.5 * r / 8,
                },
                "eval": {"loss_before": 2.5, "loss_after": 1.6 * r / 8},
                "merge": {"path": str(run_dir / "merged")},
                "export_gguf_q8_0": {"path": str(run_dir / "export" / "gguf" / "model-q8_0.gguf")},
            }
        )
    )
    if eval_json:
        (run_dir / "eval.json").write_text(
            json.dumps(
                {
                    "examples": 10,
                    "base": {"loss": 2.5, "exact_match": 0.0},
                    "adapter": {"loss": 1.6, "exact_match": 0.4},
                    "samples": [{"prompt": "x"}],
                }
            )
        )
    return run_dir


def test_default_path_follows_xdg(monkeypatch, tmp_path):
    monkeypatch.delenv("LORAFIT_REGISTRY")
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    assert paths.registry_path() == tmp_path / "xdg" / "lorafit" / "runs.sqlite"
    monkeypatch.delenv("XDG_DATA_HOME")
    assert paths.registry_path() == Path.home() / ".local" / "share" / "lorafit" / "runs.sqlite"


def test_a_runs_life_start_fail_resume_finish(tmp_path, own_registry):
    run_dir = fake_run(tmp_path, "r1", tags=["baseline"])
    recipe = load_recipe(tmp_path / "r1.yaml")
    row = registry.start(recipe, run_dir)
    assert row["status"] == "running" and row["exit_code"] is None and row["name"] == "r1"
    assert (row["base_model"], row["method"], row["r"], row["alpha"], row["lr"], row["max_steps"]) == (
        "org/base-1b",
        "lora",
        8,
        16.0,
        1e-3,
        10,
    )
    assert row["tags"] == ["baseline"] and "max_steps: 10" in row["recipe"] and registry.alive(row) is True
    row = registry.fail(run_dir, "interrupted", 6, "stopped by signal SIGTERM after step 4")
    assert (row["status"], row["exit_code"], row["message"]) == (
        "interrupted",
        6,
        "stopped by signal SIGTERM after step 4",
    )
    registry.start(recipe, run_dir)  # resumed: running again, same row
    row = registry.finish(run_dir)
    assert (row["status"], row["exit_code"], row["message"]) == ("finished", 0, None)
    assert row["data_files"] == {str(tmp_path / "d.jsonl"): "f" * 64} and (row["train_rows"], row["eval_rows"]) == (
        90,
        10,
    )
    assert (row["train_loss"], row["eval_loss_before"], row["eval_loss"], row["steps"], row["tokens"]) == (
        1.5,
        2.5,
        1.6,
        10,
        5000,
    )
    assert row["eval_metrics"] == {
        "examples": 10,
        "base": {"loss": 2.5, "exact_match": 0.0},
        "adapter": {"loss": 1.6, "exact_match": 0.4},
    }
    assert row["merged"] == str(run_dir / "merged") and row["exports"] == {
        "gguf_q8_0": str(run_dir / "export/gguf/model-q8_0.gguf")
    }
    assert row["git_sha"] == "abc123" and row["versions"] == {"torch": "2.13.0"} and row["train_seconds"] == 12.5
    assert len(registry.list_runs()) == 1
    with sqlite3.connect(own_registry) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_recording_maps_exceptions_to_status_and_exit_code(tmp_path):
    run_dir = fake_run(tmp_path, "r1")
    recipe = load_recipe(tmp_path / "r1.yaml")
    cases = [
        (DataError("d.jsonl:2: invalid JSON"), "failed", 3),
        (Diverged("NaN at step 3"), "diverged", 5),
        (Interrupted("stopped by signal SIGTERM"), "interrupted", 6),
        (KeyboardInterrupt(), "interrupted", 6),
        (RuntimeError("a bug"), "failed", 1),
        (type("OutOfMemoryError", (RuntimeError,), {})("CUDA out of memory"), "failed", 4),
    ]
    for exc, status, code in cases:
        with pytest.raises(type(exc)):
            with registry.recording(recipe, run_dir):
                raise exc
        row = registry.get(str(run_dir))
        assert (row["status"], row["exit_code"]) == (status, code), exc
    with registry.recording(recipe, run_dir):
        pass
    assert registry.get("r1")["status"] == "finished"


def test_registry_trouble_never_stops_a_run(tmp_path, monkeypatch):
    blocker = tmp_path / "file"
    blocker.write_text("")
    monkeypatch.setenv("LORAFIT_REGISTRY", str(blocker / "runs.sqlite"))  # cannot be created
    warnings = []
    run_dir = fake_run(tmp_path, "r1")
    with registry.recording(load_recipe(tmp_path / "r1.yaml"), run_dir, warn=warnings.append):
        pass
    assert len(warnings) == 2 and "the run itself is unaffected" in warnings[0]


def test_sync_keeps_a_final_status_and_adds_exports(tmp_path):
    run_dir = fake_run(tmp_path, "r1", status="running")
    registry.fail(run_dir, "failed", 4, "out of memory")  # run.json still says running: the process died in OOM
    row = registry.sync_from_dir(run_dir, export={"peft": "/srv/adapters/r1"})
    assert (row["status"], row["exit_code"]) == ("failed", 4)
    assert row["exports"] == {"gguf_q8_0": str(run_dir / "export/gguf/model-q8_0.gguf"), "peft": "/srv/adapters/r1"}
    with pytest.raises(MissingError, match="not a lorafit run directory"):
        registry.sync_from_dir(tmp_path / "nothing")


def test_lookup_list_filters_and_remove(tmp_path):
    (tmp_path / "x").mkdir()
    (tmp_path / "y").mkdir()
    a = registry.sync_from_dir(fake_run(tmp_path / "x", "same", tags=["prod"]))
    b = registry.sync_from_dir(fake_run(tmp_path / "y", "same", r=16))
    c = registry.sync_from_dir(fake_run(tmp_path, "other", status="interrupted"))
    assert registry.get(f"#{b['id']}")["run_dir"] == b["run_dir"]
    assert registry.get(str(tmp_path / "x" / "same"))["id"] == a["id"]
    assert registry.get("other")["status"] == "interrupted" and c["exit_code"] == 6
    with pytest.raises(RecipeError, match="2 runs are named 'same'"):
        registry.get("same")
    assert [r["id"] for r in registry.list_runs(tag="prod")] == [a["id"]]
    assert {r["id"] for r in registry.list_runs(status="finished", model="base-1b", method="lora")} == {
        a["id"],
        b["id"],
    }
    assert registry.list_runs(method="dora") == []
    registry.remove(f"#{a['id']}")
    assert registry.get("same")["id"] == b["id"]
    assert (tmp_path / "x" / "same").is_dir()  # rows only; files stay


def test_runs_cli_list_show_compare_rm_import(tmp_path):
    env = {"COLUMNS": "200"}
    a, b = fake_run(tmp_path, "small", tags=["sweep"]), fake_run(tmp_path, "big", r=16, lr=3e-4, eval_json=False)
    result = runner.invoke(app, ["runs", "import", str(a), str(b)], env=env)
    assert result.exit_code == 0, result.output
    assert "#1 small: finished" in result.output and "#2 big: finished" in result.output
    listed = runner.invoke(app, ["runs", "list", "--tag", "sweep"], env=env)
    assert listed.exit_code == 0 and "small" in listed.output and "big" not in listed.output
    shown = runner.invoke(app, ["runs", "show", "big", "--recipe"], env=env)
    assert shown.exit_code == 0 and str(b) in shown.output and "gguf_q8_0" in shown.output and "r: 16" in shown.output

    compared = runner.invoke(app, ["runs", "compare", "small", "big"], env=env)
    assert compared.exit_code == 0, compared.output
    lines = [" ".join(line.replace("│", " ").split()) for line in compared.output.splitlines()]
    assert "adapter.r 8 16" in lines and "adapter.alpha 16.0 32.0" in lines and "training.lr 0.001 0.0003" in lines
    assert "output.tags ['sweep'] []" in lines and not any(line.startswith("output.dir ") for line in lines)
    assert not any(line.startswith("training.max_steps") for line in lines)  # equal settings are not listed
    assert "eval_loss 1.6 3.2 +1.6" in lines and "train_loss 1.5 3.0 +1.5" in lines and "steps 10 10 0" in lines

    kept = runner.invoke(app, ["runs", "rm", "small"], input="n\n", env=env)
    assert kept.exit_code == 0 and "nothing removed" in kept.output and registry.get("small")  # declining is no error
    typo = runner.invoke(app, ["runs", "list", "--status", "finised"], env=env)
    assert typo.exit_code == 2 and "did you mean 'finished'" in typo.output
    gone = runner.invoke(app, ["runs", "rm", "small", "--yes"], env=env)
    assert gone.exit_code == 0 and a.is_dir()
    assert runner.invoke(app, ["runs", "show", "small"], env=env).exit_code == 7
    deleted = runner.invoke(app, ["runs", "rm", "big", "--yes", "--delete-files"], env=env)
    assert deleted.exit_code == 0 and not b.exists()


WRITER = textwrap.dedent("""
    import sys
    import time
    from pathlib import Path
    from lorafit.runs import registry
    from lorafit.recipe import load_recipe

    root, tag, n = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])
    recipe = load_recipe(root / "shared.yaml")
    (root / f"ready-{tag}").touch()
    while len(list(root.glob("ready-*"))) < 2:  # start writing together
        time.sleep(0.01)
    for i in range(n):
        registry.start(recipe, root / f"{tag}-{i}")
        registry.fail(root / f"{tag}-{i}", "failed", 3, f"{tag} {i}")
        registry.sync_from_dir(root / "shared")  # both processes update one row too
""")


def test_two_processes_writing_at_once_do_not_corrupt_it(tmp_path, own_registry):
    fake_run(tmp_path, "shared")
    n = 100
    procs = [
        subprocess.Popen([sys.executable, "-c", WRITER, str(tmp_path), tag, str(n)], stderr=subprocess.PIPE, text=True)
        for tag in ("a", "b")
    ]
    for p in procs:
        _, err = p.communicate(timeout=300)
        assert p.returncode == 0, err
    with sqlite3.connect(own_registry) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        assert conn.execute("SELECT COUNT(*) FROM runs").fetchone()[0] == 2 * n + 1
        assert (
            conn.execute("SELECT COUNT(*) FROM runs WHERE status = 'failed' AND exit_code = 3").fetchone()[0] == 2 * n
        )
        order = [name[0] for (name,) in conn.execute("SELECT name FROM runs WHERE name != 'shared' ORDER BY id")]
    assert sum(x != y for x, y in zip(order, order[1:])) > 2, "the two writers really interleaved"
    assert registry.get("shared")["status"] == "finished"


# ---------------------------------------------------------------- real runs (need the training hooks)


def _tiny(tmp_path, tiny_model_dir, name: str, **training) -> Path:
    data_file = tmp_path / "d.jsonl"
    if not data_file.exists():
        write_jsonl(data_file, chat_records(48))
    path = tmp_path / f"{name}.yaml"
    path.write_text(
        tiny_recipe_text(tiny_model_dir, data_file, tmp_path / name, training=training, output={"tags": ["ci"]})
    )
    return path


def test_finished_run_row(tmp_path, tiny_model_dir):
    result = run_train(_tiny(tmp_path, tiny_model_dir, "ok", max_steps=4))
    assert result.exit_code == 0, result.output
    row = registry.get("ok")
    assert (row["status"], row["exit_code"], row["steps"], row["tags"]) == ("finished", 0, 4, ["ci"])
    assert (
        row["train_loss"] > 0
        and row["eval_loss"] > 0
        and row["tokens"] > 0
        and len(next(iter(row["data_files"].values()))) == 64
    )


def test_bad_data_run_row(tmp_path, tiny_model_dir):
    recipe = _tiny(tmp_path, tiny_model_dir, "bad")
    (tmp_path / "d.jsonl").write_text('{"messages": [{"role": "user", "content": "hi"}]}\nnot json\n')
    result = run_train(recipe)
    assert result.exit_code == 3
    row = registry.get("bad")
    assert (row["status"], row["exit_code"]) == ("failed", 3)
    assert "d.jsonl" in row["message"]


def test_interrupted_run_row(tmp_path, tiny_model_dir):
    recipe = _tiny(tmp_path, tiny_model_dir, "stopped", max_steps=200)
    proc = subprocess.Popen(
        [sys.executable, "-m", "lorafit.cli", "train", str(recipe)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    metrics = tmp_path / "stopped" / "metrics.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and not (metrics.exists() and '"loss"' in metrics.read_text()):
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 6, err
    row = registry.get("stopped")
    assert (row["status"], row["exit_code"]) == ("interrupted", 6)
    assert "SIGTERM" in row["message"]


def test_diverged_run_row(tmp_path, tiny_model_dir):
    recipe = _tiny(tmp_path, tiny_model_dir, "nan", max_steps=6, lr=1.0e30, max_grad_norm=0.0)
    assert run_train(recipe).exit_code == 5
    row = registry.get("nan")
    assert (row["status"], row["exit_code"]) == ("diverged", 5) and "NaN" in row["message"]


def test_network_filesystems_keep_the_rollback_journal(tmp_path, monkeypatch):
    """WAL needs shared memory across processes, which NFS homes on a cluster do not give."""
    real = Path.read_text

    def mounts(self, *a, **k):
        if str(self) == "/proc/mounts":
            return f"server:/home {tmp_path} nfs4 rw 0 0\n/dev/sda1 / ext4 rw 0 0\n"
        return real(self, *a, **k)

    monkeypatch.setattr(Path, "read_text", mounts)
    assert registry_db.on_network_filesystem(tmp_path / "lorafit")
    assert not registry_db.on_network_filesystem(Path("/var/tmp"))
    conn = registry_db.connect(tmp_path / "lorafit" / "runs.sqlite")
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "delete"
    conn.close()


def test_compare_lists_harness_scores_and_deltas():
    """`lorafit eval --harness` results (eval.json "harness") appear in `runs compare`: each run's scores and delta,
    and the change from the first run to the last."""

    def row(acc, delta):
        return {
            "recipe": "",
            "eval_metrics": {
                "harness": {"arc": {"acc": {"base": acc - delta, "adapter": acc, "delta": delta}}},
                "harness_info": {"lm_eval_version": "0.4.13"},
            },
        }

    metrics = {m: (*v, d) for m, v, d in comparison.compare(row(0.5, 0.1), row(0.75, 0.35), row(0.8, 0.2))["metrics"]}
    assert metrics["harness.arc.acc.adapter"] == (0.5, 0.75, 0.8, 0.3)
    assert metrics["harness.arc.acc.delta"] == (0.1, 0.35, 0.2, 0.1)


def test_an_older_registry_gains_the_lineage_columns(tmp_path, own_registry):
    """A registry written before the lineage columns: connect() adds them, its rows stay, a sync fills them."""
    old = {
        k: v
        for k, v in registry_db.COLUMNS.items()
        if k not in ("objective", "parent", "parent_adapter_sha256", "reference")
    }
    own_registry.parent.mkdir(parents=True)
    with sqlite3.connect(own_registry) as conn:
        conn.execute(f"CREATE TABLE runs (id INTEGER PRIMARY KEY, {', '.join(f'{k} {v}' for k, v in old.items())})")
        conn.execute("INSERT INTO runs (name, run_dir, status) VALUES ('r1', ?, 'finished')", (str(tmp_path / "r1"),))
        conn.execute("PRAGMA user_version = 1")
    run_dir = fake_run(tmp_path, "r1")
    assert registry.get("r1")["objective"] is None  # migrated: the column is there, empty until synced
    row = registry.sync_from_dir(run_dir)
    assert (row["id"], row["objective"], row["parent"]) == (1, "sft", None)
    with sqlite3.connect(own_registry) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == registry_db.SCHEMA_VERSION
