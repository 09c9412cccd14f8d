"""`lorafit serve --engine vllm` without vLLM: the command line it builds, the adapters it refuses, the runs it
will not put behind one base; and, where a vLLM is installed, two adapters served by it and checked against PEFT."""

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from lorafit.core.errors import RecipeError
from lorafit.serve import served, vllm


def fake_run(name: str, model: str = "org/base", revision=None, **config) -> served.ServedRun:
    recipe = SimpleNamespace(model=SimpleNamespace(name=model, revision=revision))
    adapter = {"peft_type": "LORA", "r": 8, **config}
    return served.ServedRun(name, Path(f"/runs/{name}"), Path(f"/runs/{name}/adapter"), recipe, adapter)


def build(runs, **kw):
    kw = {"executable": Path("/venv/bin/vllm"), "host": "127.0.0.1", "port": 8000, "dtype": "float32", **kw}
    return vllm.command(runs, "org/base", api_key=kw.pop("api_key", None), base_path="org/base", **kw)


def test_the_command_covers_every_adapter_rank_and_count():
    runs = [fake_run("a", r=8), fake_run("b", r=16, rank_pattern={"q_proj": 24}), fake_run("c", r=4)]
    argv = build(runs, api_key="k")
    assert argv[:3] == ["/venv/bin/vllm", "serve", "org/base"]
    option = lambda name: argv[argv.index(name) + 1]  # noqa: E731
    assert option("--max-lora-rank") == "32"  # the smallest rank vLLM accepts that covers 24
    assert option("--max-loras") == "3" and option("--served-model-name") == "org/base"
    assert option("--api-key") == "k" and "--enable-lora" in argv
    modules = argv[argv.index("--lora-modules") + 1 : argv.index("--lora-modules") + 4]
    assert [m.split("=")[0] for m in modules] == ["a", "b", "c"] and modules[0].endswith("/runs/a/adapter")


@pytest.mark.parametrize(
    "config, reason",
    [
        ({"use_dora": True}, "DoRA"),
        ({"peft_type": "IA3"}, "LoRA adapters only, not IA3"),
        ({"peft_type": "PROMPT_TUNING"}, "not PROMPT_TUNING"),
        ({"modules_to_save": ["lm_head"]}, "modules_to_save (lm_head)"),
        ({"r": 1024}, "rank 1024 is above vLLM's largest LoRA rank 512"),
    ],
)
def test_adapters_vllm_cannot_serve_are_refused_with_the_fix(config, reason):
    with pytest.raises(RecipeError) as exc:
        build([fake_run("ok"), fake_run("odd", **config)])
    assert (
        str(exc.value).count("odd: ") == 1 and reason in str(exc.value) and "lorafit merge /runs/odd" in str(exc.value)
    )


def test_runs_on_another_base_are_named():
    served.check_one_base([fake_run("a"), fake_run("b")])
    with pytest.raises(RecipeError) as exc:
        served.check_one_base([fake_run("a"), fake_run("b"), fake_run("c", model="org/other")])
    assert "c was trained on org/other, not on org/base like a" in str(exc.value)
    with pytest.raises(RecipeError, match="revision v2"):
        served.check_one_base([fake_run("a"), fake_run("b", revision="v2")])


def test_a_missing_vllm_is_a_missing_dependency(tmp_path, monkeypatch):
    from lorafit.core.errors import MissingError

    monkeypatch.setenv("PATH", str(tmp_path))
    assert vllm.find(None, required=False) is None
    with pytest.raises(MissingError, match="own"):
        vllm.find(None)
    with pytest.raises(MissingError, match="no vllm executable"):
        vllm.find(tmp_path)


def vllm_executable() -> str | None:
    return os.environ.get("LORAFIT_VLLM") or shutil.which("vllm")


