"""`lorafit launch`, `lorafit slurm` and the shipped configs. Multi-process training itself is in test_ddp.py;
the train options launchers rely on (--no-resume, --force, training.auto_batch_size) are in test_resume.py."""

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from lorafit.cli import app
from lorafit.cli import launching as launch

from conftest import chat_records, tiny_recipe_text, write_jsonl

runner = CliRunner()
ROOT = Path(__file__).resolve().parent.parent
CONFIGS = ROOT / "configs"


@pytest.fixture()
def recipe(tmp_path, tiny_model_dir) -> Path:
    data_file = write_jsonl(tmp_path / "d.jsonl", chat_records(32))
    path = tmp_path / "tiny.yaml"
    path.write_text(tiny_recipe_text(tiny_model_dir, data_file, tmp_path / "run", training={"max_steps": 2}))
    return path


def dry_run(*args: str) -> list[str]:
    result = runner.invoke(app, ["launch", *args, "--dry-run"])
    assert result.exit_code == 0, result.output
    import shlex

    return shlex.split(result.output.strip())


def flat(output: str) -> str:
    """Console output with rich's line wrapping undone."""
    return " ".join(output.split())


def option(command: list[str], name: str) -> str:
    return command[command.index(name) + 1]


# ---------------------------------------------------------------- lorafit launch


@pytest.mark.parametrize(
    ("strategy", "config"),
    [("ddp", "ddp"), ("fsdp", "fsdp"), ("deepspeed-zero2", "deepspeed-zero2"), ("deepspeed-zero3", "deepspeed-zero3")],
)
def test_launch_builds_the_accelerate_command(recipe, strategy, config):
    command = dry_run(str(recipe), "--gpus", "4", "--strategy", strategy, "--set", "training.lr=1e-4")
    assert command[1:3] == ["-m", "accelerate.commands.launch"]
    assert option(command, "--config_file") == str(CONFIGS / "accelerate" / f"{config}.yaml")
    assert option(command, "--num_processes") == "4" and option(command, "--num_machines") == "1"
    assert option(command, "--main_process_port") == "0"  # one node: accelerate picks a free port
    assert command[command.index("lorafit.cli") - 1] == "-m"
    assert command[command.index("lorafit.cli") :] == ["lorafit.cli", "train", str(recipe), "--set", "training.lr=1e-4"]
    if strategy.startswith("deepspeed"):
        ds = Path(option(command, "--deepspeed_config_file"))
        assert ds.is_absolute() and ds == CONFIGS / "deepspeed" / f"zero{strategy[-1]}.json"
    else:
        assert "--deepspeed_config_file" not in command


def test_launch_fsdp_with_a_4bit_base_uses_the_fsdp_qlora_config(recipe):
    command = dry_run(str(recipe), "--gpus", "2", "--strategy", "fsdp", "--set", "quantization.load_in_4bit=true")
    assert option(command, "--config_file").endswith("fsdp-qlora.yaml")


def test_launch_multi_node_and_single_process(recipe):
    command = dry_run(
        str(recipe),
        "--gpus",
        "8",
        "--nodes",
        "2",
        "--node-rank",
        "1",
        "--main-address",
        "node-a",
        "--main-port",
        "1234",
    )
    assert option(command, "--num_processes") == "16"  # accelerate counts processes over all machines
    assert option(command, "--num_machines") == "2" and option(command, "--machine_rank") == "1"
    assert option(command, "--main_process_ip") == "node-a" and option(command, "--main_process_port") == "1234"
    assert dry_run(str(recipe), "--gpus", "1")[1:] == ["-m", "lorafit.cli", "train", str(recipe)]
    assert dry_run(str(recipe), "--gpus", "2", "--force")[-1] == "--force"


def test_launch_node_rank_from_slurm(recipe, monkeypatch):
    monkeypatch.setenv("SLURM_NODEID", "3")
    monkeypatch.setenv("MASTER_ADDR", "head")
    command = dry_run(str(recipe), "--gpus", "2", "--nodes", "4")
    assert option(command, "--machine_rank") == "3" and option(command, "--main_process_ip") == "head"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--gpus", "2", "--nodes", "2"], "needs this machine's --node-rank"),
        (["--gpus", "2", "--nodes", "2", "--node-rank", "1"], "needs --main-address"),
        (["--gpus", "0"], "--gpus must be at least 1"),
        (["--gpus", "2", "--strategy", "zero3"], "not one of ddp, fsdp, deepspeed-zero2, deepspeed-zero3"),
    ],
)
def test_launch_usage_errors_exit_2(recipe, monkeypatch, args, message):
    for name in ("SLURM_NODEID", "NODE_RANK", "MACHINE_RANK", "MASTER_ADDR"):
        monkeypatch.delenv(name, raising=False)
    result = runner.invoke(app, ["launch", str(recipe), *args, "--dry-run"])
    assert result.exit_code == 2
    assert message in flat(result.output)


