"""Assemble TRL's SFTTrainer from a recipe, run it, and write the run directory."""

from __future__ import annotations

import math
import os
import platform
import shutil
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lorafit import dist, health, models, plots, registry, runs, tracking
from lorafit.errors import Diverged, Interrupted, OutOfMemory, RecipeError, is_out_of_memory

if TYPE_CHECKING:
    from lorafit.recipe import Recipe


def versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for pkg in ("lorafit", "torch", "transformers", "peft", "trl", "accelerate", "datasets", "bitsandbytes"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            pass
    return out


def git_sha() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def peak_memory_mb() -> float:
    """Peak GPU memory allocated on CUDA, peak resident set size of this process on CPU.

    On Linux this is VmHWM, the peak of this program's own address space: ru_maxrss would also count
    the parent's memory at fork (it survives exec), so a run launched from a big process reads wrong."""
    import torch

    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**20
    try:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:")) / 1024
    except (OSError, StopIteration):
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux, bytes on macOS


@dataclass
class TokenCounter:
    """Counts the non-padding tokens of every training batch that reaches the model (not eval batches)."""

    tokens: int = 0

    def attach(self, model) -> None:
        model.register_forward_pre_hook(self._hook, with_kwargs=True)

    def _hook(self, module, args, kwargs):
        if module.training:
            mask = kwargs.get("attention_mask")
            ids = kwargs.get("input_ids", args[0] if args else None)
            self.tokens += int(mask.sum()) if mask is not None else int(ids.numel())


def _trainer_class():
    """SFTTrainer with two changes, both switchable from the recipe.

    Length-grouped batches are reseeded per epoch, so a resumed run sees the same batches:
    transformers' LengthGroupedSampler draws from the global RNG, whose state at epoch start differs
    between a fresh and a resumed process. And the loss takes the path training.lm_head names:
    TRL's chunked head, transformers' plain one (~30% cheaper per step than chunked on CPU), or the
    plain one scoring trained positions only (lorafit.loss)."""
    import torch
    from transformers import Trainer
    from transformers.trainer_pt_utils import LengthGroupedSampler
    from trl import SFTTrainer

    class EpochSeededLengthSampler(LengthGroupedSampler):
        def __init__(self, batch_size: int, lengths: list[int], seed: int):
            super().__init__(batch_size, lengths=lengths, generator=torch.Generator())
            self.seed = seed
            self.set_epoch(0)

        def set_epoch(self, epoch: int) -> None:
            self.generator.manual_seed(self.seed + epoch)

    class LorafitTrainer(SFTTrainer):
        lm_head = "chunked"  # TRL's own path until configure_loss says otherwise
        trained_positions = None

        def configure_loss(self, mode: str) -> None:
            from lorafit.loss import TrainedPositionLoss

            self.lm_head = mode
            if mode == "trained":
                self.trained_positions = TrainedPositionLoss(self.model)
                self.compute_loss_func = self.trained_positions  # Trainer pops the labels and calls it on the outputs

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            if self.lm_head == "chunked":
                return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
            inputs["use_cache"] = False  # a KV cache is dead weight in a training forward
            if self.lm_head == "full":  # transformers' own path: logits everywhere, token-averaged cross-entropy
                return Trainer.compute_loss(self, model, inputs, return_outputs, num_items_in_batch)
            with self.trained_positions.selecting(inputs):
                return Trainer.compute_loss(self, model, inputs, return_outputs, num_items_in_batch)

        def _get_train_sampler(self, train_dataset=None):
            dataset = train_dataset if train_dataset is not None else self.train_dataset
            if self.args.train_sampling_strategy != "group_by_length" or "input_ids" not in dataset.column_names:
                return super()._get_train_sampler(train_dataset)
            lengths = [len(ids) for ids in dataset["input_ids"]]
            # Group by the global batch: under DDP each rank takes every world_size-th micro-batch of this one
            # order, so N ranks x batch b see the same examples per step as 1 process x batch N*b.
            batch = self.args.train_batch_size * self.args.gradient_accumulation_steps * self.args.world_size
            return EpochSeededLengthSampler(batch, lengths, self.args.data_seed or self.args.seed)

    return LorafitTrainer


def _callbacks(run_dir: Path, counter: TokenCounter, console, quiet: bool, recipe: Recipe, vocab_size: int | None):
    from transformers import TrainerCallback

    keep = recipe.training.keep_checkpoints

    class RunCallback(TrainerCallback):
        """metrics.jsonl, progress, the divergence guards (NaN, loss rise, collapse), the over-fitting warning and
        graceful signals, in one place. Trainer logs the same loss and gradient norm on every rank, so every rank
        stops at the same step."""

        def __init__(self):
            self.watch = health.LossWatch(recipe.training.divergence_factor, vocab_size)
            self.gap = health.EvalGap(recipe.training.overfit_patience)
            logged = runs.read_metrics(run_dir)  # a resumed run: what it logged up to its checkpoint
            self.gap.replay(logged)
            for row in logged:
                if isinstance(row.get("loss"), (int, float)) and isinstance(row.get("step"), int):
                    self.watch.observe(row["step"], row["loss"], row.get("grad_norm"))
            self.overfit_from_step = self.gap.overfit_from()
            self.divergence: health.Divergence | None = None
            self.first_loss: float | None = next((row["loss"] for row in logged if isinstance(row.get("loss"), (int, float))), None)
            self.start = time.perf_counter()
            self.first_step_at = None
            self.tokens_at_first_step = 0
            self.diverged_at: int | None = None
            self.signal: int | None = None
            self.progress = None
            self.task = None
            self.last_loss = float("nan")
            self.at_end: tuple[int, float] | None = None

        def on_train_begin(self, args, state, control, **kw):
            if console.is_terminal and not quiet:
                from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

                self.progress = Progress(
                    TextColumn("[bold]train"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                    TextColumn("{task.fields[info]}"), TimeRemainingColumn(), console=console,
                )
                self.progress.start()
                self.task = self.progress.add_task("train", total=state.max_steps, info="")

        def on_step_end(self, args, state, control, **kw):
            if self.first_step_at is None:
                self.first_step_at = time.perf_counter()
                self.first_step_wall = time.time()
                self.tokens_at_first_step = counter.tokens
            if self.progress is not None:
                self.progress.update(self.task, completed=state.global_step)
            if dist.is_distributed():  # all ranks stop after the same step, whichever of them got the signal
                self.signal = dist.all_max(self.signal or 0) or None
            if self.signal is not None:  # finish this step, write a resumable checkpoint, stop
                control.should_save = True
                control.should_training_stop = True

        def on_save(self, args, state, control, **kw):
            # Every rank has written its share (rng_state_<rank>.pth) before rank 0 marks the checkpoint
            # complete, and no rank goes on (or exits) before the marker is there.
            tokens = self.totals()[0]
            dist.barrier()
            folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
            if dist.is_main() and folder.is_dir():
                runs.atomic_write_json(folder / runs.COMPLETE, {"step": state.global_step, "tokens": tokens})
                _plot(run_dir, console)
                runs.rotate_checkpoints(Path(args.output_dir), keep)
            dist.barrier()

        def totals(self) -> tuple[int, float]:
            """Tokens trained on so far, and tokens/s after the first step (which pays one-off warm-up costs),
            both summed over all ranks: the job's throughput. A collective: every rank calls it at the same point."""
            started = self.first_step_at is not None
            since_first = counter.tokens - self.tokens_at_first_step if started else 0
            tokens, since_first = dist.all_sum([counter.tokens, since_first])
            elapsed = time.perf_counter() - self.first_step_at if started else 0.0
            return int(tokens), (since_first / elapsed if elapsed > 0 else 0.0)

        def tokens_per_s(self) -> float:
            return self.totals()[1]

        def on_log(self, args, state, control, logs=None, **kw):
            logs = dict(logs or {})
            tokens, rate = self.totals()  # Trainer logs on every rank at the same steps, so this collective is safe
            record = {"step": state.global_step, "tokens": tokens, "elapsed_s": round(time.perf_counter() - self.start, 3)}
            record.update({k: v for k, v in logs.items() if isinstance(v, (int, float))})
            train_window = None
            if isinstance(logs.get("loss"), (int, float)):
                self.gap.train_loss(logs["loss"])
                self.first_loss = logs["loss"] if self.first_loss is None else self.first_loss
            if isinstance(logs.get("eval_loss"), (int, float)):
                train_window = self.gap.evaluation(state.global_step, logs["eval_loss"])
                if train_window is not None:
                    record["train_loss_window"] = round(train_window, 4)  # the train side of this evaluation's gap
            if dist.is_main():
                runs.append_jsonl(run_dir / runs.METRICS, record)
            # fp16's loss scaler reports an inf gradient norm on the steps it skips (an overflow, routine): not a divergence
            for key in ("loss", "eval_loss") if args.fp16 else ("loss", "grad_norm", "eval_loss"):
                value = logs.get(key)
                if isinstance(value, (int, float)) and not math.isfinite(value):
                    self.diverged_at = state.global_step
                    control.should_training_stop = True
                    control.should_save = False  # never checkpoint a diverged model
            if isinstance(logs.get("loss"), (int, float)) and self.diverged_at is None:
                found = self.watch.observe(state.global_step, logs["loss"], logs.get("grad_norm"))
                if found is not None:
                    self.divergence, self.diverged_at = found, found.step
                    control.should_training_stop = True
                    control.should_save = False
            if "loss" in logs:
                self.last_loss = logs["loss"]
                info = f"loss {logs['loss']:.4f}  {rate:.0f} tok/s"
                if self.progress is not None:
                    self.progress.update(self.task, info=info)
                elif not quiet:
                    console.print(f"step {state.global_step}/{state.max_steps}  {info}", highlight=False)
            if "eval_loss" in logs and not quiet:
                console.print(f"step {state.global_step}: held-out loss {logs['eval_loss']:.4f}"
                              + (f", train loss {train_window:.4f} (since the evaluation before)" if train_window is not None else ""),
                              highlight=False)
            start = self.gap.overfit_from() if train_window is not None else None
            if start is not None and self.overfit_from_step is None:
                self.overfit_from_step = start
                console.print(f"[yellow]warning[/] {self.gap.warning(start)}", highlight=False, soft_wrap=True)
                _record(run_dir, overfit_from_step=start)

        def on_train_end(self, args, state, control, **kw):
            self.at_end = self.totals()  # before the final held-out evaluation, which is not training throughput
            if self.progress is not None:
                self.progress.stop()

    return RunCallback()


def _sft_config(recipe: Recipe, run_dir: Path, dtype_name: str, device_kind: str, has_eval: bool, checkpointing: bool):
    from trl import SFTConfig

    t = recipe.training
    eval_strategy = "steps" if (has_eval and t.eval_every) else "no"
    return SFTConfig(
        output_dir=str(run_dir / runs.CHECKPOINTS),
        per_device_train_batch_size=t.batch_size,
        per_device_eval_batch_size=t.batch_size,
        gradient_accumulation_steps=t.grad_accum,
        learning_rate=t.lr,
        num_train_epochs=t.epochs,
        max_steps=t.max_steps,
        lr_scheduler_type=t.scheduler,
        warmup_steps=t.warmup_ratio,
        weight_decay=t.weight_decay,
        max_grad_norm=t.max_grad_norm,
        optim=t.optimizer,
        seed=t.seed,
        data_seed=t.seed,
        bf16=dtype_name == "bfloat16",
        fp16=dtype_name == "float16",
        use_cpu=device_kind == "cpu",
        gradient_checkpointing=checkpointing,
        gradient_checkpointing_kwargs={"use_reentrant": False} if checkpointing else None,
        train_sampling_strategy="group_by_length" if t.group_by_length else "random",
        logging_steps=t.logging_steps,
        logging_first_step=True,
        logging_nan_inf_filter=False,  # transformers would log a NaN/inf loss as the running mean: the guard must see it
        eval_strategy=eval_strategy,
        eval_steps=t.eval_every or None,
        save_strategy="steps" if t.save_every else "no",
        save_steps=t.save_every or 500,
        save_total_limit=None,  # lorafit rotates, only after the newest checkpoint is marked complete
        save_only_model=False,
        **tracking.sft_kwargs(recipe, run_dir),  # report_to, run_name, project
        max_length=t.max_length,
        packing=recipe.data.packing,
        disable_tqdm=True,
        dataloader_num_workers=0,
        remove_unused_columns=True,
        prediction_loss_only=True,  # held-out loss only: no eval logits are gathered and kept
    )


RESUME_SECTIONS = ("model", "adapter", "quantization", "data")
# The training settings that make it the same run: data order and split (seed), truncation, the optimisation.
# Speed, memory and bookkeeping settings may change (auto_batch_size itself changes batch_size and grad_accum).
RESUME_TRAINING = ("seed", "max_length", "lr", "scheduler", "warmup_ratio", "epochs", "max_steps", "optimizer",
                   "weight_decay", "max_grad_norm", "group_by_length", "precision")


def _resume_point(run_dir: Path, recipe: Recipe, force: bool = False, warn=None) -> Path | None:
    """The checkpoint to resume from, after checking the recipe still describes the same run
    (with `force`, a changed recipe is only reported through `warn`)."""
    checkpoint = runs.latest_checkpoint(run_dir)
    if checkpoint is None or not (run_dir / runs.RECIPE).is_file():
        return None
    from lorafit.recipe import recipe_from_yaml_text

    before = recipe_from_yaml_text(runs.read_recipe_text(run_dir / runs.RECIPE), str(run_dir / runs.RECIPE)).model_dump(mode="json")
    now = recipe.model_dump(mode="json")
    changed = [
        f"{section}.{key}: {before[section].get(key)!r} -> {value!r}"
        for section in RESUME_SECTIONS
        for key, value in now[section].items()
        if before[section].get(key) != value
    ] + [
        f"training.{key}: {before['training'].get(key)!r} -> {now['training'][key]!r}"
        for key in RESUME_TRAINING
        if before["training"].get(key) != now["training"][key]
    ]
    if changed and force:
        if warn is not None:
            warn(f"resuming {checkpoint} although the recipe changed (--force): " + "; ".join(changed))
    elif changed:
        raise RecipeError(
            f"{run_dir} holds a checkpoint of a different run; changed: " + "; ".join(changed),
            f"restore those settings to resume, start fresh with --no-resume (a new directory), or resume anyway with --force",
        )
    return checkpoint


def _holds_a_run(path: Path) -> bool:
    return any((path / name).exists() for name in (runs.RECIPE, runs.RUN_JSON, runs.ADAPTER, runs.CHECKPOINTS))


def fresh_run_dir(run_dir: Path) -> Path:
    """`--no-resume`: run_dir itself if it holds no earlier run, else the first free `<run_dir>-N` (N >= 2).

    Only reads the filesystem, so every rank of a distributed job computes the same answer (before any creates it)."""
    if not _holds_a_run(run_dir):
        return run_dir
    n = 2
    while True:
        candidate = run_dir.with_name(f"{run_dir.name}-{n}")
        if not candidate.exists() or (candidate.is_dir() and not any(candidate.iterdir())):
            return candidate
        n += 1


def _check_run_dir(run_dir: Path) -> None:
    if (run_dir / runs.ADAPTER).exists():
        raise RecipeError(
            f"{run_dir} already holds a trained adapter; lorafit never overwrites a run silently",
            f"choose another directory: --set output.dir={run_dir}-2, or delete {run_dir}",
        )
    if not dist.is_main():
        return  # rank 0 creates and probes the directory; the others never write to it
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        probe = run_dir / ".write-test"
        probe.write_text("")
        probe.unlink()
    except OSError as exc:
        raise RecipeError(f"output.dir {run_dir} is not writable: {exc.strerror}", "choose a directory you can write to") from None


class _Signals:
    """SIGUSR1, SIGINT and SIGTERM for all of `lorafit train`.

    Before the first step only SIGUSR1 is taken (Slurm's pre-timeout warning, and what `lorafit launch`
    forwards): it is recorded, and every rank stops together before training starts (check(), exit 6).
    Ctrl-C and kill keep their defaults there, so they stop a long model load at once. Once training runs,
    all three are recorded for the callback: the step in flight finishes and a resumable checkpoint is
    written. Except SIGTERM under `lorafit launch`: there it only ever comes from torchrun tearing down a
    job whose other rank failed, so it keeps its default, and a failing job is not reported as resumable
    (and requeued by Slurm, forever)."""

    def __init__(self):
        self.callback = None
        self.received: int | None = None
        self.previous: dict = {}

    def __enter__(self) -> _Signals:
        self._take(getattr(signal, "SIGUSR1", None))
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)
        self.previous = {}

    def _take(self, sig) -> None:
        if sig is not None and sig not in self.previous:
            self.previous[sig] = signal.signal(sig, self._handle)

    def _handle(self, signum, frame) -> None:
        if self.callback is None:
            self.received = signum
        else:
            self.callback.signal = signum

    def check(self) -> None:
        """Before training: stop if this rank, or any rank, was signalled (a collective under torchrun)."""
        received = dist.all_max(self.received or 0) if dist.is_distributed() else self.received
        if received:
            raise Interrupted(f"stopped by signal {signal.Signals(received).name} before training started; nothing was trained",
                              "run the same command again")

    def training(self, callback) -> None:
        """From here a signal ends the run after the step in flight, with a checkpoint."""
        self.callback = callback
        self._take(signal.SIGINT)
        if not os.environ.get(dist.EXIT_FILE_ENV):
            self._take(signal.SIGTERM)


def model_card(recipe: Recipe, base_model: str, metrics: dict) -> str:
    import yaml

    front = {
        "base_model": base_model,
        "library_name": "peft",
        "tags": ["lorafit", recipe.adapter.method, "sft"],
        "pipeline_tag": "text-generation",
    }
    lines = [
        "---",
        yaml.safe_dump(front, sort_keys=False).strip(),
        "---",
        "",
        f"# {recipe.adapter.method} adapter for {base_model}",
        "",
        "Trained with [lorafit](https://pypi.org/project/lorafit/) (TRL SFTTrainer + PEFT).",
        "",
        "| setting | value |",
        "|---|---|",
        f"| method | {recipe.adapter.method} (r={recipe.adapter.r}, alpha={recipe.adapter.alpha}) |",
        f"| targets | {recipe.adapter.target_modules} |",
        f"| learning rate | {recipe.training.lr} |",
        f"| data | {recipe.data.train} |",
    ]
    lines += [f"| {k} | {v} |" for k, v in metrics.items()]
    lines += ["", "```python", "from peft import AutoPeftModelForCausalLM", 'model = AutoPeftModelForCausalLM.from_pretrained("PATH/TO/adapter")', "```", ""]
    return "\n".join(lines)


def save_adapter(model, tokenizer, recipe: Recipe, run_dir: Path, base_model: str, metrics: dict, state_dict=None) -> Path:
    """state_dict: the full weights gathered from FSDP / DeepSpeed ZeRO shards (None: read them from `model`)."""
    from lorafit import adapters

    target = run_dir / runs.ADAPTER
    with runs.atomic_dir(target, owned=True) as tmp:
        adapters.save(model, tmp, state_dict)  # pissa/olora/corda: converted to a LoRA for the untouched base
        tokenizer.save_pretrained(tmp)
        (tmp / "README.md").write_text(model_card(recipe, base_model, metrics))
    return target


@dataclass
class Result:
    record: dict  # the final run.json
    model: Any  # the trained PEFT model, still in memory (tests compare it with the saved adapter)
    run_dir: Path | None = None  # where the run went (--no-resume may choose a new directory)


def run(recipe: Recipe, *, console, quiet: bool = False, resume: bool = True, force: bool = False, _halvings: tuple = ()) -> Result:
    """Train as the recipe says and write the run directory.

    resume=False starts fresh, in `<dir>-N` when output.dir holds an earlier run; force=True resumes even
    though the recipe changed. Under torchrun / accelerate launch every rank runs this: all of them train,
    only rank 0 writes files and prints, and token counts and tokens/s in run.json are summed over ranks."""
    with _Signals() as signals:
        try:
            return _run(recipe, signals, console=console, quiet=quiet, resume=resume, force=force, _halvings=_halvings)
        except KeyboardInterrupt as exc:
            raise Interrupted(str(exc) or "interrupted (Ctrl-C) before training started; nothing was trained", "run the same command again") from None


def _run(recipe: Recipe, signals: _Signals, *, console, quiet: bool, resume: bool, force: bool, _halvings: tuple) -> Result:
    from lorafit import device, models
    from lorafit.recipe import check_hardware

    device.configure_memory(recipe.training.keep_freed_memory, recipe.training.huge_pages)  # before torch is imported
    models.quiet_libraries()
    if not dist.is_main():
        console, quiet = _silent_console(), True
    check_hardware(recipe)
    tracking.check(recipe)  # a tracker that cannot work fails now, in one line, not minutes into the run
    if not resume:
        fresh = fresh_run_dir(recipe.run_dir)
        if fresh != recipe.run_dir:
            console.print(f"{recipe.run_dir} holds an earlier run (--no-resume): starting fresh in {fresh}", highlight=False, soft_wrap=True)
            recipe = recipe.model_copy(update={"output": recipe.output.model_copy(update={"dir": str(fresh)})})
        dist.barrier()  # every rank has chosen the directory before rank 0 creates it
    run_dir = recipe.run_dir
    _check_run_dir(run_dir)
    resume_from = _resume_point(run_dir, recipe, force=force, warn=lambda m: console.print(f"[yellow]warning[/] {m}", highlight=False, soft_wrap=True))
    with _tracked(recipe, run_dir, console):
        try:
            return _train(recipe, run_dir, resume_from, signals, console=console, quiet=quiet, force=force, _halvings=_halvings)
        except (KeyboardInterrupt, Interrupted):
            if runs.read_run_json(run_dir).get("status") == "running":  # stopped during setup
                _record(run_dir, status="interrupted")
            raise


@contextmanager
def _tracked(recipe: Recipe, run_dir: Path, console):
    """Around one training run: the trackers' environment, the run registry's row, and the final loss.png."""
    warn = lambda m: console.print(f"[yellow]warning[/] {m}", highlight=False)  # noqa: E731
    restore = tracking.set_environment(recipe, run_dir)
    try:
        if dist.is_main():
            with registry.recording(recipe, run_dir, warn=warn):
                yield
        else:
            yield
    finally:
        restore()
        if dist.is_main():
            _plot(run_dir, console)


def _plot(run_dir: Path, console) -> None:
    """RUN_DIR/loss.png; a plotting problem is a warning, never the end of a run."""
    try:
        plots.write_loss_png(run_dir)
    except Exception as exc:  # noqa: BLE001 - matplotlib can fail in many ways; the run must not
        console.print(f"[yellow]warning[/] could not write {run_dir / plots.LOSS_PNG}: {exc}", highlight=False)


def _train(recipe: Recipe, run_dir: Path, resume_from: Path | None, signals: _Signals, *, console, quiet: bool, force: bool, _halvings: tuple = ()) -> Result:
    from lorafit import adapters, data, device, loss, models, preserve

    started = time.time()
    t0 = time.perf_counter()
    info = device.detect()
    dtype_name = device.compute_dtype_name(recipe.training.precision, recipe.model.dtype, info)

    with dist.main_first():  # rank 0 converts and tokenizes first; the other ranks then read its caches
        model_path = models.resolve_model_path(recipe)
        tokenizer = models.load_tokenizer(recipe, model_path)
        answer = preserve.base_answerer(recipe, tokenizer, None if quiet else console) if recipe.data.preserve else None
        prepared = data.prepare(recipe, tokenizer, answer)  # data errors surface before any weights load
    stats = prepared.stats.summary()
    if resume_from is not None:
        previous_record = runs.read_run_json(run_dir)
        previous_files = previous_record.get("data", {}).get("files")
        if previous_files and previous_files != stats["files"]:
            message = f"the data changed since {resume_from} was written (sha256 differs)"
            if not force:
                raise RecipeError(message, "restore the data, start fresh with --no-resume, or resume anyway with --force")
            console.print(f"[yellow]warning[/] {message}; resuming anyway (--force)", highlight=False)
        if not quiet:
            console.print(f"resuming from {resume_from}", highlight=False)
        if dist.is_main():
            runs.drop_metrics_after(run_dir, runs.checkpoint_step(resume_from))
    elif dist.is_main():
        (run_dir / runs.METRICS).unlink(missing_ok=True)
    dist.barrier()  # every rank has read the old run files before rank 0 rewrites them
    if dist.is_main():
        runs.atomic_write_text(run_dir / runs.RECIPE, recipe.to_yaml())
    record: dict[str, Any] = {
        "status": "running",
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(started)),
        "command": sys.argv,
        "versions": versions(),
        "git_sha": git_sha(),
        "seed": recipe.training.seed,
        "world_size": dist.world_size(),
        **({"auto_batch_size": list(_halvings)} if _halvings else {}),
        "device": {"kind": info.kind, "name": info.name, "dtype": dtype_name, "threads": _threads()},
        "model": {"name": recipe.model.name, "path": model_path},
        "data": stats,
    }
    if dist.is_main():
        runs.atomic_write_json(run_dir / runs.RUN_JSON, record)
    for warning in prepared.stats.warnings:
        console.print(f"[yellow]warning[/] {warning}", highlight=False)
    if not quiet:
        s = prepared.stats
        console.print(
            f"data: {s.train_rows} train / {s.eval_rows} held-out examples ({s.format}), "
            f"{s.trained_tokens} trained tokens, {s.truncated} truncated, {s.fully_masked} fully masked",
            highlight=False,
        )

    planned = prepared.stats.plan_inputs(recipe.training.max_length, recipe.data.packing)
    try:
        checkpointing = models.gradient_checkpointing_on(recipe, info, **planned)
    except ValueError as exc:  # `auto` asks the memory plan, which reads Llama-style decoder configs only
        checkpointing = False
        console.print(f"[yellow]warning[/] no memory plan for this model ({exc}): gradient checkpointing off "
                      "(set training.gradient_checkpointing: on if memory is tight)", highlight=False)
    else:
        if not quiet and recipe.training.gradient_checkpointing == "auto":
            console.print(f"gradient checkpointing {'on: the memory plan is tight' if checkpointing else 'off: the memory plan fits without it'}", highlight=False)
    prefaulted, prefaulting = _prefault_first_step(recipe, info.kind, checkpointing, planned)

    import torch
    from transformers.trainer_callback import PrinterCallback

    torch.manual_seed(recipe.training.seed)
    model = models.load_model(recipe, model_path, checkpointing=checkpointing)
    model = adapters.wrap(model, recipe, model_path, examples=prepared.train)  # EVA/CorDA initialise from examples
    compiled = models.compile_layers(model) if recipe.training.compile == "on" else 0
    if recipe.training.compile == "on" and not compiled:
        console.print("[yellow]warning[/] training.compile: on needs a C++ compiler for inductor's kernels ($CXX, else g++) "
                      "and found none: training without compiling (install one, or set training.compile: off)", highlight=False)
    elif compiled and not quiet:
        console.print(f"torch.compile: {compiled} decoder layers (inductor)", highlight=False)
    summary = adapters.summary(model)  # PEFT's count: 4-bit weights counted as parameters, not packed bytes
    trainable, total, matched = summary["trainable_params"], summary["total_params"], summary["matched_modules"]
    if not quiet:
        console.print(adapters.report(model, recipe), highlight=False)

    args = _sft_config(recipe, run_dir, dtype_name, info.kind, prepared.eval is not None, checkpointing)
    counter = TokenCounter()
    if resume_from is not None and dist.is_main():  # go on counting from the checkpoint (rank 0 carries the sum)
        import json

        counter.tokens = int(json.loads((resume_from / runs.COMPLETE).read_text()).get("tokens", 0))
    callback = _callbacks(run_dir, counter, console, quiet, recipe, _vocab_size(model))
    trainer = _trainer_class()(
        model=model,
        args=args,
        train_dataset=prepared.train,
        eval_dataset=prepared.eval,
        processing_class=tokenizer,
        callbacks=[callback, tracking.recipe_callback(recipe, run_dir)],
    )
    check_sharded_save(trainer, model, recipe.adapter.method)
    trainer.configure_loss(loss.resolve(recipe.training.lm_head, info.kind, recipe.adapter.method))
    trainer.remove_callback(PrinterCallback)  # it prints raw log dicts; RunCallback reports instead
    counter.attach(trainer.model)
    optimizer = adapters.optimizer_for(trainer.model, recipe, args)
    if optimizer is not None:
        trainer.optimizer = optimizer

    eval_before = previous_record.get("eval_loss_before") if resume_from is not None else None
    # a resumed run whose first part deferred it measures it at the end too, whatever the flag says now
    before_at_end = (prepared.eval is not None and eval_before is None
                     and _base_is_the_untrained_model(trainer, recipe, resumed=resume_from is not None))
    if prepared.eval is not None and resume_from is None and not before_at_end:
        eval_before = _evaluate(trainer, prepared)
        _undo_eval_preparation(trainer)
    _record(run_dir, eval_loss_before=eval_before, parallelism=_parallelism(trainer, console))
    if prefaulting is not None:
        prefaulting.join(timeout=30)  # the heap holds the pages before step 1 allocates, not while
    signals.check()
    signals.training(callback)
    setup_s = time.perf_counter() - t0
    train_started_wall = time.time()
    oom_at = None
    try:
        result = trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)
    except (torch.OutOfMemoryError, RuntimeError) as exc:
        if not is_out_of_memory(exc):  # torch's CPU allocator raises a plain RuntimeError
            raise
        if not _can_halve(recipe):
            raise _oom(recipe, dtype_name, args) from exc
        oom_at = trainer.state.global_step
    if oom_at is not None and callback.signal is not None:  # asked to stop as well: stop, do not start over halved
        raise Interrupted(f"stopped by signal {signal.Signals(callback.signal).name}; the step it arrived in ran out of memory",
                          "run the same command again (training.auto_batch_size halves the batch then)")
    if oom_at is not None:  # training.auto_batch_size: free this attempt, go on with half the micro-batch
        del trainer, model, optimizer
        halved, note = _halve_batch(recipe, oom_at)
        checkpoint = runs.latest_checkpoint(run_dir)
        console.print(f"[yellow]out of memory[/] at step {oom_at}: batch_size {note['from']['batch_size']} -> "
                      f"{note['to']['batch_size']}, grad_accum {note['from']['grad_accum']} -> {note['to']['grad_accum']} "
                      "(same global batch); " + (f"continuing from {checkpoint.name}" if checkpoint
                                                 else "starting over (no checkpoint yet; training.save_every keeps one)"), highlight=False)
        _free_memory()
        return run(halved, console=console, quiet=quiet, resume=True, force=force, _halvings=(*_halvings, note))
    train_s = time.perf_counter() - t0 - setup_s
    steps = trainer.state.global_step

    if callback.diverged_at is not None:
        raise _diverged(run_dir, recipe, callback.divergence, callback.diverged_at)
    if callback.signal is not None:
        checkpoint = runs.latest_checkpoint(run_dir)
        _record(run_dir, status="interrupted", checkpoint=str(checkpoint), interrupted_at_step=steps)
        dist.barrier()
        raise Interrupted(
            f"stopped by signal {signal.Signals(callback.signal).name} after step {steps}; checkpoint {checkpoint}",
            "run the same command again to resume from it",
        )
    eval_after = _evaluate(trainer, prepared) if prepared.eval is not None else None
    if before_at_end and callback.signal is None:  # asked to stop during the final evaluation: save, do not wait
        eval_before = _evaluate_base(trainer)
        if dist.is_main():
            runs.append_jsonl(run_dir / runs.METRICS, {"step": 0, "tokens": 0, "eval_loss": eval_before})
        _record(run_dir, eval_loss_before=eval_before)
    worse = eval_before is not None and eval_after is not None and eval_after > eval_before
    if worse:
        console.print(f"[yellow]warning[/] {worse_than_base_message(eval_before, eval_after)}: saved, but lorafit merge and "
                      "export refuse it without --force (lower training.lr, train fewer steps, or check that the held-out "
                      "data is the same task as the training data)", highlight=False, soft_wrap=True)
    tokens, tokens_per_s = callback.at_end or callback.totals()  # summed over ranks, when the last step ended
    train_block = {
        "steps": steps,
        "tokens": tokens,
        "seconds": round(train_s, 2),
        "tokens_per_s": round(tokens_per_s, 2),
        "setup_seconds": round(setup_s, 2),
        # from process start, as a user waits for it (imports and model load included)
        "time_to_first_step_s": round(callback.first_step_wall - _process_start(), 2) if callback.first_step_at else None,
        # of which: process start to the training loop (imports, data, model, eval before), then step 1 itself
        "time_to_train_start_s": round(train_started_wall - _process_start(), 2),
        "peak_memory_mb": round(peak_memory_mb(), 1),
        "train_loss": round(result.training_loss, 4),
        "first_logged_loss": callback.first_loss,
        "last_logged_loss": callback.last_loss,
        "lm_head": trainer.lm_head,
        "gradient_checkpointing": checkpointing,
        "compiled_layers": compiled,
        "prefaulted_mb": round(prefaulted / 2**20),
    }
    metrics = {"eval_loss_before": eval_before, "eval_loss_after": eval_after, "train_loss": train_block["train_loss"]}
    base_model = "HuggingFaceTB/SmolLM2-135M-Instruct" if recipe.model.name.startswith("embedded:") else recipe.model.name
    gathered = _gather_sharded(trainer)  # a collective under FSDP / DeepSpeed: every rank takes part
    if dist.is_main():
        model = trainer.accelerator.unwrap_model(trainer.model)
        save_adapter(model, tokenizer, recipe, run_dir, base_model, {k: v for k, v in metrics.items() if v is not None}, gathered)
    final = _record(
        run_dir,
        status=runs.WORSE_THAN_BASE if worse else "finished",
        adapter={"method": recipe.adapter.method, "trainable_params": trainable, "total_params": total, "matched_modules": matched},
        train=train_block,
        eval={"loss_before": eval_before, "loss_after": eval_after},
        finished=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    )
    dist.barrier()  # the adapter is on disk before any rank reports success
    return Result(final, trainer.model, run_dir)


