"""The phases of one training attempt, in the order `pipeline.attempt` calls them: prepare the inputs, record
the run, plan memory, build the model, build the trainer, measure "before", fit, handle a stop, finish."""

from __future__ import annotations

import shutil
import sys
import time
from typing import Any

from lorafit import runs
from lorafit.core import dist
from lorafit.core.errors import Diverged, Interrupted, RecipeError, is_out_of_memory
from lorafit.runs import lineage, run_record
from lorafit.train import health, oom, outputs, tracking
from lorafit.train.signals import name
from lorafit.train.state import Before, Built, Inputs, Memory, Result, Run

EMBEDDED_BASE = "HuggingFaceTB/SmolLM2-135M-Instruct"  # what the embedded model is, for the model card


def prepare_inputs(state: Run) -> Inputs:
    """Tokenizer and data before any weights load, so data errors surface in seconds; on resume, the data must
    be what the checkpoint was trained on."""
    from lorafit import models
    from lorafit.data import preference, preserve

    recipe, console = state.recipe, state.console
    with dist.main_first():  # rank 0 converts and tokenizes first; the other ranks then read its caches
        model_path = models.resolve_model_path(recipe)
        tokenizer = models.load_tokenizer(recipe, model_path)
        answer = (
            preserve.base_answerer(recipe, tokenizer, None if state.quiet else console)
            if recipe.data.preserve
            else None
        )
        prepared = preference.prepare_for(recipe, tokenizer, answer)  # SFT examples or preference records
    previous = runs.read_run_json(state.run_dir) if state.resume_from is not None else {}
    if state.resume_from is not None:
        _check_same_data(state, previous, prepared.stats.summary()["files"])
        state.say(f"resuming from {state.resume_from}")
        if dist.is_main():
            runs.drop_metrics_after(state.run_dir, runs.checkpoint_step(state.resume_from))
    elif dist.is_main():
        (state.run_dir / runs.METRICS).unlink(missing_ok=True)
    dist.barrier()  # every rank has read the old run files before rank 0 rewrites them
    return Inputs(model_path, tokenizer, prepared, previous)


def _check_same_data(state: Run, previous: dict, files: dict) -> None:
    before = previous.get("data", {}).get("files")
    if before and before != files:
        message = f"the data changed since {state.resume_from} was written (sha256 differs)"
        if not state.force:
            raise RecipeError(message, "restore the data, start fresh with --no-resume, or resume anyway with --force")
        state.warn(f"{message}; resuming anyway (--force)")


def record_start(state: Run, inputs: Inputs) -> None:
    """recipe.yaml and a run.json with status running: the run directory says what is being trained from here on."""
    recipe, info, stats = state.recipe, state.info, inputs.prepared.stats
    if dist.is_main():
        runs.atomic_write_text(state.run_dir / runs.RECIPE, recipe.to_yaml())
    record = {
        "schema_version": run_record.SCHEMA_VERSION,
        "status": "running",
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(state.started)),
        "command": sys.argv,
        "versions": outputs.versions(),
        "git_sha": outputs.git_sha(),
        "seed": recipe.training.seed,
        "world_size": dist.world_size(),
        **({"auto_batch_size": list(state.halvings)} if state.halvings else {}),
        "device": {"kind": info.kind, "name": info.name, "dtype": state.dtype_name, "threads": _threads()},
        "model": {"name": recipe.model.name, "path": inputs.model_path},
        "data": stats.summary(),
    }
    parent = lineage.record(recipe)
    if parent:
        record["lineage"] = parent
    if dist.is_main():
        runs.write_record(state.run_dir, run_record.parse(record))
    for warning in stats.warnings:
        state.warn(warning)
    state.say(
        f"data: {stats.train_rows} train / {stats.eval_rows} held-out examples ({stats.format}), "
        f"{stats.trained_tokens} trained tokens, {stats.truncated} truncated, {stats.fully_masked} fully masked"
    )


def plan_memory(state: Run, inputs: Inputs) -> Memory:
    """Gradient checkpointing from the memory plan (training.gradient_checkpointing: auto), and the first step's
    memory faulted in on the spare core while the model loads (training.prefault_memory)."""
    from lorafit import models

    recipe = state.recipe
    planned = inputs.prepared.stats.plan_inputs(recipe.training.max_length, recipe.data.packing)
    try:
        checkpointing = models.gradient_checkpointing_on(recipe, state.info, **planned)
    except ValueError as exc:  # `auto` asks the memory plan, which reads Llama-style decoder configs only
        checkpointing = False
        state.warn(
            f"no memory plan for this model ({exc}): gradient checkpointing off "
            "(set training.gradient_checkpointing: on if memory is tight)"
        )
    else:
        if recipe.training.gradient_checkpointing == "auto":
            state.say(
                f"gradient checkpointing {'on: the memory plan is tight' if checkpointing else 'off: the memory plan fits without it'}"
            )
    memory = Memory(checkpointing, planned)
    memory.prefaulted, memory.prefaulting = _prefault_first_step(state, memory)
    return memory