def test_launch_deepspeed_without_deepspeed_exits_7(recipe):
    pytest.importorskip("torch")
    import importlib.util

    if importlib.util.find_spec("deepspeed") is not None:
        pytest.skip("DeepSpeed is installed here")
    result = runner.invoke(app, ["launch", str(recipe), "--gpus", "2", "--strategy", "deepspeed-zero2"])
    assert result.exit_code == 7
    assert "pip install deepspeed" in flat(result.output)


def test_exit_code_comes_from_run_json(tmp_path):
    """torchrun exits 1 for any worker failure; run.json written during this launch says what it was."""
    started = time.time()
    (tmp_path / "run.json").write_text(json.dumps({"status": "interrupted"}))
    assert launch.exit_code(1, tmp_path, started) == 6
    (tmp_path / "run.json").write_text(json.dumps({"status": "diverged"}))
    assert launch.exit_code(1, tmp_path, started) == 5
    assert launch.exit_code(0, tmp_path, started) == 0
    (tmp_path / "run.json").write_text(json.dumps({"status": "running"}))
    assert launch.exit_code(1, tmp_path, started) == 1
    assert launch.exit_code(-9, tmp_path, started) == 137
    (tmp_path / "run.json").write_text(json.dumps({"status": "interrupted"}))
    os.utime(tmp_path / "run.json", (started - 3600, started - 3600))  # left by an earlier attempt
    assert launch.exit_code(1, tmp_path, started) == 1


# ---------------------------------------------------------------- the shipped configs


def test_accelerate_configs_load_and_launch_as_intended():
    """Every config parses with accelerate's own loader and turns into the launch environment we mean."""
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser
    from accelerate.utils.launch import prepare_multi_gpu_env

    expected = {
        "ddp": "MULTI_GPU",
        "fsdp": "FSDP",
        "fsdp-qlora": "FSDP",
        "deepspeed-zero2": "DEEPSPEED",
        "deepspeed-zero3": "DEEPSPEED",
    }
    assert {p.stem for p in (CONFIGS / "accelerate").glob("*.yaml")} == set(expected)
    for name, kind in expected.items():
        path = CONFIGS / "accelerate" / f"{name}.yaml"
        text = path.read_text()
        assert (
            text.startswith("#") and "lorafit launch" in text.split("compute_environment")[0]
        )  # header: how to run it
        assert yaml.safe_load(text)["distributed_type"] == kind
        argv = ["--config_file", str(path), "--num_processes", "2", "-m", "lorafit.cli", "train", "x.yaml"]
        args, defaults, mixed_precision_from_config = _validate_launch_command(launch_command_parser().parse_args(argv))
        if kind == "DEEPSPEED":
            # With a DeepSpeed json accelerate rejects these keys in its own config (dataclasses.DeepSpeedPlugin).
            assert not mixed_precision_from_config
            assert set(defaults.deepspeed_config) <= {
                "deepspeed_config_file",
                "deepspeed_multinode_launcher",
                "zero3_init_flag",
            }
            assert defaults.deepspeed_config["deepspeed_multinode_launcher"] == "standard"
            assert (ROOT / defaults.deepspeed_config["deepspeed_config_file"]).is_file()
            continue
        env = prepare_multi_gpu_env(args)
        if name == "fsdp":
            assert env["FSDP_VERSION"] == "2" and env["FSDP_CPU_RAM_EFFICIENT_LOADING"] == "true"
        if name == "fsdp-qlora":  # PEFT's FSDP-QLoRA settings
            assert env["FSDP_VERSION"] == "1"
            assert env["FSDP_USE_ORIG_PARAMS"] == "false"
            assert env["FSDP_CPU_RAM_EFFICIENT_LOADING"] == "true" and env["FSDP_SYNC_MODULE_STATES"] == "true"
        if kind == "FSDP":
            assert env["ACCELERATE_USE_FSDP"] == "true" and env["FSDP_AUTO_WRAP_POLICY"] == "TRANSFORMER_BASED_WRAP"


