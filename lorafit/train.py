"""Assemble TRL's SFTTrainer from a recipe, run it, and write the run directory."""

from __future__ import annotations

import math
import os
import platform
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lorafit import models, runs
from lorafit.errors import Diverged, Interrupted, OutOfMemory, RecipeError

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
    """Peak GPU memory allocated on CUDA, peak resident set size of this process on CPU."""
    import torch

    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**20
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


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
    """SFTTrainer whose length-grouped batches are reseeded per epoch, so a resumed run sees the same batches.

    transformers' LengthGroupedSampler draws from the global RNG, whose state at epoch start differs
    between a fresh and a resumed process; this is the only thing lorafit changes in the trainer."""
    import torch
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
        def _get_train_sampler(self, train_dataset=None):
            dataset = train_dataset if train_dataset is not None else self.train_dataset
            if self.args.train_sampling_strategy != "group_by_length" or "input_ids" not in dataset.column_names:
                return super()._get_train_sampler(train_dataset)
            lengths = [len(ids) for ids in dataset["input_ids"]]
            batch = self.args.train_batch_size * self.args.gradient_accumulation_steps
            return EpochSeededLengthSampler(batch, lengths, self.args.data_seed or self.args.seed)

    return LorafitTrainer


def _callbacks(run_dir: Path, counter: TokenCounter, console, quiet: bool):
    from transformers import TrainerCallback

    class RunCallback(TrainerCallback):
        """metrics.jsonl, progress, the NaN guard and graceful signals, in one place."""

        def __init__(self):
            self.start = time.perf_counter()
            self.first_step_at = None
            self.tokens_at_first_step = 0
            self.diverged_at: int | None = None
            self.signal: int | None = None
            self.progress = None
            self.task = None
            self.last_loss = float("nan")

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
            if self.signal is not None:  # finish this step, write a resumable checkpoint, stop
                control.should_save = True
                control.should_training_stop = True

        def on_save(self, args, state, control, **kw):
            folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
            if folder.is_dir():
                runs.atomic_write_json(folder / runs.COMPLETE, {"step": state.global_step, "tokens": counter.tokens})

        def tokens_per_s(self) -> float:
            """Throughput after the first step, which pays one-off warm-up costs."""
            if self.first_step_at is None:
                return 0.0
            elapsed = time.perf_counter() - self.first_step_at
            return (counter.tokens - self.tokens_at_first_step) / elapsed if elapsed > 0 else 0.0

        def on_log(self, args, state, control, logs=None, **kw):
            logs = dict(logs or {})
            record = {"step": state.global_step, "tokens": counter.tokens, "elapsed_s": round(time.perf_counter() - self.start, 3)}
            record.update({k: v for k, v in logs.items() if isinstance(v, (int, float))})
            runs.append_jsonl(run_dir / runs.METRICS, record)
            for key in ("loss", "grad_norm", "eval_loss"):
                value = logs.get(key)
                if isinstance(value, (int, float)) and not math.isfinite(value):
                    self.diverged_at = state.global_step
                    control.should_training_stop = True
                    control.should_save = False  # never checkpoint a diverged model
            if "loss" in logs:
                self.last_loss = logs["loss"]
                info = f"loss {logs['loss']:.4f}  {self.tokens_per_s():.0f} tok/s"
                if self.progress is not None:
                    self.progress.update(self.task, info=info)
                elif not quiet:
                    console.print(f"step {state.global_step}/{state.max_steps}  {info}", highlight=False)
            if "eval_loss" in logs and not quiet:
                console.print(f"step {state.global_step}: held-out loss {logs['eval_loss']:.4f}", highlight=False)

        def on_train_end(self, args, state, control, **kw):
            if self.progress is not None:
                self.progress.stop()

    return RunCallback()


def _sft_config(recipe: Recipe, run_dir: Path, dtype_name: str, device_kind: str, has_eval: bool):
    from trl import SFTConfig

    t = recipe.training
    checkpointing = models.gradient_checkpointing_on(recipe, device_kind)  # the rule load_model's QLoRA prep uses too
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
        eval_strategy=eval_strategy,
        eval_steps=t.eval_every or None,
        save_strategy="steps" if t.save_every else "no",
        save_steps=t.save_every or 500,
        save_total_limit=t.keep_checkpoints,
        save_only_model=False,
        report_to=[r for r in recipe.output.report_to if r != "none"] or "none",
        max_length=t.max_length,
        packing=recipe.data.packing,
        disable_tqdm=True,
        dataloader_num_workers=0,
        remove_unused_columns=True,
    )


RESUME_SECTIONS = ("model", "adapter", "quantization", "data")


