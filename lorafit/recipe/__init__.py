"""The recipe schema: every field, its default and its description live here and nowhere else.

Loading keeps YAML line numbers so that every error can point at the line to fix, and reports all
errors at once. Nothing heavy is imported: `lorafit validate` must answer schema problems instantly.
"""

from __future__ import annotations

import difflib
import os
import re
from pathlib import Path
from typing import Any, Literal, get_args

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator, model_validator

from lorafit.core.chat_templates import CHAT_TEMPLATES
from lorafit.core.errors import MissingError, RecipeError
from lorafit.core.methods import (
    DATA_INIT,
    LORA_FAMILY,
    METHODS,
    OPTIMIZERS,
    PROMPT_LEARNING,
    RESIDUAL_INIT,
    TARGET_KEYWORDS,
    is_module_name,
)
from lorafit.core.modelinfo import context_limit
from lorafit.core.textfiles import describe_bytes, encoding_fix
from lorafit.recipe import preference as _preference
from lorafit.recipe.preference import Objective, PreferenceSection

EMBEDDED_MODEL = "embedded:smollm2-135m-instruct"

Method = Literal[METHODS]
Tracker = Literal["tensorboard", "mlflow", "wandb", "trackio", "none"]
Optimizer = Literal[OPTIMIZERS]


class Section(BaseModel):
    """Frozen, and unknown keys are errors: a typo must never silently become a default.

    Non-finite numbers (`.inf`, `.nan`) are errors in every numeric field: `epochs: .inf` is a run that never ends."""

    model_config = ConfigDict(frozen=True, extra="forbid", validate_default=True, allow_inf_nan=False)


def _on_off(value: Any) -> Any:
    # YAML 1.1 reads `on`/`off` as booleans; accept both spellings.
    if value is True:
        return "on"
    if value is False:
        return "off"
    return value


class ModelSection(Section):
    name: str = Field(
        EMBEDDED_MODEL,
        description="Base model: `embedded:smollm2-135m-instruct` (ships with lorafit, offline), a hub id, or a local directory.",
    )
    revision: str | None = Field(None, description="Hub revision (branch, tag or commit) to pin a hub model to.")
    trust_remote_code: bool = Field(
        False, description="Run the model repository's own Python code. Only for models you trust."
    )
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto",
        description="Weight and compute dtype. `auto`: float32 on CPU, bfloat16 on GPUs that support it, float16 otherwise.",
    )
    attn_implementation: Literal["auto", "sdpa", "eager", "flash_attention_2"] = Field(
        "auto", description="Attention kernel. `auto`: sdpa (PyTorch's fused attention)."
    )


