"""The command line itself: help for every command, instant start, exit codes."""

import subprocess
import sys

import pytest
from typer.testing import CliRunner

from lorafit.cli import app

runner = CliRunner()
COMMANDS = [c.name or c.callback.__name__ for c in app.registered_commands]


def test_help_lists_every_command():
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    for name in COMMANDS:
        assert name in result.output


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_has_help(command):
    result = runner.invoke(app, [command, "--help"])
    assert result.exit_code == 0, result.output
    assert "Usage" in result.output


def test_cli_import_does_not_import_torch():
    code = "import sys, lorafit.cli, lorafit.recipe; heavy = [m for m in ('torch', 'transformers', 'trl', 'peft', 'lm_eval') if m in sys.modules]; print(heavy)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "[]"


def test_help_does_not_import_torch():
    code = "import sys; sys.argv=['lorafit','--help']\nfrom lorafit.cli import app\ntry:\n    app()\nexcept SystemExit:\n    pass\nprint('torch' in sys.modules or 'lm_eval' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip().endswith("False")


def test_missing_recipe_exits_7_without_traceback(tmp_path):
    result = runner.invoke(app, ["validate", str(tmp_path / "nope.yaml")])
    assert result.exit_code == 7
    assert "recipe not found" in result.output
    assert "Traceback" not in result.output


def test_schema_prints_json_schema():
    import json

    result = runner.invoke(app, ["schema"])
    assert result.exit_code == 0
    schema = json.loads(result.output)
    assert "training" in schema["properties"]
    assert schema["$defs"]["TrainingSection"]["properties"]["lr"]["description"]


def test_validate_end_to_end(tiny_recipe):
    result = runner.invoke(app, ["validate", str(tiny_recipe)])
    assert result.exit_code == 0, result.output
    assert "recipe ok" in result.output and "data ok" in result.output
    assert "memory plan" in result.output and "largest micro-batch" in result.output
    assert '"train_rows": 36' in result.output


def test_validate_bad_data_exits_3(tiny_recipe, tmp_path):
    (tmp_path / "train.jsonl").write_text(
        '{"messages": [{"role": "user", "content": "x"}, {"role": "robot", "content": "y"}]}\n'
    )
    result = runner.invoke(app, ["validate", str(tiny_recipe)])
    assert result.exit_code == 3
    assert "train.jsonl:1" in result.output and "robot" in result.output


def test_plan_command(tiny_recipe):
    result = runner.invoke(app, ["plan", str(tiny_recipe)])
    assert result.exit_code == 0, result.output
    for word in ("weights", "activations", "optimizer", "full", "lora", "qlora", "fits"):
        assert word in result.output


def test_data_command(tiny_recipe):
    result = runner.invoke(app, ["data", str(tiny_recipe), "-n", "1"])
    assert result.exit_code == 0, result.output
    assert "assistant" in result.output


def test_guarded_maps_interrupts_and_accelerator_oom():
    """Ctrl-C outside training is the shell's 130; torch's OutOfMemoryError (matched by name, no torch import) is 4."""
    import typer

    from lorafit.cli import guarded

    class OutOfMemoryError(RuntimeError):
        pass

    def oom():
        raise OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    def interrupted():
        raise KeyboardInterrupt

    for body, code in ((oom, 4), (interrupted, 130)):
        with pytest.raises(typer.Exit) as exc:
            guarded(body)
        assert exc.value.exit_code == code
    with pytest.raises(ValueError):
        guarded(lambda: (_ for _ in ()).throw(ValueError("a bug")))  # a real bug keeps its traceback (exit 1)


def test_error_text_with_brackets_is_printed_as_is(tmp_path):
    missing = tmp_path / "[weird]" / "r.yaml"
    result = runner.invoke(app, ["validate", str(missing)])
    assert result.exit_code == 7 and "[weird]" in result.output


def test_cpu_allocator_failure_is_out_of_memory():
    """torch's CPU allocator raises a plain RuntimeError; it is exit 4 like any out-of-memory."""
    import typer

    from lorafit.cli import guarded
    from lorafit.core.errors import is_out_of_memory

    cpu = RuntimeError(
        "[enforce fail at alloc_cpu.cpp:117] data. DefaultCPUAllocator: can't allocate memory: you tried to allocate 9 GB"
    )
    assert (
        is_out_of_memory(cpu)
        and is_out_of_memory(MemoryError())
        and not is_out_of_memory(RuntimeError("shape mismatch"))
    )

    def body():
        raise cpu

    with pytest.raises(typer.Exit) as exc:
        guarded(body)
    assert exc.value.exit_code == 4