def _prefault_first_step(recipe: Recipe, device_kind: str, checkpointing: bool, planned: dict):
    """training.prefault_memory: start faulting in what step 1 will allocate, per the memory plan.
    Returns (bytes asked, the helper thread) or (0, None)."""
    from lorafit import device, plan

    t = recipe.training
    # keep_freed_memory() again (idempotent): without its settings glibc would hand the chunks straight back
    if device_kind != "cpu" or not (t.prefault_memory and t.keep_freed_memory and device.keep_freed_memory()):
        return 0, None
    try:
        step = plan.for_recipe(recipe, models.model_config(recipe), device_kind, gradient_checkpointing=checkpointing, **planned)
    except ValueError:  # a config the plan cannot read (not a Llama-style decoder): train without it
        return 0, None
    size = int(min(step.activations + step.logits + step.gradients + step.optimizer, device.PREFAULT_MAX))
    thread = device.prefault(size)
    return (size, thread) if thread is not None else (0, None)


def worse_than_base_message(before: float, after: float) -> str:
    return f"held-out loss after training {after} is above the base's {before}: the adapter made the model worse"


def _diverged(run_dir: Path, recipe: Recipe, found: health.Divergence | None, step: int) -> Diverged:
    """run.json and the exit: status diverged, which rule fired and its figures; checkpoints written at or after
    the step it began are removed (a collapse is seen a few steps late), so resuming never starts from one."""
    lr = f"lower training.lr (now {recipe.training.lr:g}), e.g. tenfold"
    if found is None:
        message, hint, kind, details = (f"loss or gradient norm became NaN/inf at step {step}",
                                        f"{lr}, keep training.max_grad_norm at 1.0, or use training.precision: fp32", "nan", {})
    else:
        message, kind, details = found.message, found.kind, found.details
        hint = lr + ("; if the loss is meant to rise this far, raise training.divergence_factor or set it to null"
                     if kind == "loss_rise" else ": a step this large saturates the model, and no gradient can bring it back")
    if dist.is_main():
        for checkpoint in (run_dir / runs.CHECKPOINTS).glob("checkpoint-*"):
            if (runs.checkpoint_step(checkpoint) or 0) >= step:
                shutil.rmtree(checkpoint, ignore_errors=True)
    _record(run_dir, status="diverged", failed_step=step, divergence={"kind": kind, "step": step, "message": message, **details})
    dist.barrier()  # no rank exits before run.json says why (launchers read it for the exit code)
    return Diverged(f"{message}; no adapter was saved", hint)