class DataSection(Section):
    @model_validator(mode="before")
    @classmethod
    def eval_file_means_no_split(cls, values: Any) -> Any:
        # Giving data.eval alone turns the default split off (so the resolved recipe says so explicitly).
        if isinstance(values, dict) and values.get("eval") is not None and "eval_split" not in values:
            values = {**values, "eval_split": None}
        return values

    class Fields(Section):
        """Your records' key names for lorafit's; leave out the ones that already match."""

        messages: str | None = Field(
            None, description="The list of chat turns (default `messages`; `conversations` for sharegpt)."
        )
        role: str | None = Field(None, description="A turn's speaker key (default `role`; `from` for sharegpt).")
        content: str | None = Field(None, description="A turn's text key (default `content`; `value` for sharegpt).")
        system: str | None = Field(None, description="alpaca: optional system prompt (default `system`).")
        instruction: str | None = Field(None, description="alpaca: the task (default `instruction`).")
        input: str | None = Field(None, description="alpaca: optional extra input (default `input`).")
        output: str | None = Field(None, description="alpaca: the answer that is trained on (default `output`).")
        prompt: str | None = Field(None, description="prompt_completion: the prompt (default `prompt`).")
        completion: str | None = Field(
            None, description="prompt_completion: the trained completion (default `completion`)."
        )
        text: str | None = Field(None, description="text: the whole trained document (default `text`).")
        chosen: str | None = Field(None, description="Preference data: the preferred completion (default `chosen`).")
        rejected: str | None = Field(
            None, description="Preference data: the dispreferred completion (default `rejected`)."
        )
        label: str | None = Field(None, description="KTO data: whether the completion is desirable (default `label`).")
        roles: dict[str, Literal["system", "user", "assistant"]] = Field(
            default_factory=dict,
            description="Your role values mapped to lorafit's, e.g. {human: user, bot: assistant}.",
        )

    class Source(Section):
        """One data source with its own sampling weight (and hub split/subset)."""

        path: str = Field(
            ..., description="A .jsonl/.json/.parquet/.csv file, a directory of them, or a hub dataset id."
        )
        weight: float = Field(
            1.0,
            gt=0,
            le=100,
            description="Training sampling weight: 0.5 keeps a seeded half of the rows, 2 repeats them twice, 1.5 keeps all plus a seeded half; at most 100 (repeat more with training.epochs).",
        )
        split: str | None = Field(None, description="Hub datasets: the split to load (default `train`).")
        subset: str | None = Field(None, description="Hub datasets: the configuration (subset) name.")
        revision: str | None = Field(
            None,
            description="Hub datasets: the revision (branch, tag or commit) to pin, so a shared recipe always reads the same rows.",
        )
        fields: DataSection.Fields | None = Field(
            None, description="Key names for this source only (replaces data.fields)."
        )

    train: str | Source | list[str | Source] = Field(
        ...,
        description="Training data: a .jsonl/.json/.parquet/.csv file, a directory of them, a hub dataset id, a {path, weight, split, subset} source, or a list of these. Relative paths resolve against the recipe file.",
    )
    eval: str | Source | list[str | Source] | None = Field(
        None,
        description="Held-out data, in the same forms as `train` (weights do not apply). When set, `eval_split` is not used.",
    )
    fields: Fields = Field(
        default_factory=Fields,
        description="Key names when your records do not use lorafit's (e.g. {messages: conversation, role: speaker, content: text}).",
    )
    format: Literal["auto", "messages", "sharegpt", "alpaca", "prompt_completion", "text"] = Field(
        "auto", description="Record format; `auto` detects it for each source from its records' keys (after `fields`)."
    )
    eval_split: float | None = Field(
        0.1,
        description="Fraction of the training data held out for evaluation (seeded by training.seed); null for none.",
    )
    train_on: Literal["assistant", "all", "last_assistant"] = Field(
        "assistant",
        description="Which tokens carry loss: every assistant turn (end-of-turn token included), all tokens, or the last assistant turn only.",
    )
    chat_template: str | None = Field(
        None,
        description="The model's own template when null; else a named template (`chatml`) or a Jinja template string. Base models without one get ChatML and a warning.",
    )
    packing: bool = Field(
        False,
        description="Pack several examples into each sequence of up to training.max_length tokens (batch_size then counts packed sequences); examples never attend to each other.",
    )
    drop_long: bool = Field(
        False, description="Drop examples longer than training.max_length instead of truncating them."
    )
    on_bad_rows: Literal["error", "skip"] = Field(
        "error", description="What a malformed record does: stop with file:line errors, or be skipped and counted."
    )
    cache: bool = Field(
        True,
        description="Reuse the tokenized data of an earlier run with the same files, tokenizer and data settings (kept in the lorafit cache).",
    )
    preserve: str | None = Field(
        None,
        description="Keep off-task behaviour: mix the base model's own greedy answers to general prompts into training, "
        "so the adapter learns to leave them alone (generated once per model, cached). `general`: lorafit's 200 built-in "
        "prompts (everyday questions, arithmetic, short writing, instructions); or a chat JSONL of your own prompts. "
        "Turn it on when `lorafit eval` warns that the adapter drifts off-task.",
    )
    preserve_ratio: float = Field(
        0.25,
        gt=0,
        le=4,
        description="data.preserve: preserved examples per training example (0.25: one for every four; prompts repeat "
        "when there are fewer). Raise it if off-task drift stays high, lower it if task accuracy drops.",
    )

    @field_validator("chat_template")
    @classmethod
    def known_template(cls, v: str | None) -> str | None:
        if v is None or v in CHAT_TEMPLATES or "{{" in v or "{%" in v:
            return v
        close = difflib.get_close_matches(v, list(CHAT_TEMPLATES), n=1, cutoff=0.5)
        hint = f"did you mean '{close[0]}'?" if close else f"named templates: {', '.join(CHAT_TEMPLATES)}"
        raise ValueError(f"{v!r} is neither a named template nor a Jinja template; {hint}")

    @field_validator("train", "eval", mode="before")
    @classmethod
    def one_error_per_bad_source(cls, v: Any) -> Any:
        # Validate {path, weight, ...} entries here so a typo gives one error at its own line,
        # not one per branch of the str | Source | list union.
        items = v if isinstance(v, list) else [v]
        out, errors = [], []
        for i, item in enumerate(items):
            if isinstance(item, dict):
                try:
                    item = DataSection.Source.model_validate(item)
                except ValidationError as exc:
                    prefix = (i,) if isinstance(v, list) else ()
                    errors += [{**e, "loc": prefix + tuple(e["loc"])} for e in exc.errors()]
            out.append(item)
        if errors:
            raise ValidationError.from_exception_data("Source", errors)
        return out if isinstance(v, list) else out[0]

    @field_validator("eval")
    @classmethod
    def eval_has_no_weights(cls, v: Any) -> Any:
        for s in v if isinstance(v, list) else [v]:
            if isinstance(s, DataSection.Source) and s.weight != 1.0:
                raise ValueError("weights apply to data.train sources only")
        return v

    def sources(self, which: Literal["train", "eval"] = "train") -> list[DataSection.Source]:
        """`train` or `eval` as a list of Source objects (a bare string is a Source with defaults)."""
        spec = getattr(self, which)
        items = [] if spec is None else spec if isinstance(spec, list) else [spec]
        return [DataSection.Source(path=s) if isinstance(s, str) else s for s in items]