def _prefault_first_step(state: Run, memory: Memory):
    """training.prefault_memory: start faulting in what step 1 will allocate, per the memory plan.
    Returns (bytes asked, the helper thread) or (0, None)."""
    from lorafit import models
    from lorafit.core import device
    from lorafit.models import recipe_plan

    recipe, t = state.recipe, state.recipe.training
    # keep_freed_memory() again (idempotent): without its settings glibc would hand the chunks straight back
    if state.info.kind != "cpu" or not (t.prefault_memory and t.keep_freed_memory and device.keep_freed_memory()):
        return 0, None
    try:
        step = recipe_plan.for_recipe(
            recipe,
            models.model_config(recipe),
            state.info.kind,
            gradient_checkpointing=memory.checkpointing,
            **memory.planned,
        )
    except ValueError:  # a config the plan cannot read (not a Llama-style decoder): train without it
        return 0, None
    size = int(min(step.activations + step.logits + step.gradients + step.optimizer, device.PREFAULT_MAX))
    thread = device.prefault(size)
    return (size, thread) if thread is not None else (0, None)


def build_model(state: Run, inputs: Inputs, memory: Memory):
    """The base model with the adapter attached (and compiled, with training.compile): (model, PEFT's parameter
    summary, compiled layers)."""
    import torch

    from lorafit import models
    from lorafit.models import adapters

    recipe = state.recipe
    torch.manual_seed(recipe.training.seed)
    model = models.load_model(recipe, inputs.model_path, checkpointing=memory.checkpointing)
    if recipe.adapter.init_from is not None:  # go on training a finished run's adapter
        model = adapters.continue_from(model, recipe)
    else:
        model = adapters.wrap(
            model, recipe, inputs.model_path, examples=inputs.prepared.train
        )  # EVA/CorDA start from examples
    compiled = models.compile_layers(model) if recipe.training.compile == "on" else 0
    if recipe.training.compile == "on" and not compiled:
        state.warn(
            "training.compile: on needs a C++ compiler for inductor's kernels ($CXX, else g++) "
            "and found none: training without compiling (install one, or set training.compile: off)"
        )
    elif compiled:
        state.say(f"torch.compile: {compiled} decoder layers (inductor)")
    summary = adapters.summary(model)  # PEFT's count: 4-bit weights counted as parameters, not packed bytes
    state.say(adapters.report(model, recipe))
    return model, summary, compiled


def build_trainer(state: Run, inputs: Inputs, memory: Memory, model, summary: dict, compiled: int) -> Built:
    """The recipe's trainer (trainer.trainer_for) with lorafit's callbacks, loss path and optimizer."""
    from transformers.trainer_callback import PrinterCallback

    from lorafit.models import adapters, loss
    from lorafit.train import callbacks
    from lorafit.train import config as config_module
    from lorafit.train import trainer as trainers

    recipe, run_dir, prepared = state.recipe, state.run_dir, inputs.prepared
    trainer_class, config = trainers.trainer_for(recipe)
    args = config(recipe, run_dir, state.dtype_name, state.info.kind, prepared.eval is not None, memory.checkpointing)
    counter = callbacks.TokenCounter()
    if state.resume_from is not None and dist.is_main():  # go on counting from the checkpoint (rank 0 carries the sum)
        counter.tokens = int(runs.read_json_file(state.resume_from / runs.COMPLETE).get("tokens", 0))
    hooks = _callbacks(state, counter, _vocab_size(model))
    trainer = trainer_class(
        model=model,
        args=args,
        train_dataset=prepared.train,
        eval_dataset=prepared.eval,
        processing_class=inputs.tokenizer,
        callbacks=[*hooks.values(), tracking.recipe_callback(recipe, run_dir)],
    )
    trainers.check_sharded_save(trainer, model, recipe.adapter.method)
    cadence = config_module.resolve_cadence(recipe, args, len(trainer.train_dataset), dist.world_size())
    if cadence:
        state.say(cadence)
    trainer.configure_loss(loss.resolve(recipe.training.lm_head, state.info.kind, recipe.adapter.method))
    trainer.remove_callback(PrinterCallback)  # it prints raw log dicts; the Metrics callback reports instead
    counter.attach(trainer.model)
    optimizer = adapters.optimizer_for(trainer.model, recipe, args)
    if optimizer is not None:
        trainer.optimizer = optimizer
    return Built(model, trainer, args, hooks, summary, compiled)