def _vocab_size(model) -> int | None:
    """Columns of the logits: ln of it is the loss of a model that predicts every token equally likely."""
    config = getattr(model, "config", None)
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    return getattr(text, "vocab_size", None)


def _record(run_dir: Path, **fields: Any) -> dict:
    """Update run.json (rank 0 only); every rank gets the merged record back."""
    if dist.is_main():
        return runs.update_run_json(run_dir, **fields)
    return {**runs.read_run_json(run_dir), **fields}


def _parallelism(trainer, console) -> str:
    """What accelerate actually runs (NO, MULTI_CPU, MULTI_GPU, FSDP, DEEPSPEED), said out loud when it is not
    what the launch asked for: accelerate 1.15 only shards (FSDP) on accelerators, so an FSDP launch on CPU
    trains as plain DDP."""
    kind = trainer.accelerator.distributed_type.value
    asked = next((name for name in ("FSDP", "DEEPSPEED") if os.environ.get(f"ACCELERATE_USE_{name}", "").lower() == "true"), None)
    if asked and kind != asked:
        console.print(f"[yellow]warning[/] launched for {asked}, but accelerate runs {kind} on this hardware: "
                      "every rank holds the whole model", highlight=False)
    return kind


def check_sharded_save(trainer, model, method: str) -> None:
    """pissa / olora / corda are saved by converting against their starting values, which PEFT does from the
    unsharded model only: under FSDP or DeepSpeed the final save could not convert them. Say so before training."""
    from lorafit import adapters

    if (trainer.is_fsdp_enabled or trainer.is_deepspeed_enabled) and getattr(model, adapters.INITIAL_ADAPTER_ATTR, None) is not None:
        raise RecipeError(f"adapter.method {method} cannot be saved from FSDP / DeepSpeed training: PEFT converts it to a "
                          "plain LoRA from the unsharded model only", "train it with --strategy ddp, or use method lora or dora")