class AdapterSection(Section):
    method: Method = Field(
        "lora",
        description="Adapter method, all implemented by PEFT: lora, dora (magnitude + direction), rslora (alpha/sqrt(r) scaling), "
        "loraplus (B learns loraplus_lr_ratio x faster than A), pissa / olora / corda (start from the weight's principal "
        "part, the base keeps the residual), eva (start from the data's activation SVD), loftq (start from a 4-bit base's "
        "quantisation error; CUDA), ia3 (learned scaling vectors), prompt_tuning and prefix_tuning (virtual tokens).",
    )
    r: int = Field(16, gt=0, description="LoRA rank: the width of the low-rank update (EVA's average rank).")
    alpha: float = Field(
        32.0, description="LoRA scaling numerator: the update is scaled by alpha/r (alpha/sqrt(r) with rsLoRA)."
    )
    dropout: float = Field(0.05, ge=0.0, lt=1.0, description="Dropout on the adapter's input.")
    target_modules: str | list[str] = Field(
        "all-linear",
        description="Where adapters attach: `all-linear`, `attention` (q,k,v,o), `qv`, `mlp` (gate, up, down), a module name, "
        "a list of names, or a regex matched against full module names (e.g. `.*\\.(q|v)_proj`). For ia3, `all-linear` "
        "means PEFT's defaults for the architecture (keys, values and the feed-forward down projection).",
    )
    layers: tuple[int, int] | None = Field(
        None,
        description="Only adapt decoder layers start..end, both included, 0-based (e.g. [20, 29]); null for all layers.",
    )
    modules_to_save: list[str] = Field(
        default_factory=list,
        description="Modules trained in full and saved with the adapter (e.g. embed_tokens, lm_head).",
    )
    use_rslora: bool = Field(
        False,
        description="Scale by alpha/sqrt(r) (rank-stabilised LoRA); implied by method rslora, combines with any LoRA method.",
    )
    use_dora: bool = Field(
        False,
        description="Add DoRA's magnitude vector; implied by method dora, combines with lora, rslora, loraplus and eva.",
    )
    loraplus_lr_ratio: float = Field(
        16.0, gt=0, description="LoRA+: learning-rate ratio of B over A (method loraplus)."
    )
    pissa_niter: int | None = Field(
        4,
        ge=0,
        description="PiSSA: subspace iterations of the fast SVD (a few match the exact SVD at a fraction of its cost); null for the exact SVD.",
    )
    eva_rho: float = Field(
        2.0,
        ge=1.0,
        description="EVA: a layer's rank may grow to rho x r as ranks are redistributed; 1.0 keeps every layer at r.",
    )
    corda_mode: Literal["ipm", "kpm"] = Field(
        "ipm",
        description="CorDA: `ipm` (instruction-previewed: fastest on your task) or `kpm` (knowledge-preserved: forgets less).",
    )
    init_examples: int = Field(
        32, gt=0, description="EVA / CorDA: training examples run through the model to initialise the adapter."
    )
    num_virtual_tokens: int = Field(20, gt=0, description="Prompt/prefix tuning: number of virtual tokens.")
    prompt_init_text: str | None = Field(
        None, description="Prompt tuning: initialise the virtual tokens from this text instead of randomly."
    )
    init_from: str | None = Field(
        None,
        description="A finished run directory (e.g. runs/sft) whose adapter this run continues training; its shape "
        "(method, r, alpha, targets) is the parent's. The run records the parent and its adapter's sha256, and "
        "refuses to start when that adapter is missing or changed.",
    )
    init_sha256: str | None = Field(
        None,
        description="The sha256 of adapter.init_from's adapter weights: filled in when the run starts (the resolved "
        "recipe records it); a run whose parent adapter no longer has it refuses to start.",
    )

    @field_validator("alpha")
    @classmethod
    def alpha_positive(cls, v: float) -> float:
        if v <= 0:
            raise ValueError("must be > 0 (try 2*r, e.g. 32 for r=16)")
        return v

    @field_validator("target_modules")
    @classmethod
    def targets_nonempty_and_valid(cls, v: str | list[str]) -> str | list[str]:
        import re

        if not v:
            raise ValueError("must name at least one module (or use all-linear)")
        if isinstance(v, str) and not re.fullmatch(r"[\w.-]+", v):
            try:
                re.compile(v)
            except re.error as exc:
                raise ValueError(f"not a valid regex: {exc}") from None
        return v

    @field_validator("layers")
    @classmethod
    def layer_range(cls, v: tuple[int, int] | None) -> tuple[int, int] | None:
        if v is not None and not 0 <= v[0] <= v[1]:
            raise ValueError("must be [start, end] with 0 <= start <= end (both included)")
        return v


class QuantizationSection(Section):
    load_in_4bit: bool = Field(
        False,
        description="Load the frozen base in 4 bits with bitsandbytes (QLoRA; on CUDA, and on CPU with bitsandbytes' CPU backend).",
    )
    load_in_8bit: bool = Field(False, description="Load the frozen base in 8 bits with bitsandbytes (LLM.int8).")
    quant_type: Literal["nf4", "fp4"] = Field("nf4", description="4-bit data type; NF4 is QLoRA's.")
    double_quant: bool = Field(
        True, description="4-bit: quantize the quantization constants too (saves ~0.4 bit/param)."
    )
    compute_dtype: Literal["auto", "bfloat16", "float16", "float32"] = Field(
        "auto", description="4-bit: dtype of the dequantized matmuls; `auto` follows model.dtype (float32 on CPU)."
    )


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


class OutputSection(Section):
    dir: str | None = Field(
        None,
        description="Run directory. Default: runs/<recipe file name without .yaml>. Relative paths resolve against the current directory.",
    )
    report_to: list[Tracker] = Field(
        default_factory=lambda: ["tensorboard"],
        description="Trackers to log to through transformers' integrations: tensorboard (offline, into RUN_DIR/tensorboard), "
        "mlflow, wandb (online unless WANDB_MODE=offline), trackio; [none] for no tracker.",
    )
    tags: list[str] = Field(
        default_factory=list,
        description="Labels for this run: logged to the trackers and kept in the run registry (`lorafit runs list --tag`).",
    )

    @field_validator("report_to", mode="before")
    @classmethod
    def one_tracker_or_list(cls, v: Any) -> Any:
        return [v] if isinstance(v, str) else v

    @field_validator("report_to")
    @classmethod
    def none_is_alone(cls, v: list[str]) -> list[str]:
        if "none" in v and len(v) > 1:
            raise ValueError("`none` turns tracking off and cannot be combined with a tracker")
        return v or ["none"]


