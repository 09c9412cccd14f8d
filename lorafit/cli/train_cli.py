"""The commands that train: `train` in this process, `launch` on several GPUs or nodes, `slurm` for a cluster."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import List, Optional

import typer

from lorafit.cli.common import RecipeArgument, SetOption, console, err_console, guarded, read_recipe, state


def train(
    recipe: Path = RecipeArgument,
    set_: Optional[List[str]] = SetOption,
    resume: bool = typer.Option(
        True,
        "--resume/--no-resume",
        help="Resume from output.dir's newest complete checkpoint (default); --no-resume starts fresh in a new <dir>-N.",
    ),
    force: bool = typer.Option(
        False, "--force", help="Resume even though the recipe or data changed since the checkpoint."
    ),
) -> None:
    """Fine-tune the recipe's model and write the run directory (also under torchrun / accelerate launch)."""

    def body():
        from lorafit import runs
        from lorafit.core import dist
        from lorafit.train import pipeline as training

        r = read_recipe(recipe, set_)
        try:
            result = training.run(r, console=console, quiet=state["quiet"], resume=resume, force=force)
        except BaseException:
            dist.shutdown(failed=True)
            raise
        dist.shutdown()
        if not dist.is_main():
            return  # rank 0 reports for the whole job
        final = result.record
        t = final["train"]
        ev = final.get("eval", {})
        worse = final.get("status") == runs.WORSE_THAN_BASE
        first, last = t.get("first_logged_loss"), t.get("last_logged_loss")
        console.print(
            ("[bold yellow]worse than base[/]" if worse else "[bold green]done[/]")
            + f" {result.run_dir or r.run_dir}: {t['steps']} steps, {t['tokens']} tokens in {t['seconds']} s "
            f"({t['tokens_per_s']} tok/s), peak {t['peak_memory_mb']:.0f} MB"
            + (f", train loss {first:.4f} -> {last:.4f}" if first is not None and last is not None else "")
            + (f", held-out loss {ev['loss_before']} -> {ev['loss_after']}" if ev.get("loss_after") is not None else "")
            + (
                f"; over-fitting from step {final['overfit_from_step']}"
                if final.get("overfit_from_step") is not None
                else ""
            ),
            highlight=False,
        )

    guarded(body)


def launch(
    recipe: Path = RecipeArgument,
    gpus: int = typer.Option(..., "--gpus", help="Training processes (GPUs) per node."),
    nodes: int = typer.Option(1, "--nodes", help="Machines; each runs this command with its own --node-rank."),
    strategy: str = typer.Option(
        "ddp", "--strategy", help="ddp | fsdp | deepspeed-zero2 | deepspeed-zero3 (configs/accelerate/)."
    ),
    node_rank: Optional[int] = typer.Option(
        None, "--node-rank", help="This machine's rank, 0..nodes-1 (default: SLURM_NODEID)."
    ),
    main_address: Optional[str] = typer.Option(
        None, "--main-address", help="Host of node 0 when --nodes > 1 (default: MASTER_ADDR)."
    ),
    main_port: Optional[int] = typer.Option(
        None, "--main-port", help="Rendezvous port on node 0 (default: 29500; one node: any free port)."
    ),
    config: Optional[Path] = typer.Option(
        None, "--config", help="Your own accelerate config instead of the shipped one."
    ),
    force: bool = typer.Option(
        False, "--force", help="Passed to lorafit train: resume even though the recipe changed."
    ),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print the command and exit."),
    set_: Optional[List[str]] = SetOption,
) -> None:
    """Train on several GPUs / nodes: builds and runs the accelerate launch command (exit codes as lorafit train)."""

    def body():
        import shlex

        from lorafit.cli import launching

        r = read_recipe(recipe, set_)  # fail on a bad recipe before starting N processes
        command = launching.build_command(
            recipe,
            set_ or [],
            gpus=gpus,
            nodes=nodes,
            node_rank=node_rank,
            main_address=main_address,
            main_port=main_port,
            strategy=strategy,
            qlora=r.quantization.load_in_4bit,
            config=config,
            train_args=["--force"] if force else [],
            cli_args=[flag for flag, on in (("--debug", state["debug"]), ("--quiet", state["quiet"])) if on],
        )
        if dry_run:
            sys.stdout.write(shlex.join(command) + "\n")
            return
        launching.check_environment(strategy, gpus, err_console)
        err_console.print(f"[bold]launch[/] {shlex.join(command)}", highlight=False, soft_wrap=True)
        code = launching.execute(command, r.run_dir, err_console)
        if code:
            raise typer.Exit(code)

    guarded(body)


def slurm(
    recipe: Path = RecipeArgument,
    nodes: int = typer.Option(..., "--nodes", help="Nodes to allocate."),
    gpus_per_node: int = typer.Option(..., "--gpus-per-node", help="GPUs (training processes) per node."),
    strategy: str = typer.Option("ddp", "--strategy", help="ddp | fsdp | deepspeed-zero2 | deepspeed-zero3."),
    time_limit: Optional[str] = typer.Option(
        None, "--time", help="Slurm time limit, e.g. 24:00:00 (default: the template's)."
    ),
    partition: Optional[str] = typer.Option(None, "--partition", help="Slurm partition."),
    account: Optional[str] = typer.Option(None, "--account", help="Slurm account."),
    job_name: Optional[str] = typer.Option(None, "--job-name", help="Slurm job name (default lorafit-RECIPE)."),
    signal_seconds: int = typer.Option(
        120, "--signal-seconds", min=1, help="SIGUSR1 this many seconds before the time limit."
    ),
    out: Optional[Path] = typer.Option(None, "--out", help="Where to write the script (default RECIPE-NAME.sbatch)."),
    set_: Optional[List[str]] = SetOption,
) -> None:
    """Write an sbatch script: one task per node, SIGUSR1 before the time limit, requeue on exit code 6."""

    def body():
        from lorafit.cli import launching

        read_recipe(recipe, set_)
        text = launching.slurm_script(
            recipe,
            set_ or [],
            nodes=nodes,
            gpus_per_node=gpus_per_node,
            strategy=strategy,
            time_limit=time_limit,
            partition=partition,
            account=account,
            job_name=job_name,
            signal_seconds=signal_seconds,
        )
        target = out or Path(f"{recipe.stem}.sbatch")
        from lorafit.runs import atomic_write_text

        atomic_write_text(target, text)
        target.chmod(0o755)
        console.print(f"wrote {target}; submit it with: sbatch {target}", highlight=False)

    guarded(body)