def test_deepspeed_configs():
    for stage in (2, 3):
        config = json.loads((CONFIGS / "deepspeed" / f"zero{stage}.json").read_text())
        assert config["zero_optimization"]["stage"] == stage
        # Trainer fills "auto" from lorafit's settings, so the json never disagrees with the recipe.
        for key in (
            "gradient_accumulation_steps",
            "gradient_clipping",
            "train_micro_batch_size_per_gpu",
            "train_batch_size",
        ):
            assert config[key] == "auto"
        assert config["bf16"]["enabled"] == config["fp16"]["enabled"] == "auto"
    zero3 = json.loads((CONFIGS / "deepspeed" / "zero3.json").read_text())["zero_optimization"]
    assert zero3["stage3_gather_16bit_weights_on_model_save"] is True  # the final adapter can be gathered


# ---------------------------------------------------------------- lorafit slurm


def sbatch_lines(text: str) -> dict[str, str]:
    return dict(
        line[len("#SBATCH --") :].split("=", 1) if "=" in line else (line[len("#SBATCH --") :], "")
        for line in text.splitlines()
        if line.startswith("#SBATCH --")
    )


def test_slurm_template_is_valid_bash():
    template = CONFIGS / "slurm" / "lorafit.sbatch"
    assert subprocess.run(["bash", "-n", str(template)], capture_output=True).returncode == 0
    lines = sbatch_lines(template.read_text())
    assert lines["signal"] == "USR1@120" and "requeue" in lines and lines["ntasks-per-node"] == "1"


def test_slurm_writes_a_ready_script(recipe, tmp_path):
    out = tmp_path / "job.sbatch"
    result = runner.invoke(
        app,
        [
            "slurm",
            str(recipe),
            "--nodes",
            "4",
            "--gpus-per-node",
            "8",
            "--time",
            "12:00:00",
            "--partition",
            "gpu",
            "--account",
            "proj42",
            "--strategy",
            "fsdp",
            "--set",
            "training.lr=1e-4",
            "--out",
            str(out),
        ],
    )
    assert result.exit_code == 0, result.output
    text = out.read_text()
    assert subprocess.run(["bash", "-n", str(out)], capture_output=True).returncode == 0
    assert os.access(out, os.X_OK)
    assert sbatch_lines(text) == {
        "job-name": "lorafit-tiny",
        "nodes": "4",
        "ntasks-per-node": "1",
        "gpus-per-node": "8",
        "time": "12:00:00",
        "partition": "gpu",
        "account": "proj42",
        "signal": "USR1@120",
        "requeue": "",
        "open-mode": "append",
        "output": "%x-%j.out",
    }
    assert 'MASTER_ADDR=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n1)' in text
    assert f"RECIPE={recipe.resolve()}" in text and "STRATEGY=fsdp" in text and "GPUS_PER_NODE=8" in text
    assert "SET_ARGS=(--set training.lr=1e-4)" in text
    assert f"LORAFIT=({sys.executable} -m lorafit.cli)" in text
    assert "6) echo" in text and 'scontrol requeue "$SLURM_JOB_ID"' in text


def test_slurm_rejects_a_bad_time(recipe, tmp_path):
    result = runner.invoke(
        app,
        [
            "slurm",
            str(recipe),
            "--nodes",
            "1",
            "--gpus-per-node",
            "1",
            "--time",
            "tomorrow",
            "--out",
            str(tmp_path / "j"),
        ],
    )
    assert result.exit_code == 2 and "--time 'tomorrow'" in flat(result.output)


def fake_bin(directory: Path, name: str, body: str) -> None:
    path = directory / name
    path.write_text("#!/bin/bash\n" + body)
    path.chmod(0o755)