def _gather_sharded(trainer):
    """The full state dict when FSDP or DeepSpeed shards the weights across ranks (None otherwise).

    As PEFT documents for FSDP: switch to FULL_STATE_DICT for the final save, gather, let rank 0 write."""
    if trainer.is_fsdp_enabled:
        trainer.accelerator.state.fsdp_plugin.set_state_dict_type("FULL_STATE_DICT")
        return trainer.accelerator.get_state_dict(trainer.model)
    if trainer.is_deepspeed_enabled:
        return trainer.accelerator.get_state_dict(trainer.model_wrapped)
    return None


def _silent_console():
    """The console of ranks other than 0: rank 0 alone prints progress (errors still reach stderr)."""
    from rich.console import Console

    try:
        import datasets

        datasets.disable_progress_bars()
    except ImportError:
        pass
    return Console(quiet=True)


def _evaluate(trainer, prepared) -> float | None:
    return _rounded(trainer.evaluate().get("eval_loss"))


def _rounded(loss: float | None) -> float | None:
    return round(loss, 4) if loss is not None else None


def _base_is_the_untrained_model(trainer, recipe: Recipe, resumed: bool) -> bool:
    """Whether the held-out loss before training can wait for the end (training.eval_before_at_end), measured on
    the base with the adapter switched off: the first step then comes an evaluation sooner."""
    from lorafit import methods

    return ((recipe.training.eval_before_at_end or resumed) and recipe.adapter.method in methods.STARTS_AS_BASE
            and not (trainer.is_fsdp_enabled or trainer.is_deepspeed_enabled))