def _callbacks(state: Run, counter, vocab_size: int | None) -> dict[str, Any]:
    """One callback per concern, by class name; the order is the order Trainer calls them in."""
    from lorafit.train import callbacks

    t = state.recipe.training
    throughput = callbacks.Throughput(counter)
    record = lambda **fields: outputs.record(state.run_dir, **fields)  # noqa: E731
    hooks = [
        throughput,
        callbacks.Metrics(state.run_dir, throughput, state.console, state.quiet, t.overfit_patience, record),
        callbacks.DivergenceGuard(t.divergence_factor, vocab_size, state.run_dir),
        callbacks.SignalStop(),
        callbacks.CheckpointCompletion(
            state.run_dir, t.keep_checkpoints, throughput, lambda: outputs.plot(state.run_dir, state.console)
        ),
    ]
    return {type(hook).__name__: hook for hook in hooks}


def measure_before(state: Run, inputs: Inputs, built: Built) -> Before:
    """The held-out loss of the untrained model: before the first step, or after the last one with the adapter
    switched off (training.eval_before_at_end, where that is the same model). A resumed run keeps its figure."""
    from lorafit.train import trainer as trainers

    has_eval = inputs.prepared.eval is not None
    loss = inputs.previous.get("eval_loss_before") if state.resume_from is not None else None
    # a resumed run whose first part deferred it measures it at the end too, whatever the flag says now
    at_end = (
        has_eval
        and loss is None
        and trainers.base_is_the_untrained_model(built.trainer, state.recipe, resumed=state.resume_from is not None)
    )
    if has_eval and state.resume_from is None and not at_end:
        loss = trainers.evaluate(built.trainer)
        trainers.undo_eval_preparation(built.trainer)
    outputs.record(state.run_dir, eval_loss_before=loss, parallelism=trainers.parallelism(built.trainer, state.warn))
    return Before(loss, at_end)


def fit(state: Run, built: Built):
    """trainer.train(), from the resume point. Out of memory is exit 4, or HalveAndRetry where
    training.auto_batch_size applies."""
    import torch

    try:
        return built.trainer.train(resume_from_checkpoint=str(state.resume_from) if state.resume_from else None)
    except (torch.OutOfMemoryError, RuntimeError) as exc:
        if not is_out_of_memory(exc):  # torch's CPU allocator raises a plain RuntimeError
            raise
        if not oom.can_halve(state.recipe):
            raise oom.oom_error(state.recipe, state.dtype_name, built.args) from exc
        signum = built.callbacks["SignalStop"].signal
        if signum is not None:  # asked to stop as well: stop, do not start over halved
            raise Interrupted(
                f"stopped by signal {name(signum)}; the step it arrived in ran out of memory",
                "run the same command again (training.auto_batch_size halves the batch then)",
            ) from exc
        raise oom.HalveAndRetry(built.trainer.state.global_step) from None


def handle_stop(state: Run, built: Built) -> None:
    """A run that diverged or was signalled ends here, with run.json saying why (and a checkpoint if signalled)."""
    guard, stop = built.callbacks["DivergenceGuard"], built.callbacks["SignalStop"]
    if guard.diverged_at is not None:
        raise _diverged(state, guard.divergence, guard.diverged_at)
    if stop.signal is not None:
        steps = built.trainer.state.global_step
        checkpoint = runs.latest_checkpoint(state.run_dir)
        outputs.record(state.run_dir, status="interrupted", checkpoint=str(checkpoint), interrupted_at_step=steps)
        dist.barrier()
        raise Interrupted(
            f"stopped by signal {name(stop.signal)} after step {steps}; checkpoint {checkpoint}",
            "run the same command again to resume from it",
        )


def _diverged(state: Run, found: health.Divergence | None, step: int) -> Diverged:
    """run.json and the exit: status diverged, which rule fired and its figures; checkpoints written at or after
    the step it began are removed (a collapse is seen a few steps late), so resuming never starts from one."""
    lr = f"lower training.lr (now {state.recipe.training.lr:g}), e.g. tenfold"
    if found is None:
        message, hint, kind, details = (
            f"loss or gradient norm became NaN/inf at step {step}",
            f"{lr}, keep training.max_grad_norm at 1.0, or use training.precision: fp32",
            "nan",
            {},
        )
    else:
        message, kind, details = found.message, found.kind, found.details
        hint = lr + (
            "; if the loss is meant to rise this far, raise training.divergence_factor or set it to null"
            if kind == "loss_rise"
            else ": a step this large saturates the model, and no gradient can bring it back"
        )
    if dist.is_main():
        for checkpoint in (state.run_dir / runs.CHECKPOINTS).glob("checkpoint-*"):
            if (runs.checkpoint_step(checkpoint) or 0) >= step:
                shutil.rmtree(checkpoint, ignore_errors=True)
    outputs.record(
        state.run_dir,
        status="diverged",
        failed_step=step,
        divergence={"kind": kind, "step": step, "message": message, **details},
    )
    dist.barrier()  # no rank exits before run.json says why (launchers read it for the exit code)
    return Diverged(f"{message}; no adapter was saved", hint)


