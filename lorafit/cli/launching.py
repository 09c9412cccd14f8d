"""`lorafit launch` and `lorafit slurm`: multi-GPU and multi-node runs on accelerate's launcher.

`lorafit train` itself works unchanged under torchrun and accelerate launch (see lorafit/core/dist.py); this module
only builds those launches, from the configs shipped in configs/:

    lorafit launch RECIPE --gpus 4                      -> accelerate launch --config_file configs/accelerate/ddp.yaml
                                                           --num_processes 4 ... -m lorafit.cli train RECIPE
    lorafit slurm RECIPE --nodes 2 --gpus-per-node 8    -> an sbatch script running one `lorafit launch` per node

Two things the launchers get wrong for preemptible jobs, and that `lorafit launch` fixes around them:
- torchrun (inside accelerate launch) exits 1 whenever a worker fails, so lorafit's exit codes (6 "interrupted,
  checkpoint saved, resumable", 3 bad data, 4 out of memory, ...) are lost. Rank 0 writes its exit code to the
  file named by LORAFIT_EXIT_FILE, and lorafit launch exits with it (run.json's status is the fallback);
  the sbatch script requeues on 6.
- SIGUSR1 (Slurm's warning before the time limit) would kill the torchrun agent (no handler: default action),
  and the agent's own SIGTERM handling gives workers only 30 s before SIGKILL. lorafit launch starts the
  launcher with SIGUSR1 ignored and forwards SIGUSR1 / SIGTERM / SIGINT to the training processes as SIGUSR1,
  on which they finish the step, write a complete checkpoint and exit 6.
"""

from __future__ import annotations

import os
import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Sequence

from lorafit.core import paths
from lorafit.core.dist import EXIT_FILE_ENV
from lorafit.core.errors import STATUS_EXIT_CODES, MissingError, RecipeError

STRATEGIES = ("ddp", "fsdp", "deepspeed-zero2", "deepspeed-zero3")
DEFAULT_PORT = 29500


def configs_dir() -> Path:
    """lorafit's shipped launch configs (paths.configs_dir); MissingError when they are not there."""
    found = paths.configs_dir()
    if found is not None:
        return found
    raise MissingError(
        "lorafit's launch configs (configs/accelerate, configs/deepspeed) are not found",
        "run from a lorafit checkout (pip install -e .), or pass --config FILE",
    )


def config_file(strategy: str, qlora: bool = False) -> Path:
    """The accelerate config for a strategy; FSDP with a 4-bit base uses PEFT's FSDP-QLoRA settings."""
    if strategy not in STRATEGIES:
        raise RecipeError(f"--strategy {strategy!r} is not one of {', '.join(STRATEGIES)}")
    name = "fsdp-qlora" if strategy == "fsdp" and qlora else strategy
    return configs_dir() / "accelerate" / f"{name}.yaml"


def deepspeed_file(strategy: str) -> Path | None:
    if not strategy.startswith("deepspeed-"):
        return None
    return configs_dir() / "deepspeed" / f"{strategy.split('-', 1)[1]}.json"