class Recipe(Section):
    """A whole recipe. Passed everywhere as is; never turned back into a dict."""

    model: ModelSection = Field(default_factory=ModelSection, description="The base model.")
    data: DataSection = Field(..., description="Training and evaluation data.")
    adapter: AdapterSection = Field(default_factory=AdapterSection, description="The adapter method and its shape.")
    quantization: QuantizationSection = Field(
        default_factory=QuantizationSection, description="Quantization of the frozen base (QLoRA)."
    )
    training: TrainingSection = Field(default_factory=TrainingSection, description="Optimisation and batching.")
    preference: PreferenceSection | None = Field(
        None,
        description="Knobs of a preference objective (training.objective dpo / kto / orpo / simpo), each TRL's "
        "default unless set; null for sft.",
    )
    output: OutputSection = Field(default_factory=OutputSection, description="Where the run goes.")

    @model_validator(mode="before")
    @classmethod
    def preference_defaults(cls, values: Any) -> Any:
        return _preference.fill_defaults(values)

    @model_validator(mode="after")
    def preference_rules(self) -> Recipe:
        _preference.check(self)
        return self

    @model_validator(mode="after")
    def eval_source_is_unambiguous(self) -> Recipe:
        if self.data.eval is not None and self.data.eval_split is not None:
            raise ValueError(
                "data.eval and data.eval_split are both set; keep one (set eval_split: null to use data.eval)"
            )
        return self

    @model_validator(mode="after")
    def eval_split_in_range(self) -> Recipe:
        split = self.data.eval_split
        if split is not None and not 0 < split < 1:
            raise ValueError(f"data.eval_split must be between 0 and 1 (exclusive), got {split}; use null for no split")
        return self

    @model_validator(mode="after")
    def one_quantization(self) -> Recipe:
        q = self.quantization
        if q.load_in_4bit and q.load_in_8bit:
            raise ValueError("quantization.load_in_4bit and load_in_8bit are both true; choose one")
        if not q.load_in_4bit:
            # 4-bit knobs without 4-bit loading would silently train in full precision (or 8-bit).
            for name in ("quant_type", "double_quant", "compute_dtype"):
                if getattr(q, name) != QuantizationSection.model_fields[name].default:
                    raise ValueError(f"quantization.{name} only applies with quantization.load_in_4bit: true")
        return self

    @model_validator(mode="after")
    def adapter_options_agree(self) -> Recipe:
        """Knobs that belong to another method, and combinations PEFT cannot honour, are errors, not no-ops.

        Compared by value against the default, not by "was it set": a resolved recipe writes every default
        out and must load back.
        """
        a = self.adapter
        m = a.method
        changed = {
            name
            for name, field in AdapterSection.model_fields.items()
            if getattr(a, name) != field.get_default(call_default_factory=True)
        }
        only = {  # knob -> the methods it applies to
            "use_rslora": LORA_FAMILY,
            "use_dora": LORA_FAMILY,
            "loraplus_lr_ratio": {"loraplus"},
            "pissa_niter": {"pissa"},
            "eva_rho": {"eva"},
            "corda_mode": {"corda"},
            "init_examples": DATA_INIT,
            "num_virtual_tokens": PROMPT_LEARNING,
            "prompt_init_text": {"prompt_tuning"},
        }
        if m in PROMPT_LEARNING:
            for knob in ("target_modules", "layers", "modules_to_save"):
                if knob in changed:
                    raise ValueError(
                        f"adapter.{knob} does not apply to {m}: it adds virtual tokens and changes no module"
                    )
        only["layers"] = LORA_FAMILY  # PEFT's IA3 has no layer ranges
        for knob, methods in only.items():
            if knob in changed and m not in methods:
                which = (
                    f"LoRA-family methods ({', '.join(sorted(methods))})"
                    if methods == LORA_FAMILY
                    else f"method {' / '.join(sorted(methods))}"
                )
                raise ValueError(f"adapter.{knob} only applies to {which}, not {m}")
        if (a.use_dora or m == "dora") and m in RESIDUAL_INIT | {"loftq"}:
            raise ValueError(
                f"DoRA does not combine with {m}: its starting A and B are computed for plain LoRA"
                + (
                    " and the saved adapter is converted to plain LoRA, which drops DoRA's magnitudes"
                    if m in RESIDUAL_INIT
                    else ""
                )
            )
        if m in RESIDUAL_INIT and a.modules_to_save:
            raise ValueError(
                f"adapter.modules_to_save does not combine with {m}: PEFT's conversion of its adapter to plain LoRA drops them; use method lora"
            )
        if m in RESIDUAL_INIT and (self.quantization.load_in_4bit or self.quantization.load_in_8bit):
            raise ValueError(
                f"{m} rewrites the base weights into a residual and needs them in full precision; with a quantized base use method lora (or loftq on CUDA)"
            )
        if m == "loftq":
            if not self.quantization.load_in_4bit:
                raise ValueError(
                    "method loftq starts LoRA from a 4-bit base's quantisation error: set quantization.load_in_4bit: true"
                )
            if a.use_rslora or a.alpha != a.r:
                raise ValueError(
                    f"method loftq needs the LoRA scaling to be 1 (PEFT sets A·B to the quantisation error itself): set adapter.alpha: {a.r} (= r) and use_rslora: false"
                )
        targets = a.target_modules
        if (
            a.layers is not None
            and isinstance(targets, str)
            and targets not in TARGET_KEYWORDS
            and not is_module_name(targets)
        ):
            raise ValueError(
                "adapter.layers does not combine with a regex target_modules (PEFT applies layer ranges to names); list the module names instead"
            )
        return self

    @model_validator(mode="after")
    def precision_agrees_with_dtype(self, info: ValidationInfo) -> Recipe:
        """model.dtype decides the compute dtype when set: a training.precision that says otherwise would be ignored.
        Not applied to a run's saved recipe.yaml (written before this rule): the run is what it was."""
        if (info.context or {}).get("saved_run"):
            return self
        wanted = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}.get(self.training.precision)
        dtype = self.model.dtype
        if wanted and dtype != "auto" and dtype != wanted:
            raise ValueError(
                f"training.precision {self.training.precision} contradicts model.dtype {dtype} (the weights' dtype "
                f"decides what the run computes in); set one of them to auto, or make them agree (model.dtype: {wanted})"
            )
        return self

    @model_validator(mode="after")
    def lm_head_sees_the_labels(self) -> Recipe:
        if self.training.lm_head == "trained" and self.adapter.method == "prompt_tuning":
            raise ValueError(
                "training.lm_head: trained needs the labels to line up with the LM head's positions, and "
                "prompt tuning prepends virtual tokens; use auto, full or chunked"
            )
        return self

    # Derived values used by several modules; kept here so there is one definition.
    @property
    def run_dir(self) -> Path:
        return Path(self.output.dir) if self.output.dir else Path("runs/run")

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False, allow_unicode=True)


