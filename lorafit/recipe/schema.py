"""The whole recipe: its sections and the rules that span them. Frozen, and passed everywhere as is."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import Field, ValidationInfo, model_validator

from lorafit.core.methods import DATA_INIT, LORA_FAMILY, PROMPT_LEARNING, RESIDUAL_INIT, TARGET_KEYWORDS, is_module_name
from lorafit.recipe import preference as _preference
from lorafit.recipe.preference import PreferenceSection
from lorafit.recipe.sections import (
    AdapterSection,
    DataSection,
    ModelSection,
    OutputSection,
    QuantizationSection,
    Section,
)
from lorafit.recipe.training import TrainingSection


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
    def evaluations_have_data(self) -> Recipe:
        if self.training.eval_every and self.data.eval is None and self.data.eval_split is None:
            raise ValueError(
                f"training.eval_every {self.training.eval_every} evaluates on held-out data, and this recipe has none; "
                "set data.eval_split (e.g. 0.1) or data.eval, or eval_every: 0"
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
