"""The recipe's sections for the model, data, adapter, quantization and output: each field, its default and its
description live here and nowhere else (`lorafit schema` and the README's recipe reference are generated from them)."""

from __future__ import annotations

import difflib
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from lorafit.core.chat_templates import CHAT_TEMPLATES, TOKENIZER_DEFAULT
from lorafit.core.methods import METHODS, TARGET_KEYWORDS, is_module_name

EMBEDDED_MODEL = "embedded:smollm2-135m-instruct"

Method = Literal[METHODS]
Tracker = Literal["tensorboard", "mlflow", "wandb", "trackio", "none"]


class Section(BaseModel):
    """Frozen, and unknown keys are errors: a typo must never silently become a default.

    Non-finite numbers (`.inf`, `.nan`) are errors in every numeric field: `epochs: .inf` is a run that never ends."""

    model_config = ConfigDict(frozen=True, extra="forbid", validate_default=True, allow_inf_nan=False)


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
        description="Fraction of the training data held out for evaluation (seeded by training.seed); 0 or null for none.",
    )
    prompt_style: Literal["plain", "alpaca", "torchtune", "llamafactory"] = Field(
        "plain",
        description="How alpaca rows (instruction, input, output) become the user turn. `plain`: the instruction, and "
        "the input after a blank line. `llamafactory`: instruction + newline + input. `torchtune`: the Alpaca "
        "preamble and `### Instruction:` / `### Input:` / `### Response:` headers inside the user turn. `alpaca`: the "
        "original Alpaca prompt as plain text (no chat template), the output and EOS trained. The README's "
        '"Prompt styles" shows the exact text of each.',
    )
    train_on: Literal["assistant", "all", "last_assistant"] = Field(
        "assistant",
        description="Which tokens carry loss: every assistant turn (end-of-turn token included), all tokens, or the last assistant turn only.",
    )
    chat_template: str | None = Field(
        None,
        description="The model's own template when null (or `tokenizer_default`); else a named template or a Jinja "
        "template string. Named: chatml, llama2, mistral, zephyr, alpaca, vicuna (written in lorafit), llama3, "
        "gemma, gemma3, qwen2, qwen3, phi3 (the models' own, as TRL ships them). Base models without one get "
        "ChatML and a warning.",
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

    @field_validator("eval_split", mode="before")
    @classmethod
    def zero_is_none(cls, v: Any) -> Any:
        return None if v == 0 and not isinstance(v, bool) else v

    @field_validator("chat_template")
    @classmethod
    def known_template(cls, v: str | None) -> str | None:
        if v == TOKENIZER_DEFAULT:
            return None  # the model's own, as null says
        if v is None or v in CHAT_TEMPLATES or "{{" in v or "{%" in v:
            return v
        close = difflib.get_close_matches(v, list(CHAT_TEMPLATES), n=1, cutoff=0.5)
        hint = f"did you mean '{close[0]}'? " if close else ""
        raise ValueError(
            f"{v!r} is neither a named template nor a Jinja template; {hint}named templates: "
            f"{', '.join(CHAT_TEMPLATES)}; null (or tokenizer_default) uses the model's own template"
        )

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
        description="Where adapters attach: `all-linear` (`all` is read as it), `attention` (q,k,v,o), `qv`, `mlp` "
        "(gate, up, down), a module name, a list of names (`q_proj,v_proj` is read as one), or a regex matched "
        "against full module names (e.g. `.*\\.(q|v)_proj`). A listed name the model lacks is an error, found by "
        "`lorafit validate` from the model's config. For ia3, `all-linear` means PEFT's defaults for the "
        "architecture (keys, values and the feed-forward down projection).",
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

    @field_validator("target_modules", mode="before")
    @classmethod
    def peer_target_spellings(cls, v: Any) -> Any:
        """LLaMA-Factory's `all` is all-linear; its `q_proj,v_proj` is a list of names, never a regex."""
        if v == "all":
            return "all-linear"
        if isinstance(v, str) and "," in v:
            parts = [p.strip() for p in v.split(",")]
            if all(p and is_module_name(p) for p in parts):
                return parts
            raise ValueError(
                f"a comma in {v!r}: write module names as a list ([q_proj, v_proj]); a regex (matched against full "
                "module names) cannot hold a comma here"
            )
        return v

    @field_validator("target_modules")
    @classmethod
    def targets_nonempty_and_valid(cls, v: str | list[str]) -> str | list[str]:
        import re

        if not v:
            raise ValueError("must name at least one module (or use all-linear)")
        if isinstance(v, list):
            bad = [t for t in v if t in TARGET_KEYWORDS or t == "all" or not is_module_name(t)]
            if bad:
                raise ValueError(
                    f"a list holds module names (suffix-matched: q_proj, self_attn.o_proj); {bad[0]!r} is not one: "
                    f"use a keyword ({', '.join(TARGET_KEYWORDS)}) or a regex alone, not in a list"
                )
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