# ---------------------------------------------------------------- loading with line numbers


# A recipe is a few hundred values in a few KB. These bounds are far above any real recipe and far below what
# stalls a login node: anchors and aliases share nodes, so ten lines of YAML can stand for billions of values
# ("billion laughs"), and every walk over the composed graph or the loaded data (the line index, merging,
# pydantic) pays for each of them. They are checked on the parser's events, before any graph is built.
MAX_RECIPE_BYTES = 1 << 20  # per file, and for a whole extends chain
MAX_VALUES = 100_000  # scalars and collections after alias expansion, for a whole extends chain
MAX_DEPTH = 64  # nesting of mappings and lists
MAX_EXTENDS = 16  # recipes in one extends chain


def _count_values(text: str, source: str, budget: int) -> int:
    """How many values the YAML stands for once aliases are expanded; RecipeError past `budget`, deeper than
    MAX_DEPTH, or for an alias inside its own anchor. Linear in the text: the parser is a loop, not a recursion."""
    # PyYAML's scanner holds one possible key per open flow bracket and rescans them all at every token, so
    # `[[[[...` costs quadratic time before the parser's first event: count brackets first (quotes ignored,
    # which only overcounts unbalanced brackets in strings; no recipe has 2 x MAX_DEPTH of those open).
    depth = 0
    for match in re.finditer(r"[\[\]{}]", text):
        depth = depth + 1 if match.group() in "[{" else max(0, depth - 1)
        if depth > 2 * MAX_DEPTH:
            line = text.count("\n", 0, match.start()) + 1
            raise RecipeError(
                f"{source}:{line}: nested more than {MAX_DEPTH} levels deep (a recipe needs 3 or 4)",
                "check the brackets and indentation",
            )
    sizes: dict[str, int] = {}  # anchor -> expanded values of its node
    stack: list[list] = []  # [anchor, values so far] per open mapping / list
    total = 0

    def where(event: yaml.Event) -> str:
        return f"{source}:{event.start_mark.line + 1}"

    for event in yaml.parse(text, Loader=yaml.SafeLoader):
        if isinstance(event, (yaml.ScalarEvent, yaml.AliasEvent, yaml.CollectionStartEvent)):
            if isinstance(event, yaml.AliasEvent):
                if any(frame[0] == event.anchor for frame in stack):
                    raise RecipeError(
                        f"{where(event)}: the alias *{event.anchor} is inside its own anchor &{event.anchor} (a value that contains itself)",
                        "write the value out instead of the alias",
                    )
                n = sizes.get(event.anchor, 1)
            else:
                n = 1
            total += n
            if total > budget:
                what = f" through the alias *{event.anchor}" if isinstance(event, yaml.AliasEvent) else ""
                chain = " together with the recipes it extends" if budget < MAX_VALUES else ""
                raise RecipeError(
                    f"{where(event)}: the recipe stands for more than {MAX_VALUES:,} values{what}{chain} once anchors and aliases "
                    f"are expanded (a recipe needs a few hundred); refusing to read it",
                    "write the values out, or share a base recipe with `extends` instead of nested aliases",
                )
            if isinstance(event, yaml.CollectionStartEvent):
                if len(stack) >= MAX_DEPTH:
                    raise RecipeError(
                        f"{where(event)}: nested more than {MAX_DEPTH} levels deep (a recipe needs 3 or 4)",
                        "check the brackets and indentation",
                    )
                stack.append([event.anchor, n])
                continue
            if isinstance(event, yaml.ScalarEvent) and event.anchor:
                sizes[event.anchor] = 1
            if stack:
                stack[-1][1] += n
        elif isinstance(event, yaml.CollectionEndEvent):
            anchor, n = stack.pop()
            if anchor:
                sizes[anchor] = n
            if stack:
                stack[-1][1] += n
    return total


def _line_index(root: yaml.Node | None) -> dict[tuple, int]:
    """Map each key path in a composed YAML document to its 1-based line number (bounded by `_count_values` first)."""
    index: dict[tuple, int] = {}

    def walk(node: yaml.Node, path: tuple) -> None:
        if isinstance(node, yaml.MappingNode):
            for key, value in node.value:
                if not isinstance(key, yaml.ScalarNode):
                    continue  # a list or mapping as a key: the schema refuses it, at the parent's line
                sub = path + (key.value,)
                index[sub] = key.start_mark.line + 1
                walk(value, sub)
        elif isinstance(node, yaml.SequenceNode):
            for i, item in enumerate(node.value):
                index[path + (i,)] = item.start_mark.line + 1
                walk(item, path + (i,))

    if root is not None:
        walk(root, ())
    return index


def _parse_yaml(text: str, source: str, budget: int = MAX_VALUES) -> tuple[Any, dict[tuple, int], int]:
    """The document, the line of every key path, and its expanded value count. YAML errors pass through."""
    values = _count_values(text, source, budget)
    loader = yaml.SafeLoader(text)
    try:
        root = loader.get_single_node()
        lines = _line_index(root)  # before constructing: merge keys (<<) are flattened in place by the constructor
        data = loader.construct_document(root) if root is not None else None
    finally:
        loader.dispose()
    return data, lines, values