def _evaluate_base(trainer) -> float | None:
    """The held-out loss of the model before training, measured after it: the base with the adapter switched off.
    Eager, since compiled layers would recompile for the switched-off path; and not logged as an evaluation at
    the last step (metrics.jsonl gets its step-0 row from the caller)."""
    import torch

    model = trainer.accelerator.unwrap_model(trainer.model)
    with model.disable_adapter(), torch.compiler.set_stance("force_eager"):
        output = trainer.evaluation_loop(trainer.get_eval_dataloader(), description="held-out loss before training",
                                         prediction_loss_only=True, metric_key_prefix="eval")
    getattr(trainer, "_metrics", {}).get("eval", {}).clear()  # TRL's token accuracy of this pass: never logged
    return _rounded(output.metrics.get("eval_loss"))


def _undo_eval_preparation(trainer) -> None:
    """Let train() wrap the model in DistributedDataParallel after the held-out loss was measured first.

    Trainer.evaluate() on a fresh trainer registers the bare model with accelerate in evaluation mode and marks
    it prepared; train() then never wraps it in DDP, and every rank silently trains its own copy (seen with
    transformers 5.23 + accelerate 1.15; tests/test_ddp.py compares against a single process and catches it).
    FSDP and DeepSpeed wrap the model fully at that first evaluation and need nothing here."""
    model = trainer.model
    if (
        not dist.is_distributed()
        or trainer.is_fsdp_enabled
        or trainer.is_deepspeed_enabled
        or trainer.model_wrapped is not model
        or not getattr(model, "_is_accelerate_prepared", False)
    ):
        return
    del model._is_accelerate_prepared
    if "_original_forward" in model.__dict__:  # the mixed-precision wrapper prepare_model put on forward
        model.forward = model._original_forward
        del model._original_forward
    trainer.accelerator._models = [m for m in trainer.accelerator._models if m is not model]


