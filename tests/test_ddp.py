"""Data-parallel training on CPU (gloo): torchrun and `lorafit launch` with 2 ranks against one process.

2 ranks x micro-batch 2 and 1 process x micro-batch 4 see the same examples at every step (lorafit groups by
length over the global batch, and accelerate gives each rank every other micro-batch of one seeded order), so
with dropout 0 the losses and the adapter agree to float32 round-off. A rank that trains alone (no gradient
all-reduce) drifts off at the first step, far outside the tolerance.
"""

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
from safetensors.torch import load_file

from conftest import chat_records, run_train, tiny_recipe_text, write_jsonl

STEPS = 12
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}  # 2 ranks on a 2-core machine


def losses(run_dir: Path) -> dict[int, float]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in rows if "loss" in r}


def assert_same_training(run_dir: Path, reference: Path, atol: float = 1e-5) -> None:
    got, want = losses(run_dir), losses(reference)
    assert sorted(got) == sorted(want) == list(range(1, STEPS + 1)), "one metrics line per step: rank 0 alone writes"
    for step in want:
        assert abs(got[step] - want[step]) < atol, (step, got[step], want[step])
    a = load_file(run_dir / "adapter" / "adapter_model.safetensors")
    b = load_file(reference / "adapter" / "adapter_model.safetensors")
    assert a.keys() == b.keys()
    for key in a:
        assert (a[key] - b[key]).abs().max().item() < atol, key


def logged_step(metrics: Path) -> int:
    """The last step in metrics.jsonl (-1 before the first line; a line being written is skipped)."""
    steps = []
    for line in metrics.read_text().splitlines() if metrics.exists() else []:
        try:
            steps.append(json.loads(line)["step"])
        except ValueError:
            continue
    return max(steps, default=-1)


def pause(processes: list) -> None:
    """SIGSTOP, and wait until each process has stopped: a signal sent to one still running (SIGSTOP pending) is
    taken before the stop, and never shows as pending."""
    for p in processes:
        p.suspend()
    while any(p.status() != psutil.STATUS_STOPPED for p in processes):
        time.sleep(0.001)


def usr1_pending(pid: int) -> bool:
    """SIGUSR1 is waiting in the process's shared pending set (Linux /proc)."""
    pending = next(line for line in Path(f"/proc/{pid}/status").read_text().splitlines() if line.startswith("ShdPnd:"))
    return bool(int(pending.split()[1], 16) & (1 << (signal.SIGUSR1 - 1)))


def _environ(process) -> dict:
    """A child's environment, or none if it exited meanwhile (torchrun's short-lived helpers do)."""
    try:
        return process.environ()
    except (psutil.NoSuchProcess, ProcessLookupError):
        return {}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def setup(tmp_path_factory, tiny_model_dir):
    """A recipe at micro-batch 2 (for 2 ranks) and the single-process reference run at micro-batch 4."""
    root = tmp_path_factory.mktemp("ddp")
    data_file = write_jsonl(root / "train.jsonl", chat_records(64))
    recipe = root / "ddp.yaml"
    recipe.write_text(
        tiny_recipe_text(tiny_model_dir, data_file, root / "unused", training={"max_steps": STEPS, "batch_size": 2})
    )
    reference = root / "single"
    result = run_train(recipe, f"output.dir={reference}", "training.batch_size=4")
    assert result.exit_code == 0, result.output
    return root, recipe, reference


def test_torchrun_two_ranks_match_one_process_with_the_same_global_batch(setup):
    root, recipe, reference = setup
    out = root / "torchrun"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node",
            "2",
            "-m",
            "lorafit.cli",
            "train",
            str(recipe),
            "--set",
            f"output.dir={out}",
        ],
        capture_output=True,
        text=True,
        env=ENV,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("done ") == 1, proc.stdout  # rank 0 alone reports
    assert_same_training(out, reference)
    record = json.loads((out / "run.json").read_text())
    single = json.loads((reference / "run.json").read_text())
    assert record["world_size"] == 2 and record["parallelism"] == "MULTI_CPU"
    assert record["train"]["tokens"] == single["train"]["tokens"]  # summed over the ranks
    checkpoint = out / "checkpoints"
    assert not list(checkpoint.glob("checkpoint-*"))  # save_every 0: nothing half-written either