def build_command(
    recipe: Path,
    overrides: Sequence[str] = (),
    *,
    gpus: int,
    nodes: int = 1,
    node_rank: int | None = None,
    main_address: str | None = None,
    main_port: int | None = None,
    strategy: str = "ddp",
    qlora: bool = False,
    config: Path | None = None,
    train_args: Sequence[str] = (),
    cli_args: Sequence[str] = (),
    python: str | None = None,
) -> list[str]:
    """The command that runs `lorafit train RECIPE` on `gpus` processes on each of `nodes` machines."""
    if gpus < 1:
        raise RecipeError(f"--gpus must be at least 1, got {gpus}")
    if nodes < 1:
        raise RecipeError(f"--nodes must be at least 1, got {nodes}")
    python = python or sys.executable
    train = [
        "-m",
        "lorafit.cli",
        *cli_args,
        "train",
        str(recipe),
        *[a for o in overrides for a in ("--set", o)],
        *train_args,
    ]
    if gpus * nodes == 1 and strategy == "ddp" and config is None:
        return [python, *train]  # one process: nothing to launch
    if nodes > 1:
        if node_rank is None:
            node_rank = _env_int("SLURM_NODEID", "NODE_RANK", "MACHINE_RANK")
        if node_rank is None or not 0 <= node_rank < nodes:
            raise RecipeError(
                f"--nodes {nodes} needs this machine's --node-rank (0..{nodes - 1})",
                "pass --node-rank, or run under Slurm (SLURM_NODEID) as `lorafit slurm` does",
            )
        main_address = main_address or os.environ.get("MASTER_ADDR")
        if not main_address:
            raise RecipeError(f"--nodes {nodes} needs --main-address: the host name of node 0 (or MASTER_ADDR)")
    command = [
        python,
        "-m",
        "accelerate.commands.launch",
        "--config_file",
        str(config or config_file(strategy, qlora)),
        "--num_machines",
        str(nodes),
        "--num_processes",
        str(gpus * nodes),  # accelerate counts processes over all machines
        "--machine_rank",
        str(node_rank or 0),
        # One node: port 0 lets accelerate pick a free one, so two runs on a machine do not collide.
        "--main_process_port",
        str(main_port if main_port is not None else DEFAULT_PORT if nodes > 1 else 0),
    ]
    if nodes > 1:
        command += ["--main_process_ip", str(main_address)]
    ds = deepspeed_file(strategy)
    if ds is not None and config is None:
        command += ["--deepspeed_config_file", str(ds)]  # absolute: the yaml's relative path needs the repo as cwd
    return command + train


def _env_int(*names: str) -> int | None:
    for name in names:
        value = os.environ.get(name)
        if value is not None and value.strip().isdigit():
            return int(value)
    return None


def check_environment(strategy: str, gpus: int, console) -> None:
    """Fail early for what cannot run here; say what will happen on a machine without GPUs."""
    import importlib.util

    import torch

    if strategy.startswith("deepspeed") and importlib.util.find_spec("deepspeed") is None:
        raise MissingError(
            f"--strategy {strategy} needs DeepSpeed, which is not installed",
            "pip install deepspeed (on the GPU machines)",
        )
    if torch.cuda.is_available():
        if gpus > torch.cuda.device_count():
            raise RecipeError(f"--gpus {gpus}, but this machine has {torch.cuda.device_count()} CUDA device(s)")
        return
    if strategy.startswith("deepspeed"):
        raise RecipeError(
            f"--strategy {strategy} needs CUDA GPUs; this machine has none", "use --strategy ddp to run on CPU"
        )
    note = " (accelerate only shards on GPUs: FSDP runs as plain DDP here)" if strategy == "fsdp" else ""
    console.print(f"no CUDA GPU here: {gpus} CPU process(es) per node with the gloo backend{note}", highlight=False)


def execute(command: Sequence[str], run_dir: Path, console) -> int:
    """Run the launcher, forward preemption signals to the training processes, return lorafit's exit code."""
    import tempfile

    import psutil

    started = time.time()
    fd, exit_file = tempfile.mkstemp(prefix="lorafit-exit-", suffix=".txt")
    os.close(fd)
    usr1 = getattr(signal, "SIGUSR1", None)
    # The launcher (and the torchrun agent in it) inherits SIGUSR1 ignored, so a signal meant for the training
    # processes cannot kill it; lorafit's training loop installs its own handler over the inherited one.
    previous_usr1 = signal.signal(usr1, signal.SIG_IGN) if usr1 else None
    try:
        proc = subprocess.Popen(list(command), env={**os.environ, EXIT_FILE_ENV: exit_file})
    except BaseException:
        Path(exit_file).unlink(missing_ok=True)
        raise
    finally:
        if usr1:
            signal.signal(usr1, previous_usr1)

    def forward(signum, frame):
        # The launcher itself too: with one process it is the training process; an accelerate launcher ignores it.
        try:
            top = psutil.Process(proc.pid)
            targets = [top, *top.children(recursive=True)]
        except psutil.Error:
            targets = []
        for child in targets:
            try:
                child.send_signal(usr1 or signal.SIGTERM)
            except psutil.Error:
                pass
        console.print(
            f"lorafit launch: {signal.Signals(signum).name} -> asked {len(targets)} process(es) to checkpoint and stop",
            highlight=False,
        )

    handled = [s for s in (signal.SIGTERM, signal.SIGINT, usr1) if s is not None]
    previous = {s: signal.signal(s, forward) for s in handled}
    try:
        code = proc.wait()  # resumed after each forwarded signal (PEP 475)
        try:
            reported = Path(exit_file).read_text().strip()
        except OSError:  # removed meanwhile (a /tmp cleaner): run.json's status is the fallback
            reported = ""
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        Path(exit_file).unlink(missing_ok=True)
    return exit_code(code, run_dir, started, int(reported) if reported.isdigit() else None)