def _process_start() -> float:
    import psutil

    return psutil.Process().create_time()


def _threads() -> int:
    import torch

    return torch.get_num_threads()


def _can_halve(recipe: Recipe) -> bool:
    """training.auto_batch_size applies to single-process runs: under DDP one rank's OOM leaves the others
    waiting in a collective, so there the error (exit 4) is the honest answer."""
    return recipe.training.auto_batch_size and recipe.training.batch_size > 1 and not dist.is_distributed()


def _halve_batch(recipe: Recipe, step: int):
    """The recipe with (about) half the micro-batch and accumulation raised to match, so the global batch and
    the data order stay the same, and the note run.json keeps of it."""
    t = recipe.training
    smaller = max(d for d in range(1, t.batch_size // 2 + 1) if t.batch_size % d == 0)  # 8 -> 4, 6 -> 3, 3 -> 1
    half = t.model_copy(update={"batch_size": smaller, "grad_accum": t.grad_accum * (t.batch_size // smaller)})
    note = {"at_step": step, "from": {"batch_size": t.batch_size, "grad_accum": t.grad_accum},
            "to": {"batch_size": half.batch_size, "grad_accum": half.grad_accum}}
    return recipe.model_copy(update={"training": half}), note


def _free_memory() -> None:
    import gc

    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _oom(recipe: Recipe, dtype_name: str, args) -> OutOfMemory:
    t = recipe.training
    return OutOfMemory(
        f"out of memory at micro-batch {t.batch_size} x {t.max_length} tokens, {dtype_name}, "
        f"4-bit {recipe.quantization.load_in_4bit}, gradient checkpointing {args.gradient_checkpointing}",
        f"halve training.batch_size (and double training.grad_accum to keep the global batch)"
        + ("" if args.gradient_checkpointing else ", or set training.gradient_checkpointing: on"),
    )