def test_launch_usr1_checkpoints_exits_6_and_resume_matches_one_process(setup):
    """`lorafit launch` forwards SIGUSR1 (Slurm's time-limit warning) to the ranks and exits 6 although torchrun
    itself exits 1; the same command resumes, and the result equals the uninterrupted single process."""
    root, recipe, reference = setup
    out = root / "launched"
    command = [
        sys.executable,
        "-m",
        "lorafit.cli",
        "launch",
        str(recipe),
        "--gpus",
        "2",
        "--main-port",
        str(free_port()),
        "--set",
        f"output.dir={out}",
        "--set",
        "training.save_every=100",
    ]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)
    metrics = out / "metrics.jsonl"
    deadline = time.time() + 300
    ranks = []
    while time.time() < deadline and len(ranks) < 2:
        ranks = [p for p in psutil.Process(proc.pid).children(recursive=True) if "LOCAL_RANK" in _environ(p)]
        time.sleep(0.02)
    assert len(ranks) == 2
    while time.time() < deadline and logged_step(metrics) < 1:  # training has begun
        time.sleep(0.01)
    # A step takes ~25 ms, so on a loaded machine the ranks could run to the end before a signal lands. They are
    # paused and let on in 10 ms slices up to step 2; the signal goes through `lorafit launch` and waits, pending,
    # in both paused ranks; then they go on, and the step they are in is the last.
    pause(ranks)
    while time.time() < deadline and logged_step(metrics) < 2:
        for rank in ranks:
            rank.resume()
        time.sleep(0.01)
        pause(ranks)
    assert logged_step(metrics) < STEPS
    proc.send_signal(signal.SIGUSR1)
    while time.time() < deadline and not all(usr1_pending(rank.pid) for rank in ranks):
        time.sleep(0.01)
    for rank in ranks:
        rank.resume()
    stdout, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 6, stderr[-3000:]
    assert stderr.count("run the same command again to resume") == 1  # rank 0 alone explains
    record = json.loads((out / "run.json").read_text())
    stopped = record["interrupted_at_step"]
    assert record["status"] == "interrupted" and 2 <= stopped < STEPS
    checkpoint = Path(record["checkpoint"])
    assert checkpoint.name == f"checkpoint-{stopped}"
    assert (checkpoint / "lorafit-complete.json").is_file()
    assert {p.name for p in checkpoint.glob("rng_state_*.pth")} == {
        "rng_state_0.pth",
        "rng_state_1.pth",
    }  # both ranks saved

    again = subprocess.run(command, capture_output=True, text=True, env=ENV, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "resuming from" in again.stdout
    assert_same_training(out, reference)
    assert (
        json.loads((out / "run.json").read_text())["train"]["tokens"]
        == json.loads((reference / "run.json").read_text())["train"]["tokens"]
    )


def test_fsdp_launch_on_cpu_says_it_runs_ddp(setup):
    """accelerate 1.15 shards (FSDP) only on accelerators: on CPU the FSDP launch trains as DDP, and says so."""
    root, recipe, reference = setup
    out = root / "fsdp"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "lorafit.cli",
            "launch",
            str(recipe),
            "--gpus",
            "2",
            "--strategy",
            "fsdp",
            "--set",
            f"output.dir={out}",
        ],  # no --main-port: one node picks a free port
        capture_output=True,
        text=True,
        env=ENV,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    record = json.loads((out / "run.json").read_text())
    if record["parallelism"] == "FSDP":  # a future accelerate that shards on CPU: then it must still agree
        assert_same_training(out, reference, atol=1e-4)
        return
    assert record["parallelism"] == "MULTI_CPU"
    assert "launched for FSDP, but accelerate runs MULTI_CPU" in proc.stdout + proc.stderr
    assert_same_training(out, reference)