def _yaml_error(exc: yaml.YAMLError, source: str, text: str = "") -> RecipeError:
    if isinstance(exc, yaml.reader.ReaderError):  # a control character: the reader knows its position, not its line
        line = text[: exc.position].count("\n") + 1 if text else None
        where = f"{source}:{line}" if line else source
        char = exc.character if isinstance(exc.character, str) else chr(exc.character)
        return RecipeError(
            f"{where}: not valid YAML: the control character {char!r} is not allowed in YAML text",
            "remove it (write \\t, \\0 ... inside a double-quoted string if you mean one)",
        )
    mark = getattr(exc, "problem_mark", None)
    where = f"{source}:{mark.line + 1}" if mark else source
    return RecipeError(
        f"{where}: not valid YAML: {getattr(exc, 'problem', None) or exc}", "check indentation and quoting"
    )


def _find_nul(value: Any, path: tuple = ()) -> tuple | None:
    """The key path of the first string (or key) holding a NUL character: no file name or model id has one."""
    if isinstance(value, str):
        return path if "\x00" in value else None
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for key, item in items:
        if isinstance(key, str) and "\x00" in key:
            return path + (key,)
        found = _find_nul(item, path + (key,))
        if found is not None:
            return found
    return None


def _exists(path: Path) -> bool:
    """Path.exists that answers False for names the OS cannot even look up (too long, NUL byte)."""
    try:
        return path.exists()
    except (OSError, ValueError):
        return False