def exit_code(launcher_code: int, run_dir: Path, started: float, reported: int | None = None) -> int:
    """lorafit's exit code for the whole job: the one rank 0 reported, else what run.json (written by rank 0
    during this launch) says (interrupted 6, diverged 5), else the launcher's; torchrun reports any failure as 1."""
    from lorafit import runs

    if launcher_code < 0:
        launcher_code = 128 - launcher_code  # killed by a signal, as a shell reports it
    if launcher_code != 0 and reported:
        return reported
    path = Path(run_dir) / runs.RUN_JSON
    if launcher_code != 0 and path.is_file() and path.stat().st_mtime >= started - 1:
        status = runs.read_run_json(run_dir).get("status")
        return STATUS_EXIT_CODES.get(status) or launcher_code
    return launcher_code


# ---------------------------------------------------------------- SLURM


def slurm_template() -> Path:
    return configs_dir() / "slurm" / "lorafit.sbatch"


def slurm_script(
    recipe: Path,
    overrides: Sequence[str] = (),
    *,
    nodes: int,
    gpus_per_node: int,
    strategy: str = "ddp",
    time_limit: str | None = None,
    partition: str | None = None,
    account: str | None = None,
    job_name: str | None = None,
    signal_seconds: int = 120,
    lorafit: Sequence[str] | None = None,
) -> str:
    """configs/slurm/lorafit.sbatch with this job's values filled in (the template stays the documentation)."""
    if nodes < 1 or gpus_per_node < 1:
        raise RecipeError("--nodes and --gpus-per-node must be at least 1")
    if strategy not in STRATEGIES:
        raise RecipeError(f"--strategy {strategy!r} is not one of {', '.join(STRATEGIES)}")
    if time_limit is not None and not re.fullmatch(r"(\d+-)?\d+(:\d{1,2}){0,2}", time_limit):
        raise RecipeError(f"--time {time_limit!r}: use Slurm's forms, e.g. 90, 12:00:00 or 2-00:00:00")
    text = slurm_template().read_text()
    lorafit = list(lorafit) if lorafit else [sys.executable, "-m", "lorafit.cli"]
    sbatch = {
        "job-name": job_name or f"lorafit-{Path(recipe).stem}",
        "nodes": str(nodes),
        "gpus-per-node": str(gpus_per_node),
        "signal": f"USR1@{signal_seconds}",
    }
    if time_limit:
        sbatch["time"] = time_limit
    optional = {"partition": partition, "account": account}
    for key, value in {**sbatch, **{k: v for k, v in optional.items() if v}}.items():
        # `#SBATCH --key=...` or the commented-out `##SBATCH --key=...` of the template
        text, n = re.subn(
            rf"^#{{1,2}}SBATCH --{key}=.*$", lambda _m: f"#SBATCH --{key}={value}", text, count=1, flags=re.M
        )
        if n != 1:
            raise RecipeError(f"the Slurm template {slurm_template()} has no #SBATCH --{key} line")
    shell = {
        "RECIPE": shlex.quote(str(Path(recipe).resolve())),
        "GPUS_PER_NODE": str(gpus_per_node),
        "STRATEGY": strategy,
        "LORAFIT": "(" + " ".join(shlex.quote(p) for p in lorafit) + ")",
        "SET_ARGS": "(" + " ".join(shlex.quote(a) for o in overrides for a in ("--set", o)) + ")",
    }
    for name, value in shell.items():
        text, n = re.subn(rf"^{name}=.*$", lambda _m: f"{name}={value}", text, count=1, flags=re.M)
        if n != 1:
            raise RecipeError(f"the Slurm template {slurm_template()} has no {name}= line")
    return text
