"""The recipe's training section: optimisation, batching, memory and the checks that stop a run."""

from __future__ import annotations

import math
import re
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from lorafit.core.methods import OPTIMIZERS
from lorafit.recipe.preference import Objective
from lorafit.recipe.sections import Section

Optimizer = Literal[OPTIMIZERS]


EPOCH_FORM = re.compile(r"\s*(\d+(?:\.\d*)?|\.\d+)\s*epochs?\s*")


def epoch_fraction(every: int | str) -> float | None:
    """`0.25epoch` -> 0.25; None for a count of steps."""
    if isinstance(every, str):
        match = EPOCH_FORM.fullmatch(every)
        return float(match.group(1)) if match else None
    return None


def steps_for(every: int | str, steps_per_epoch: int) -> int:
    """An eval_every / save_every in optimizer steps: a step count as it is, a share of an epoch rounded to the
    nearest step (at least 1) once the number of steps per epoch is known."""
    fraction = epoch_fraction(every)
    if fraction is None:
        return int(every)
    return max(1, math.floor(fraction * steps_per_epoch + 0.5))


def steps_per_epoch(rows: int, batch_size: int, grad_accum: int, world_size: int = 1) -> int:
    """Optimizer steps in one pass over `rows` (examples, or packed sequences), as transformers' Trainer counts
    them: micro-batches per rank, then a step per grad_accum of them (a last partial one counts)."""
    batches = math.ceil(rows / (batch_size * max(1, world_size)))
    return max(1, math.ceil(batches / grad_accum))


def _every(value: Any, what: str) -> Any:
    """A step count, or a share of an epoch written `0.25epoch` / `2 epochs`, kept as `0.25epoch`."""
    if isinstance(value, str):
        fraction = epoch_fraction(value)
        if fraction is None:
            raise ValueError(
                f"{what} is a number of steps or a share of an epoch such as `0.25epoch` (4 times per epoch), got {value!r}"
            )
        if fraction <= 0:
            raise ValueError(
                f"{what}: {value!r} is never; use 0 for {'only at the end' if what == 'eval_every' else 'no checkpoints'}"
            )
        return f"{fraction:g}epoch"
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{what} is a number of steps or a share of an epoch such as `0.25epoch`, got {value!r}")
    if value < 0:
        raise ValueError(f"{what} must be 0 or more steps, got {value}")
    return value


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

    @model_validator(mode="before")
    @classmethod
    def warmup_steps_replace_the_ratio(cls, values: Any) -> Any:
        # warmup_steps alone turns the default ratio off (so the resolved recipe says so explicitly).
        if isinstance(values, dict) and values.get("warmup_steps") and "warmup_ratio" not in values:
            values = {**values, "warmup_ratio": 0.0}
        return values

    @model_validator(mode="after")
    def one_warmup(self) -> TrainingSection:
        if self.warmup_steps and self.warmup_ratio:
            raise ValueError(
                f"warmup_steps ({self.warmup_steps}) and warmup_ratio ({self.warmup_ratio}) are both set; keep one "
                "(warmup_ratio: 0 to warm up for warmup_steps)"
            )
        return self

    objective: Objective = Field(
        "sft",
        description="What is trained: `sft` (supervised fine-tuning on chat / text data), or a preference objective "
        "on preference data with TRL's trainers: `dpo`, `kto` (unpaired labels; pairs are split), `orpo` and "
        "`simpo` (both reference-free). Their knobs are in the `preference` section.",
    )
    epochs: float = Field(3.0, gt=0, description="Passes over the training data (ignored when max_steps > 0).")
    max_steps: int = Field(
        -1, ge=-1, description="Stop after this many optimizer steps; -1 (or null: no limit) to use epochs."
    )
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
    warmup_ratio: float = Field(
        0.05,
        ge=0,
        lt=1,
        description="Fraction of steps spent warming the learning rate up (0 when warmup_steps is set alone).",
    )
    warmup_steps: int | None = Field(
        None,
        ge=0,
        description="Warm the learning rate up for this many optimizer steps instead of a fraction; null to use "
        "warmup_ratio. One or the other.",
    )
    weight_decay: float = Field(0.0, ge=0, description="Decoupled weight decay on trainable parameters.")
    max_grad_norm: float = Field(1.0, ge=0, description="Gradient clipping norm; 0 (or null) disables clipping.")
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
    tf32: bool = Field(
        False,
        description="CUDA (Ampere and newer): run float32 matmuls in TF32, several times faster for a mantissa of 10 "
        "bits; no effect on a CPU or with bf16/fp16 compute.",
    )
    group_by_length: bool = Field(
        True,
        description="Batch examples of similar length together so less compute is spent on padding (dpo: pairs by "
        "their longer side, the longest batch first; kto, orpo and simpo batch in TRL's order and default to false).",
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
    eval_every: int | str = Field(
        0,
        description="Evaluate on the held-out data every this many optimizer steps, or per share of an epoch "
        "(`0.25epoch`: 4 times per epoch, resolved to steps once the data is tokenized and packed, and printed); "
        "0: only at the end. Needs held-out data (data.eval or data.eval_split).",
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
    save_every: int | str = Field(
        0,
        description="Write a checkpoint every this many optimizer steps, or per share of an epoch (`1epoch`: at "
        "each epoch's end, resolved to steps like eval_every); 0: only the final adapter.",
    )
    keep_checkpoints: int = Field(2, gt=0, description="How many recent checkpoints to keep.")
    seed: int = Field(42, ge=0, lt=2**32, description="Seed for data order, eval split, adapter init and dropout.")

    @field_validator("gradient_checkpointing", "compile", mode="before")
    @classmethod
    def yaml_on_off(cls, v: Any) -> Any:
        return _on_off(v)

    @field_validator("eval_every", "save_every", mode="before")
    @classmethod
    def steps_or_epochs(cls, v: Any, info) -> Any:
        return _every(v, info.field_name)

    @field_validator("max_steps", mode="before")
    @classmethod
    def null_is_no_limit(cls, v: Any) -> Any:
        return -1 if v is None else v

    @field_validator("max_grad_norm", mode="before")
    @classmethod
    def null_is_no_clipping(cls, v: Any) -> Any:
        return 0.0 if v is None else v

    @field_validator("seed", mode="before")
    @classmethod
    def seeded(cls, v: Any) -> Any:
        if v is None:
            raise ValueError("a lorafit run is always seeded, so it can be reproduced; give a number (e.g. 42)")
        return v

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