def _shown(value: Any, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else f"{text[: limit - 3]}..."


def _models_in(annotation: Any) -> list[type[BaseModel]]:
    """The pydantic models a field's type can hold: `Source` in `str | Source | list[str | Source]`."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return list(dict.fromkeys(m for arg in get_args(annotation) for m in _models_in(arg)))


def _section_fields(loc: tuple) -> list[str]:
    """Known field names at a location, for did-you-mean suggestions."""
    model: type[BaseModel] = Recipe
    for part in loc:
        if isinstance(part, int):
            continue  # a list index: the same model
        field = model.model_fields.get(str(part))
        inner = _models_in(field.annotation) if field else []
        if len(inner) != 1:
            break
        model = inner[0]
    return list(model.model_fields)


def _fix_for(err: dict, loc: tuple) -> str:
    kind = err["type"]
    if kind == "extra_forbidden":
        name = str(loc[-1])
        close = difflib.get_close_matches(name, _section_fields(loc[:-1]), n=1, cutoff=0.5)
        return f"did you mean '{close[0]}'?" if close else f"known fields: {', '.join(_section_fields(loc[:-1]))}"
    if kind == "literal_error":
        expected = err.get("ctx", {}).get("expected", "")
        given = str(err.get("input"))[:100]
        options = [o.strip(" '") for o in expected.replace(" or ", ",").split(",") if o.strip()]
        close = difflib.get_close_matches(given, options, n=1, cutoff=0.5)
        return f"did you mean '{close[0]}'?" if close else f"use one of: {expected}"
    if kind == "missing":
        return "add it to the recipe"
    if kind == "finite_number":
        return "give a finite number (.inf and .nan are not values a run can use)"
    return "see `lorafit schema` for the field's type and meaning"


def _format_errors(exc: ValidationError, lines: dict[tuple, int], source: str) -> str:
    out = []
    seen = set()
    for err in exc.errors():
        # Drop pydantic's union-branch markers such as 'str' / 'list[str]' from the location.
        loc = tuple(
            p
            for p in err["loc"]
            if not (isinstance(p, str) and ("[" in p or p in {"str", "int", "float", "bool", "list"}))
        )
        dotted = ".".join(str(p) for p in loc) or "(recipe)"
        if dotted in seen and err["type"] != "extra_forbidden":
            continue
        seen.add(dotted)
        msg = err["msg"].removeprefix("Value error, ")
        # A rule across sections names its fields in the message: point at the first one the YAML sets.
        keys = [loc[:i] for i in range(len(loc), 0, -1)] or [
            tuple(name.split(".")) for name in re.findall(r"\b[a-z_]+\.[a-z_0-9]+\b", msg)
        ]
        line = next((lines[key] for key in keys if key in lines), None)
        # A line is a number in `source`, or (file, number) when the key came from a recipe it extends.
        where = f"{line[0]}:{line[1]}" if isinstance(line, tuple) else f"{source}:{line}" if line else source
        if err["type"] == "extra_forbidden":
            msg = "unknown field"
        shows_value = loc and err["type"] not in ("missing", "extra_forbidden")
        value = f" (got {_shown(err.get('input'))})" if shows_value else ""
        out.append(f"{where}: {dotted}: {msg}{value}; {_fix_for(err, loc)}")
    return "\n".join(out)


def parse_override(item: str) -> tuple[tuple[str, ...], Any]:
    """`section.field=value` with the value read as a YAML scalar."""
    if "=" not in item:
        raise RecipeError(f"--set {item!r}: expected section.field=value", "e.g. --set training.max_steps=5")
    path, raw = item.split("=", 1)
    keys = tuple(p for p in path.strip().split(".") if p)
    if len(keys) < 2:
        raise RecipeError(f"--set {item!r}: the path needs a section and a field", "e.g. --set training.lr=1e-4")
    model: type[BaseModel] = Recipe
    for depth, key in enumerate(keys):
        fields = model.model_fields
        if key not in fields:
            close = difflib.get_close_matches(key, list(fields), n=1, cutoff=0.5)
            hint = f"did you mean '{'.'.join(keys[:depth] + (close[0],))}'?" if close else f"known: {', '.join(fields)}"
            raise RecipeError(f"--set {item!r}: unknown field '{'.'.join(keys[: depth + 1])}'", hint)
        annotation = fields[key].annotation
        if depth < len(keys) - 1:
            if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
                raise RecipeError(f"--set {item!r}: '{'.'.join(keys[: depth + 1])}' has no sub-fields")
            model = annotation
    try:
        return keys, _parse_yaml(raw, f"--set {item!r}")[
            0
        ] if raw.strip() else None  # bounded: a flow list can hold a bomb
    except yaml.YAMLError as exc:
        problem = (
            "a control character is not allowed in YAML"
            if isinstance(exc, yaml.reader.ReaderError)
            else getattr(exc, "problem", exc)
        )
        raise RecipeError(
            f"--set {item!r}: the value is not valid YAML ({problem})", "quote it, e.g. --set 'output.tags=[a, b]'"
        ) from None


def _apply(data: dict, keys: tuple[str, ...], value: Any) -> None:
    node = data
    for key in keys[:-1]:
        if not isinstance(node.get(key), dict):
            node[key] = {}
        node = node[key]
    node[keys[-1]] = value


def _resolve_paths(data: dict, base: Path) -> None:
    """Local data paths are relative to the recipe file, so a recipe works from any directory; they are stored
    absolute (a recipe given as a relative path would otherwise leave them relative to where it was run)."""
    base = Path(os.path.abspath(base))
    section = data.get("data")
    if not isinstance(section, dict):
        return

    def fix(v: Any) -> Any:
        if isinstance(v, str) and not Path(v).is_absolute() and _exists(base / v):
            return str(base / v)
        if isinstance(v, dict) and isinstance(v.get("path"), str):
            return {**v, "path": fix(v["path"])}
        return v

    for key in ("train", "eval"):
        if key in section:
            value = section[key]
            section[key] = [fix(v) for v in value] if isinstance(value, list) else fix(value)
    if section.get("preserve") not in (None, "general"):
        section["preserve"] = fix(section["preserve"])


def _read_layer(path: Path, budget: dict[str, int]) -> tuple[dict, dict[tuple, tuple[str, int]]]:
    """One recipe file as a mapping, and the (file, line) of every key in it; `budget` is what is left of
    MAX_RECIPE_BYTES and MAX_VALUES for the extends chain this file is part of."""
    try:
        size = path.stat().st_size
        if size > budget["bytes"]:
            whole = "" if budget["bytes"] == MAX_RECIPE_BYTES else " together with the recipes it extends"
            raise RecipeError(
                f"{path}: {size:,} bytes{whole} is more than a recipe can be ({MAX_RECIPE_BYTES:,} bytes at most)",
                "pass the recipe's .yaml file (data belongs in data.train, not in the recipe)",
            )
        raw = path.read_bytes()
    except OSError as exc:
        raise MissingError(f"{path}: cannot read it ({exc.strerror})", "check the path and its permissions") from None
    budget["bytes"] -= len(raw)
    try:
        text = raw.decode("utf-8-sig")  # a BOM from a Windows editor is fine
    except UnicodeDecodeError:
        kind = describe_bytes(raw)
        fix = (
            encoding_fix(kind, str(path))
            if kind.startswith(("UTF-", "text in"))
            else "pass the recipe's .yaml file (saved as UTF-8)"
        )
        raise RecipeError(f"{path}: not a text file (a recipe is YAML in UTF-8; this looks like {kind})", fix) from None
    try:
        data, lines, values = _parse_yaml(text, str(path), budget["values"])
    except yaml.YAMLError as exc:
        raise _yaml_error(exc, str(path), text) from None
    budget["values"] -= values
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise RecipeError(f"{path}: a recipe is a mapping of sections (model, data, adapter, ...)")
    return data, {key: (str(path), line) for key, line in lines.items()}


def _merge(base: dict, over: dict) -> dict:
    """Deep merge: mappings merge key by key, anything else (lists included) is replaced by `over`."""
    out = dict(base)
    for key, value in over.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def _merge_lines(base: dict[tuple, Any], lines: dict[tuple, Any], data: dict) -> dict[tuple, Any]:
    """Where each merged key came from: the extending file wins, and a value it replaces whole hides the base's sub-keys."""
    out = dict(base)
    for key in lines:
        node: Any = data
        for part in key:  # the index's keys are YAML's text (`1`, `<<`); the data's may differ (1, merged away)
            if isinstance(node, dict):
                node = node.get(part)
            elif isinstance(node, list) and isinstance(part, int) and part < len(node):
                node = node[part]
            else:
                node = None
        if not isinstance(node, dict):
            for sub in [k for k in out if len(k) > len(key) and k[: len(key)] == key]:
                del out[sub]
    out.update(lines)
    return out


def _load_layers(
    path: Path, chain: tuple[Path, ...] = (), budget: dict[str, int] | None = None
) -> tuple[dict, dict[tuple, tuple[str, int]]]:
    """A recipe merged over the chain of recipes it `extends`, each one's data paths resolved against its own file.

    A base's output.dir is not inherited: every recipe file gets its own run directory unless it names one.
    The whole chain shares one budget of bytes and values, and holds at most MAX_EXTENDS recipes."""
    budget = budget if budget is not None else {"bytes": MAX_RECIPE_BYTES, "values": MAX_VALUES}
    data, lines = _read_layer(path, budget)
    _resolve_paths(data, path.parent)
    if "extends" not in data:
        return data, lines
    parent = data.pop("extends")
    where = f"{path}:{lines.pop(('extends',), (path, '?'))[1]}"
    if not isinstance(parent, str) or not parent.strip():
        raise RecipeError(
            f"{where}: extends: expected the path of one base recipe, got {_shown(parent)}",
            "e.g. extends: base.yaml (relative to this file)",
        )
    seen = chain + (path,)
    if len(seen) >= MAX_EXTENDS:
        raise RecipeError(
            f"{where}: extends: a chain of more than {MAX_EXTENDS} recipes ({seen[0]} -> ... -> {path} -> {parent})",
            "extend a base recipe directly instead of through a long chain",
        )
    try:
        base_path = Path(os.path.normpath(path.parent / Path(parent).expanduser()))
        known = {p.resolve() for p in seen}
        cycle = base_path.resolve() in known
        found = base_path.is_file()
    except (OSError, RuntimeError, ValueError):  # a name the OS cannot look up, an unknown ~user, a symlink loop
        raise MissingError(
            f"{where}: extends: base recipe not found: {_shown(parent)}",
            "the path is relative to the recipe that names it",
        ) from None
    if cycle:
        shown = " -> ".join(str(p) for p in seen + (base_path,))
        raise RecipeError(
            f"{where}: extends cycle: {shown}", "remove the `extends` that leads back to a recipe already in the chain"
        )
    if not found:
        raise MissingError(
            f"{where}: extends: base recipe not found: {base_path}", "the path is relative to the recipe that names it"
        )
    base, base_lines = _load_layers(base_path, seen, budget)
    if isinstance(base.get("output"), dict):
        base["output"] = {k: v for k, v in base["output"].items() if k != "dir"}
        base_lines = {k: v for k, v in base_lines.items() if k[:2] != ("output", "dir")}
    return _merge(base, data), _merge_lines(base_lines, lines, data)


def load_recipe(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> Recipe:
    """Read (following `extends`), override and validate a recipe; every problem is raised as one RecipeError."""
    path = Path(path)
    try:
        found = path.is_file()
    except OSError:  # e.g. a name too long to look up
        found = False
    if not found:
        raise MissingError(
            f"recipe not found: {_shown(str(path))}", "check the path; recipes/quickstart.yaml is a working example"
        )
    data, lines = _load_layers(path)
    for item in overrides:
        keys, value = parse_override(item)
        _apply(data, keys, value)
        lines.pop(keys, None)
    nul = _find_nul(data)
    if nul is not None:
        line = lines.get(nul) or next((lines[nul[:i]] for i in range(len(nul), 0, -1) if nul[:i] in lines), None)
        where = f"{line[0]}:{line[1]}" if line else str(path)
        raise RecipeError(
            f"{where}: {'.'.join(map(str, nul)) or '(recipe)'}: a NUL character (\\0) in a string; no path or name has one",
            "remove the \\0 escape from the value",
        )
    _resolve_paths(data, path.parent)  # --set data paths, like the recipe's own, are relative to the recipe
    output = data.setdefault("output", {}) if isinstance(data.get("output", {}), dict) else data["output"]
    if isinstance(output, dict) and not output.get("dir"):
        output["dir"] = str(Path("runs") / path.stem)
    try:
        recipe = Recipe.model_validate(data)
    except ValidationError as exc:
        raise RecipeError(_format_errors(exc, lines, str(path)), None) from None
    _check_context(recipe, lines.get(("training", "max_length")), str(path))
    return recipe


def _check_context(recipe: Recipe, line: tuple[str, int] | None, source: str) -> None:
    """training.max_length within the model's positions (max_position_embeddings), read from its config.json
    without loading weights or importing torch; models whose config is not on disk are not checked here."""
    found = context_limit(recipe.model.name)
    if found is None:
        return
    limit, origin = found
    wanted = recipe.training.max_length
    if wanted > limit:
        where = f"{line[0]}:{line[1]}" if line else source
        raise RecipeError(
            f"{where}: training.max_length: {wanted:,} tokens is beyond the model's context of {limit:,} positions "
            f"({origin}); no memory plan is made from it",
            f"set training.max_length: {limit} or less (or choose a model with a longer context)",
        )


def parse_yaml_text(text: str, source: str) -> Any:
    """YAML text as data, within the loader's bounds; RecipeError for anything that is not valid YAML."""
    try:
        return _parse_yaml(text, source)[0]
    except yaml.YAMLError as exc:
        raise _yaml_error(exc, source, text) from None


def recipe_from_yaml_text(text: str, source: str = "recipe.yaml") -> Recipe:
    """Validate a resolved recipe written by an earlier run (paths already absolute or as recorded)."""
    try:
        data, lines, _ = _parse_yaml(text, source)
    except yaml.YAMLError as exc:
        raise _yaml_error(exc, source, text) from None
    if not isinstance(data, dict):
        raise RecipeError(
            f"{source}: a recipe is a mapping of sections (model, data, adapter, ...)",
            "the run directory's recipe.yaml was changed; restore it",
        )
    try:
        return Recipe.model_validate(data, context={"saved_run": True})
    except ValidationError as exc:
        raise RecipeError(_format_errors(exc, lines, source)) from None


def check_hardware(recipe: Recipe) -> None:
    """Cross-field rules that need to know the machine: kept apart so schema checks stay instant."""
    from lorafit.core import device

    info = device.detect()
    if recipe.training.precision == "bf16" or recipe.model.dtype == "bfloat16":
        if info.kind == "cpu":
            raise RecipeError(
                "bf16 requested but this machine trains on CPU, where bf16 matmuls are many times slower than fp32",
                "use training.precision: auto (fp32 on CPU) and model.dtype: auto",
            )
        if not info.bf16:
            raise RecipeError(
                f"bf16 requested but {info.name} has no bf16 support", "use training.precision: fp16 or auto"
            )
    if (recipe.training.precision == "fp16" or recipe.model.dtype == "float16") and info.kind == "cpu":
        raise RecipeError(
            "fp16 training needs a GPU (mixed precision with loss scaling)",
            "use training.precision: auto and model.dtype: auto (fp32 on CPU)",
        )