@pytest.mark.slow
@pytest.mark.skipif(vllm_executable() is None, reason="no vLLM (set LORAFIT_VLLM=/path/to/venv/bin/vllm)")
def test_vllm_serves_two_adapters_as_peft_does(smol_tiny_run, tmp_path):
    """`lorafit serve --engine vllm` proves both adapters live against PEFT before it says ready, then stops vLLM."""
    # Two copies of the tiny run with lora_B drawn large: a few steps on a random model leave its answers (and so
    # the probe's) equal to the base's, which the liveness check would rightly refuse.
    import torch
    from safetensors.torch import load_file, save_file

    runs = []
    for seed, name in enumerate(("first", "second")):
        run = tmp_path / name
        shutil.copytree(smol_tiny_run, run)
        weights = run / "adapter" / "adapter_model.safetensors"
        tensors = load_file(weights)
        generator = torch.Generator().manual_seed(seed)
        for key, value in tensors.items():
            if "lora_B" in key:
                tensors[key] = torch.randn(value.shape, generator=generator) * 0.5
        save_file(tensors, weights)
        runs.append(run)
    trained_run, second = runs
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1"}
    argv = [sys.executable, "-m", "lorafit.cli", "serve", str(trained_run), str(second), "--engine", "vllm"]
    argv += ["--vllm", vllm_executable(), "--port", "0"]
    process = subprocess.Popen(
        argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, start_new_session=True
    )
    lines, deadline = [], time.monotonic() + 900
    for line in process.stdout:
        lines.append(line)
        if re.search(r"ready http://", line) or time.monotonic() > deadline:
            break
    try:
        assert any("ready http://" in line for line in lines), "".join(lines[-40:])
    finally:
        os.killpg(process.pid, signal.SIGINT)
        process.wait(timeout=60)
    assert subprocess.run(["pgrep", "-f", "vllm serve"], capture_output=True).returncode == 1  # nothing left


def fake_vllm(tmp_path: Path, body: str) -> Path:
    exe = tmp_path / "vllm"
    exe.write_text(f"#!/bin/sh\n{body}\n")
    exe.chmod(0o755)
    return exe


def test_stopping_vllm_ends_it_and_everything_it_started(tmp_path):
    """vLLM starts worker processes of its own: stop() ends the child's whole process group."""
    pids = tmp_path / "pids"
    exe = fake_vllm(tmp_path, f"sleep 300 & echo $! > {pids}; sleep 300")
    process = subprocess.Popen([str(exe)], start_new_session=True)
    deadline = time.monotonic() + 10
    while not (pids.is_file() and pids.read_text().strip()) and time.monotonic() < deadline:
        time.sleep(0.05)
    worker = int(pids.read_text())
    vllm.stop(process)
    assert process.poll() is not None
    assert gone(worker)


def gone(pid: int) -> bool:
    """Ended: no such process, or a zombie only waiting for whoever adopted it to reap it."""
    import psutil

    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        try:
            if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
                return True
        except psutil.NoSuchProcess:
            return True
        time.sleep(0.05)
    return False


def test_a_vllm_that_dies_while_starting_is_reported(tmp_path):
    from lorafit.core.errors import MissingError

    process = subprocess.Popen([str(fake_vllm(tmp_path, "exit 3"))], start_new_session=True)
    with pytest.raises(MissingError, match="vllm exited with code 3 before it was ready"):
        vllm.wait_ready(process, "http://127.0.0.1:9/v1", None, timeout=30)
    process = subprocess.Popen([str(fake_vllm(tmp_path, "kill -ILL $$"))], start_new_session=True)
    with pytest.raises(MissingError, match="illegal instruction.*CUDA builds of torchvision"):
        vllm.wait_ready(process, "http://127.0.0.1:9/v1", None, timeout=30)


def test_auto_picks_vllm_only_where_it_can_serve_every_adapter(tmp_path, monkeypatch):
    from rich.console import Console

    from lorafit.serve import server

    console = Console(record=True, width=200)
    monkeypatch.setenv("PATH", str(tmp_path))
    assert server.pick_engine("auto", [fake_run("a")], None, console) == "transformers"
    exe = fake_vllm(tmp_path, "exit 0")
    assert server.pick_engine("auto", [fake_run("a")], exe, console) == "vllm"
    assert server.pick_engine("auto", [fake_run("a"), fake_run("d", use_dora=True)], exe, console) == "transformers"
    said = console.export_text()
    assert "no vllm executable on PATH" in said and "d: vLLM does not apply DoRA" in said