def finish(state: Run, inputs: Inputs, memory: Memory, built: Built, before: Before, result, timing: dict) -> Result:
    """Held-out loss after training (and before, if deferred), the adapter with its model card, and the final
    run.json: finished, or worse_than_base when training made the held-out loss worse."""
    from lorafit.train import trainer as trainers

    trainer, run_dir = built.trainer, state.run_dir
    after = trainers.evaluate(trainer) if inputs.prepared.eval is not None else None
    if before.at_end:
        before.loss = trainers.evaluate_base(trainer)
        if dist.is_main():
            runs.append_jsonl(run_dir / runs.METRICS, {"step": 0, "tokens": 0, "eval_loss": before.loss})
        outputs.record(run_dir, eval_loss_before=before.loss)
    worse = before.loss is not None and after is not None and after > before.loss
    if worse:
        state.warn(
            f"{outputs.worse_than_base_message(before.loss, after)}: saved, but lorafit merge and export refuse it "
            "without --force (lower training.lr, train fewer steps, or check that the held-out data is the same "
            "task as the training data)",
            soft_wrap=True,
        )
    train_block = _train_block(state, memory, built, result, timing)
    metrics = {"eval_loss_before": before.loss, "eval_loss_after": after, "train_loss": train_block["train_loss"]}
    base_model = EMBEDDED_BASE if state.recipe.model.name.startswith("embedded:") else state.recipe.model.name
    gathered = trainers.gather_sharded(trainer)  # a collective under FSDP / DeepSpeed: every rank takes part
    if dist.is_main():
        model = trainer.accelerator.unwrap_model(trainer.model)
        outputs.save_adapter(
            model,
            inputs.tokenizer,
            state.recipe,
            run_dir,
            base_model,
            {k: v for k, v in metrics.items() if v is not None},
            gathered,
        )
    s = built.summary
    final = outputs.record(
        run_dir,
        status=runs.WORSE_THAN_BASE if worse else "finished",
        adapter={
            "method": state.recipe.adapter.method,
            "trainable_params": s["trainable_params"],
            "total_params": s["total_params"],
            "matched_modules": s["matched_modules"],
        },
        train=train_block,
        eval={"loss_before": before.loss, "loss_after": after},
        finished=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    )
    dist.barrier()  # the adapter is on disk before any rank reports success
    return Result(final, trainer.model, run_dir)


def _train_block(state: Run, memory: Memory, built: Built, result, timing: dict) -> dict:
    """run.json's "train": steps, tokens, time and memory of the fit, and the settings that shaped its speed."""
    throughput, metrics = built.callbacks["Throughput"], built.callbacks["Metrics"]
    tokens, tokens_per_s = throughput.at_end or throughput.totals()  # summed over ranks, when the last step ended
    started = outputs.process_start()
    return {
        "steps": built.trainer.state.global_step,
        "tokens": tokens,
        "seconds": round(timing["train_s"], 2),
        "tokens_per_s": round(tokens_per_s, 2),
        "setup_seconds": round(timing["setup_s"], 2),
        # from process start, as a user waits for it (imports and model load included)
        "time_to_first_step_s": round(throughput.first_step_wall - started, 2) if throughput.first_step_at else None,
        # of which: process start to the training loop (imports, data, model, eval before), then step 1 itself
        "time_to_train_start_s": round(timing["train_started_wall"] - started, 2),
        "peak_memory_mb": round(outputs.peak_memory_mb(), 1),
        "train_loss": round(result.training_loss, 4),
        "first_logged_loss": metrics.first_loss,
        "last_logged_loss": metrics.last_loss,
        "lm_head": built.trainer.lm_head,
        "gradient_checkpointing": memory.checkpointing,
        "compiled_layers": built.compiled,
        "prefaulted_mb": round(memory.prefaulted / 2**20),
    }


def _vocab_size(model) -> int | None:
    """Columns of the logits: ln of it is the loss of a model that predicts every token equally likely."""
    config = getattr(model, "config", None)
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    return getattr(text, "vocab_size", None)


def _threads() -> int:
    import torch

    return torch.get_num_threads()