def _resume_point(run_dir: Path, recipe: Recipe) -> Path | None:
    """The checkpoint to resume from, after checking the recipe still describes the same run."""
    checkpoint = runs.latest_checkpoint(run_dir)
    if checkpoint is None or not (run_dir / runs.RECIPE).is_file():
        return None
    from lorafit.recipe import recipe_from_yaml_text

    before = recipe_from_yaml_text((run_dir / runs.RECIPE).read_text()).model_dump(mode="json")
    now = recipe.model_dump(mode="json")
    changed = [
        f"{section}.{key}: {before[section].get(key)!r} -> {value!r}"
        for section in RESUME_SECTIONS
        for key, value in now[section].items()
        if before[section].get(key) != value
    ]
    if changed:
        raise RecipeError(
            f"{run_dir} holds a checkpoint of a different run; changed: " + "; ".join(changed),
            f"restore those settings to resume, or start fresh elsewhere: --set output.dir={run_dir}-2",
        )
    return checkpoint


def _check_run_dir(run_dir: Path) -> None:
    if (run_dir / runs.ADAPTER).exists():
        raise RecipeError(
            f"{run_dir} already holds a trained adapter; lorafit never overwrites a run silently",
            f"choose another directory: --set output.dir={run_dir}-2, or delete {run_dir}",
        )
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        probe = run_dir / ".write-test"
        probe.write_text("")
        probe.unlink()
    except OSError as exc:
        raise RecipeError(f"output.dir {run_dir} is not writable: {exc.strerror}", "choose a directory you can write to") from None


def _install_signal_handlers(callback) -> dict:
    def handler(signum, frame):
        callback.signal = signum

    previous = {}
    for sig in (signal.SIGTERM, signal.SIGINT, getattr(signal, "SIGUSR1", None)):
        if sig is not None:
            previous[sig] = signal.signal(sig, handler)
    return previous


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


def save_adapter(model, tokenizer, recipe: Recipe, run_dir: Path, base_model: str, metrics: dict) -> Path:
    from lorafit import adapters

    target = run_dir / runs.ADAPTER
    with runs.atomic_dir(target) as tmp:
        adapters.save(model, tmp)  # pissa/olora/corda: converted to a LoRA for the untouched base
        tokenizer.save_pretrained(tmp)
        (tmp / "README.md").write_text(model_card(recipe, base_model, metrics))
    return target


@dataclass
class Result:
    record: dict  # the final run.json
    model: Any  # the trained PEFT model, still in memory (tests compare it with the saved adapter)