@pytest.mark.parametrize(("code", "requeued"), [(6, True), (0, False), (4, False)])
def test_slurm_script_requeues_on_exit_6_only(recipe, tmp_path, code, requeued):
    """The script's own logic with srun / scontrol / lorafit replaced by recorders: node rank from SLURM_NODEID
    inside the task, rendezvous from the node list, requeue exactly when lorafit exits 6."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    log = tmp_path / "calls.log"
    fake_bin(
        bin_dir,
        "scontrol",
        f'echo "scontrol $*" >> {log}\n[ "$1 $2" = "show hostnames" ] && printf "gpu-a\\ngpu-b\\n"\nexit 0\n',
    )
    # srun: run the task once, as node 1 would (SLURM_NODEID is set for the task, not the batch shell)
    fake_bin(
        bin_dir, "srun", f'echo "srun $*" >> {log}\nwhile [[ "$1" == --* ]]; do shift; done\nSLURM_NODEID=1 "$@"\n'
    )
    fake_bin(bin_dir, "fake-lorafit", f'echo "lorafit $*" >> {log}\nexit {code}\n')
    text = launch.slurm_script(
        recipe, ["training.lr=1e-4"], nodes=2, gpus_per_node=4, lorafit=[str(bin_dir / "fake-lorafit")]
    )
    script = tmp_path / "job.sbatch"
    script.write_text(text)
    env = {
        **os.environ,
        "PATH": f"{bin_dir}:{os.environ['PATH']}",
        "SLURM_JOB_ID": "777",
        "SLURM_JOB_NODELIST": "gpu-[a-b]",
        "SLURM_JOB_NUM_NODES": "2",
        "SLURM_NODEID": "0",
    }
    proc = subprocess.run(["bash", str(script)], capture_output=True, text=True, env=env)
    assert proc.returncode == code, proc.stdout + proc.stderr
    calls = log.read_text()
    assert "srun --nodes=2 --ntasks-per-node=1" in calls
    port = 20000 + 777 % 20000
    assert (
        f"lorafit launch {recipe.resolve()} --gpus 4 --nodes 2 --main-address gpu-a --main-port {port} "
        f"--strategy ddp --set training.lr=1e-4 --node-rank 1"
    ) in calls
    assert ("scontrol requeue 777" in calls) == requeued


# ---------------------------------------------------------------- a real single-node Slurm, when installed


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture()
def slurm_cluster(tmp_path):
    """slurmctld + slurmd for this host, auth/none, state in tmp_path (Debian's slurm-wlm; root only).

    Opt-in (LORAFIT_SLURM_TESTS=1): requeue timing under a loaded machine made it fail 1 run in 3."""
    if os.environ.get("LORAFIT_SLURM_TESTS") != "1":
        pytest.skip("real-Slurm test is opt-in: LORAFIT_SLURM_TESTS=1")
    if (
        not all(shutil.which(b) for b in ("slurmctld", "slurmd", "sbatch", "scontrol", "squeue", "scancel"))
        or os.geteuid() != 0
    ):
        pytest.skip("no Slurm here (Debian: apt-get install slurm-wlm) or not root")
    host = socket.gethostname()
    state = tmp_path / "slurm"
    (state / "state").mkdir(parents=True)
    (state / "spool").mkdir()
    conf = state / "slurm.conf"
    conf.write_text(f"""\
ClusterName=lorafittest
SlurmctldHost={host}
SlurmUser=root
SlurmdUser=root
AuthType=auth/none
CredType=cred/none
SlurmctldPort={_free_port()}
SlurmdPort={_free_port()}
StateSaveLocation={state}/state
SlurmdSpoolDir={state}/spool
SlurmctldPidFile={state}/slurmctld.pid
SlurmdPidFile={state}/slurmd.pid
SlurmctldLogFile={state}/slurmctld.log
SlurmdLogFile={state}/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
MpiDefault=none
ReturnToService=2
NodeName={host} CPUs={os.cpu_count()} State=UNKNOWN
PartitionName=test Nodes={host} Default=YES MaxTime=INFINITE State=UP
""")
    env = {**os.environ, "SLURM_CONF": str(conf), "OMP_NUM_THREADS": "1"}
    daemons = [
        subprocess.Popen(
            [d, "-D", *(["-i"] if d == "slurmctld" else []), "-f", str(conf)],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for d in ("slurmctld", "slurmd")
    ]
    try:
        deadline = time.time() + 30
        while time.time() < deadline:
            out = subprocess.run(["sinfo", "-h", "-o", "%t"], capture_output=True, text=True, env=env).stdout.strip()
            if out == "idle":
                break
            time.sleep(0.5)
        else:
            pytest.skip(f"the test Slurm did not come up (sinfo: {out!r}); see {state}")
        yield env
    finally:
        for d in daemons:
            d.terminate()
            try:
                d.wait(timeout=15)
            except subprocess.TimeoutExpired:
                d.kill()


def _job_state(env, job: str) -> tuple[str, int]:
    out = subprocess.run(["scontrol", "show", "job", job], capture_output=True, text=True, env=env).stdout
    fields = dict(item.split("=", 1) for item in out.split() if "=" in item)
    return fields.get("JobState", ""), int(fields.get("Restarts", "0"))


def test_sbatch_script_runs_under_slurm_and_requeues_after_usr1(slurm_cluster, tmp_path, tiny_model_dir):
    """The generated script under a real (single-node) Slurm: SIGUSR1 to the job steps (what --signal=USR1@120
    delivers), a complete checkpoint, exit 6, `scontrol requeue`, and the requeued job resumes and finishes."""
    env = slurm_cluster
    data_file = write_jsonl(tmp_path / "d.jsonl", chat_records(32))
    recipe = tmp_path / "job.yaml"
    run_dir = tmp_path / "run"
    recipe.write_text(tiny_recipe_text(tiny_model_dir, data_file, run_dir, training={"max_steps": 12, "batch_size": 2}))
    text = launch.slurm_script(recipe, nodes=1, gpus_per_node=2, time_limit="10")
    text = "\n".join(
        line for line in text.splitlines() if not line.startswith("#SBATCH --gpus-per-node")
    )  # no GPUs here
    script = tmp_path / "job.sbatch"
    script.write_text(text + "\n")
    job = (
        subprocess.run(
            ["sbatch", "--parsable", "--chdir", str(tmp_path), str(script)],
            capture_output=True,
            text=True,
            env=env,
            check=True,
        )
        .stdout.strip()
        .split(";")[0]
    )
    metrics = run_dir / "metrics.jsonl"
    deadline = time.time() + 300
    while time.time() < deadline and not (metrics.exists() and '"step": 3,' in metrics.read_text()):
        time.sleep(0.1)
    subprocess.run(["scancel", "--signal=USR1", job], env=env, check=True)  # the job steps, not the batch shell
    deadline = time.time() + 300
    while time.time() < deadline:
        job_state, restarts = _job_state(env, job)
        if restarts >= 1 and job_state == "PENDING":
            subprocess.run(
                ["scontrol", "update", f"JobId={job}", "StartTime=now"], env=env
            )  # skip Slurm's requeue delay
        if job_state in ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT") and restarts >= 1:
            break
        time.sleep(0.5)
    log = (tmp_path / f"lorafit-job-{job}.out").read_text()
    assert job_state == "COMPLETED", log[-3000:]
    assert "requeueing job" in log and "restart 1" in log and "resuming from" in log
    record = json.loads((run_dir / "run.json").read_text())
    assert record["status"] == "finished" and record["train"]["steps"] == 12 and record["world_size"] == 2


def test_help_for_the_launch_commands():
    for command, flag in (("launch", "--dry-run"), ("slurm", "--gpus-per-node")):
        result = runner.invoke(app, [command, "--help"])
        assert result.exit_code == 0 and flag in result.output
    assert "--no-resume" in runner.invoke(app, ["train", "--help"]).output


def test_launch_exits_with_the_code_rank_0_reported(tmp_path):
    """torchrun turns a worker's exit 3 (bad data) into 1; lorafit launch exits 3, as `lorafit train` would."""
    code = (
        "import sys; from lorafit.cli import guarded; from lorafit.core.errors import DataError\n"
        "def bad(): raise DataError('bad record')\n"
        "try:\n    guarded(bad)\nexcept BaseException:\n    sys.exit(1)  # as torchrun reports any worker failure"
    )
    got = launch.execute(
        [sys.executable, "-c", code], tmp_path, console=type("C", (), {"print": lambda *a, **k: None})()
    )
    assert got == 3
    assert launch.exit_code(1, tmp_path, time.time(), reported=4) == 4
    assert launch.exit_code(0, tmp_path, time.time(), reported=4) == 0  # a job that succeeded succeeded


def test_slurm_values_are_text_not_regex(tmp_path):
    script = launch.slurm_script(tmp_path / "r.yaml", nodes=1, gpus_per_node=2, job_name=r"q\d\1")
    assert r"#SBATCH --job-name=q\d\1" in script
