"""The recipe's training section: optimisation, batching, memory and the checks that stop a run."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from lorafit.core.methods import OPTIMIZERS
from lorafit.recipe.preference import Objective
from lorafit.recipe.sections import Section

Optimizer = Literal[OPTIMIZERS]


def _on_off(value: Any) -> Any:
    # YAML 1.1 reads `on`/`off` as booleans; accept both spellings.
    if value is True:
        return "on"
    if value is False:
        return "off"
    return value


class TrainingSection(Section):
    @model_validator(mode="before")
    @classmethod
    def renamed_fused_lm_head(cls, values: Any) -> Any:
        # Run directories written before lorafit 0.2 resolve `fused_lm_head: auto|on|off`; it became `lm_head`.
        if isinstance(values, dict) and "fused_lm_head" in values and "lm_head" not in values:
            old = _on_off(values["fused_lm_head"])
            values = {k: v for k, v in values.items() if k != "fused_lm_head"}
            values["lm_head"] = {"on": "chunked", "off": "full"}.get(old, old)
        return values

    objective: Objective = Field(
        "sft",
        description="What is trained: `sft` (supervised fine-tuning on chat / text data), or a preference objective "
        "on preference data with TRL's trainers: `dpo`, `kto` (unpaired labels; pairs are split), `orpo` and "
        "`simpo` (both reference-free). Their knobs are in the `preference` section.",
    )
    epochs: float = Field(3.0, gt=0, description="Passes over the training data (ignored when max_steps > 0).")
    max_steps: int = Field(-1, ge=-1, description="Stop after this many optimizer steps; -1 to use epochs.")
    lr: float = Field(2.0e-4, gt=0, description="Peak learning rate.")
    batch_size: int = Field(8, gt=0, description="Micro-batch size per device.")
    grad_accum: int = Field(1, gt=0, description="Micro-batches accumulated per optimizer step.")
    auto_batch_size: bool = Field(
        False,
        description="On out-of-memory, halve batch_size and raise grad_accum to keep the global batch, then go on from the "
        "last checkpoint; each change is logged in run.json. Single-process runs only (multi-GPU runs stop with exit 4).",
    )
    max_length: int = Field(
        512, gt=0, description="Examples longer than this many tokens are truncated (or dropped, see data.drop_long)."
    )
    optimizer: Optimizer = Field(
        "adamw_torch", description="Optimizer; 8-bit and paged variants come from bitsandbytes."
    )
    scheduler: Literal["cosine", "linear", "constant", "constant_with_warmup"] = Field(
        "cosine", description="Learning-rate schedule after warmup."
    )
    warmup_ratio: float = Field(0.05, ge=0, lt=1, description="Fraction of steps spent warming the learning rate up.")
    weight_decay: float = Field(0.0, ge=0, description="Decoupled weight decay on trainable parameters.")
    max_grad_norm: float = Field(1.0, ge=0, description="Gradient clipping norm; 0 disables clipping.")
    divergence_factor: float | None = Field(
        3.0,
        ge=0,
        description="Stop the run (exit 5, no adapter saved) when the mean of the last 3 logged train losses exceeds "
        "this many times the mean of the first 3: a learning rate too high for the model. Raise it for an objective "
        "whose loss may rise early (a warm restart); null or 0 turns the check off. A collapse to uniform prediction "
        "(loss ln(vocab size) with gradient norm 0 for 3 logged steps) always stops the run.",
    )
    gradient_checkpointing: Literal["auto", "on", "off"] = Field(
        "auto",
        description="Recompute activations in backward to save memory at the cost of speed. `auto`: on only where the memory plan is tight.",
    )
    precision: Literal["auto", "fp32", "bf16", "fp16"] = Field(
        "auto",
        description="Training precision. `auto`: fp32 on CPU, bf16 on GPUs that have it, fp16 with loss scaling otherwise.",
    )
    group_by_length: bool = Field(
        True, description="Batch examples of similar length together so less compute is spent on padding."
    )
    lm_head: Literal["auto", "trained", "chunked", "full"] = Field(
        "auto",
        description="How the LM head and loss run. `trained`: logits only where the next token is trained (same loss; "
        "half the LM head's compute and logits memory on chat data); `chunked`: TRL's chunked head, never the full "
        "logits, plus entropy/accuracy metrics; `full`: logits at every position. `auto`: chunked on GPUs, trained "
        "elsewhere (full for prompt tuning).",
    )
    compile: Literal["on", "off"] = Field(
        "off",
        description="torch.compile each decoder layer (inductor, dynamic lengths; kernels cached in the lorafit cache): "
        "faster steps and a lower peak, for compile time on first use (the README's speed table has the figures). "
        "Needs a C++ compiler; turn it on for long runs, where the compile time pays off.",
    )
    keep_freed_memory: bool = Field(
        True,
        description="Linux/glibc: keep freed memory in the heap between steps instead of returning it to the OS, so a "
        "step reuses the last one's pages instead of faulting them in again. Turn it off if other processes need "
        "the memory back between steps.",
    )
    huge_pages: bool = Field(
        True,
        description="Linux: back tensors of 2 MB and up with transparent huge pages (PyTorch's THP_MEM_ALLOC_ENABLE): "
        "less heap fragmentation and fewer first-step page faults. Turn it off where huge pages are unavailable or slow.",
    )
    prefault_memory: bool = Field(
        True,
        description="CPU, Linux/glibc, with keep_freed_memory: while libraries and the model load, fault in the memory "
        "the first step will allocate (the plan's activations, logits, gradients and optimizer state; at most 1.75 GiB) "
        "on the spare core, so step 1 comes sooner. Turn it off on a machine with no core to spare.",
    )
    logging_steps: int = Field(1, gt=0, description="Log loss, tokens/s and learning rate every this many steps.")
    eval_every: int = Field(
        0, ge=0, description="Evaluate on the held-out split every this many steps; 0: only at the end."
    )
    overfit_patience: int = Field(
        3,
        ge=0,
        description="Warn of over-fitting (and write its first step to run.json as overfit_from_step) when the held-out "
        "loss rises while the mean train loss since the evaluation before falls, at this many evaluations in a row; "
        "needs eval_every. Raise it for a noisy held-out split; 0 turns the warning off.",
    )
    eval_before_at_end: bool = Field(
        True,
        description="Measure the held-out loss 'before training' after training, on the base with the adapter switched "
        "off: the same model for methods whose adapter starts as a no-op (lora, dora, rslora, loraplus, eva, ia3), "
        "and the first step comes one evaluation sooner. Other methods, and false, measure it before step 1.",
    )
    save_every: int = Field(0, ge=0, description="Write a checkpoint every this many steps; 0: only the final adapter.")
    keep_checkpoints: int = Field(2, gt=0, description="How many recent checkpoints to keep.")
    seed: int = Field(42, ge=0, lt=2**32, description="Seed for data order, eval split, adapter init and dropout.")

    @field_validator("gradient_checkpointing", "compile", mode="before")
    @classmethod
    def yaml_on_off(cls, v: Any) -> Any:
        return _on_off(v)

    @field_validator("divergence_factor")
    @classmethod
    def factor_above_one(cls, v: float | None) -> float | None:
        if v is not None and 0 < v <= 1:
            raise ValueError(
                f"divergence_factor {v} would stop a run whose loss merely stays flat; give a factor above 1, or null to turn the check off"
            )
        return v or None

    @field_validator("max_steps")
    @classmethod
    def some_steps(cls, v: int) -> int:
        if v == 0:
            raise ValueError("0 steps trains nothing: give a positive count, or -1 to train for training.epochs")
        return v