def run(recipe: Recipe, *, console, quiet: bool = False) -> Result:
    """Train as the recipe says and write the run directory."""
    from lorafit import adapters, data, device, models
    from lorafit.recipe import check_hardware

    models.quiet_libraries()
    check_hardware(recipe)
    run_dir = recipe.run_dir
    _check_run_dir(run_dir)
    resume_from = _resume_point(run_dir, recipe)
    started = time.time()
    t0 = time.perf_counter()
    info = device.detect()
    dtype_name = device.compute_dtype_name(recipe.training.precision, recipe.model.dtype, info)

    model_path = models.resolve_model_path(recipe)
    tokenizer = models.load_tokenizer(recipe, model_path)
    prepared = data.prepare(recipe, tokenizer)  # data errors surface before any weights load
    stats = prepared.stats.summary()
    if resume_from is not None:
        previous_record = runs.read_run_json(run_dir)
        previous_files = previous_record.get("data", {}).get("files")
        if previous_files and previous_files != stats["files"]:
            raise RecipeError(f"the data changed since {resume_from} was written (sha256 differs)", f"restore the data, or start fresh: --set output.dir={run_dir}-2")
        if not quiet:
            console.print(f"resuming from {resume_from}", highlight=False)
    else:
        (run_dir / runs.METRICS).unlink(missing_ok=True)
    runs.atomic_write_text(run_dir / runs.RECIPE, recipe.to_yaml())
    record: dict[str, Any] = {
        "status": "running",
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(started)),
        "command": sys.argv,
        "versions": versions(),
        "git_sha": git_sha(),
        "seed": recipe.training.seed,
        "device": {"kind": info.kind, "name": info.name, "dtype": dtype_name, "threads": _threads()},
        "model": {"name": recipe.model.name, "path": model_path},
        "data": stats,
    }
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

    import torch
    from transformers.trainer_callback import PrinterCallback

    torch.manual_seed(recipe.training.seed)
    model = models.load_model(recipe, model_path)
    model = adapters.wrap(model, recipe, model_path, examples=prepared.train)  # EVA/CorDA initialise from examples
    summary = adapters.summary(model)  # PEFT's count: 4-bit weights counted as parameters, not packed bytes
    trainable, total, matched = summary["trainable_params"], summary["total_params"], summary["matched_modules"]
    if not quiet:
        console.print(adapters.report(model, recipe), highlight=False)

    args = _sft_config(recipe, run_dir, dtype_name, info.kind, prepared.eval is not None)
    counter = TokenCounter()
    callback = _callbacks(run_dir, counter, console, quiet)
    trainer = _trainer_class()(
        model=model,
        args=args,
        train_dataset=prepared.train,
        eval_dataset=prepared.eval,
        processing_class=tokenizer,
        callbacks=[callback],
    )
    trainer.remove_callback(PrinterCallback)  # it prints raw log dicts; RunCallback reports instead
    counter.attach(trainer.model)
    optimizer = adapters.optimizer_for(trainer.model, recipe, args)
    if optimizer is not None:
        trainer.optimizer = optimizer

    if resume_from is not None:
        eval_before = previous_record.get("eval_loss_before")
    else:
        eval_before = _evaluate(trainer, prepared) if prepared.eval is not None else None
    runs.update_run_json(run_dir, eval_loss_before=eval_before)
    previous = _install_signal_handlers(callback)
    setup_s = time.perf_counter() - t0
    try:
        result = trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)
    except torch.OutOfMemoryError as exc:
        raise _oom(recipe, dtype_name, args) from exc
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    train_s = time.perf_counter() - t0 - setup_s
    steps = trainer.state.global_step

    if callback.diverged_at is not None:
        runs.update_run_json(run_dir, status="diverged", failed_step=callback.diverged_at)
        raise Diverged(
            f"loss or gradient norm became NaN/inf at step {callback.diverged_at}; no adapter was saved after it",
            "lower training.lr, keep training.max_grad_norm at 1.0, or use training.precision: fp32",
        )
    if callback.signal is not None:
        checkpoint = runs.latest_checkpoint(run_dir)
        runs.update_run_json(run_dir, status="interrupted", checkpoint=str(checkpoint), interrupted_at_step=steps)
        raise Interrupted(
            f"stopped by signal {signal.Signals(callback.signal).name} after step {steps}; checkpoint {checkpoint}",
            "run the same command again to resume from it",
        )
    eval_after = _evaluate(trainer, prepared) if prepared.eval is not None else None
    train_block = {
        "steps": steps,
        "tokens": counter.tokens,
        "seconds": round(train_s, 2),
        "tokens_per_s": round(callback.tokens_per_s(), 2),
        "setup_seconds": round(setup_s, 2),
        # from process start, as a user waits for it (imports and model load included)
        "time_to_first_step_s": round(callback.first_step_wall - _process_start(), 2) if callback.first_step_at else None,
        "peak_memory_mb": round(peak_memory_mb(), 1),
        "train_loss": round(result.training_loss, 4),
        "last_logged_loss": callback.last_loss,
    }
    metrics = {"eval_loss_before": eval_before, "eval_loss_after": eval_after, "train_loss": train_block["train_loss"]}
    base_model = "HuggingFaceTB/SmolLM2-135M-Instruct" if recipe.model.name.startswith("embedded:") else recipe.model.name
    save_adapter(trainer.model, tokenizer, recipe, run_dir, base_model, {k: v for k, v in metrics.items() if v is not None})
    final = runs.update_run_json(
        run_dir,
        status="finished",
        adapter={"method": recipe.adapter.method, "trainable_params": trainable, "total_params": total, "matched_modules": matched},
        train=train_block,
        eval={"loss_before": eval_before, "loss_after": eval_after},
        finished=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    )
    return Result(final, trainer.model)


def _evaluate(trainer, prepared) -> float | None:
    value = trainer.evaluate().get("eval_loss")
    return round(value, 4) if value is not None else None


def _process_start() -> float:
    import psutil

    return psutil.Process().create_time()


def _threads() -> int:
    import torch

    return torch.get_num_threads()


def _oom(recipe: Recipe, dtype_name: str, args) -> OutOfMemory:
    t = recipe.training
    return OutOfMemory(
        f"out of memory at micro-batch {t.batch_size} x {t.max_length} tokens, {dtype_name}, "
        f"4-bit {recipe.quantization.load_in_4bit}, gradient checkpointing {args.gradient_checkpointing}",
        f"halve training.batch_size (and double training.grad_accum to keep the global batch)"
        + ("" if args.gradient_checkpointing else ", or set training.gradient_checkpointing: on"),
    )

