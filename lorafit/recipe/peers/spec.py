"""The shape of a peer mapping (a key, a value, what it means) and the peers' values of lorafit fields.

Stdlib only: `lorafit validate` reads it before anything heavy."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

AXOLOTL, LLAMAFACTORY, TORCHTUNE, TRL, UNSLOTH = "axolotl", "LLaMA-Factory", "torchtune", "TRL", "unsloth"
HF = (LLAMAFACTORY, TRL)  # both take transformers' TrainingArguments names as they are


class Unmapped(Exception):
    """A peer setting lorafit has no field for; the message says what lorafit does instead."""


@dataclass(frozen=True)
class PeerValue:
    """A peer's value of a lorafit field: the lorafit settings it stands for (None: no equivalent)."""

    tools: tuple[str, ...]
    settings: dict[str, Any] | None
    means: str


@dataclass(frozen=True)
class PeerKey:
    """A peer's key: the lorafit field it sets and what it means there."""

    tools: tuple[str, ...]
    field: str | None  # None: lorafit has no equivalent; `means` says what it does instead
    means: str
    convert: Callable[[Any], dict[str, Any]] | None = None  # value -> {lorafit path: value}; else {field: value}

    def settings(self, value: Any) -> dict[str, Any]:
        """The lorafit settings this key with this value stands for; Unmapped when there are none."""
        if self.field is None:
            raise Unmapped(self.means)
        try:
            raw = self.convert(value) if self.convert else {self.field: value}
        except (TypeError, ValueError, AttributeError):  # a value of a shape the peer never writes
            raise Unmapped(f"{value!r} is not a value this setting takes") from None
        out: dict[str, Any] = {}
        for path, v in raw.items():
            out.update(translate_value(path, v))
        return out


def tool_names(tools: tuple[str, ...]) -> str:
    return " / ".join(tools)


# Peer values of lorafit fields, by field and by the value as the peer writes it (compared lower-case).
_NO_SCHEDULER = "no equivalent schedule: lorafit has cosine, linear, constant and constant_with_warmup"
_NO_OPTIMIZER = (
    "no equivalent optimizer: lorafit has adamw_torch(_fused), adamw_8bit, paged_adamw_8bit/32bit, adafactor, sgd"
)
VALUES: dict[str, dict[str, PeerValue]] = {
    "adapter.method": {
        "qlora": PeerValue(
            (AXOLOTL,),
            {"adapter.method": "lora", "quantization.load_in_4bit": True},
            "QLoRA, which is LoRA on a 4-bit base",
        ),
        "full": PeerValue((LLAMAFACTORY,), None, "full fine-tuning: lorafit trains adapters only"),
        "freeze": PeerValue((LLAMAFACTORY,), None, "training some layers in full: lorafit trains adapters only"),
    },
    "training.optimizer": {
        "adamw": PeerValue((TORCHTUNE,), {"training.optimizer": "adamw_torch"}, "PyTorch's AdamW"),
        "adamw_hf": PeerValue(HF, {"training.optimizer": "adamw_torch"}, "AdamW"),
        "adamw_apex_fused": PeerValue(HF, {"training.optimizer": "adamw_torch_fused"}, "a fused AdamW"),
        "adamw_bnb_8bit": PeerValue(HF, {"training.optimizer": "adamw_8bit"}, "bitsandbytes' 8-bit AdamW"),
        "paged_adamw": PeerValue(HF, {"training.optimizer": "paged_adamw_32bit"}, "bitsandbytes' paged AdamW"),
        **{
            name: PeerValue((AXOLOTL,) + HF, None, _NO_OPTIMIZER)
            for name in (
                "lion_8bit",
                "lion_32bit",
                "paged_lion_8bit",
                "paged_lion_32bit",
                "galore_adamw",
                "ademamix",
                "muon",
                "schedule_free_adamw",
                "adopt_adamw",
                "lomo",
                "adalomo",
                "came_pytorch",
            )
        },
    },
    "training.scheduler": {
        name: PeerValue((AXOLOTL,) + HF, None, _NO_SCHEDULER)
        for name in (
            "cosine_with_restarts",
            "cosine_with_min_lr",
            "polynomial",
            "inverse_sqrt",
            "reduce_lr_on_plateau",
            "warmup_stable_decay",
            "one_cycle",
            "rex",
        )
    },
    "model.dtype": {
        "bf16": PeerValue((TORCHTUNE,), {"model.dtype": "bfloat16"}, "bfloat16"),
        "fp16": PeerValue((TORCHTUNE,), {"model.dtype": "float16"}, "float16"),
        "fp32": PeerValue((TORCHTUNE,), {"model.dtype": "float32"}, "float32"),
    },
    "training.precision": {
        "bfloat16": PeerValue(HF, {"training.precision": "bf16"}, "bf16 mixed precision"),
        "float16": PeerValue(HF, {"training.precision": "fp16"}, "fp16 mixed precision"),
        "float32": PeerValue(HF, {"training.precision": "fp32"}, "full precision"),
    },
    "model.attn_implementation": {
        "fa2": PeerValue((LLAMAFACTORY,), {"model.attn_implementation": "flash_attention_2"}, "FlashAttention-2"),
        "disabled": PeerValue((LLAMAFACTORY,), {"model.attn_implementation": "eager"}, "plain attention"),
    },
    "data.format": {
        "chat_template": PeerValue((AXOLOTL,), {"data.format": "messages"}, "chat data rendered by the chat template"),
        "completion": PeerValue((AXOLOTL,), {"data.format": "text"}, "raw text, every token trained"),
        "conversation": PeerValue((AXOLOTL,), {"data.format": "sharegpt"}, "ShareGPT conversations"),
    },
}


def translate_value(path: str, value: Any) -> dict[str, Any]:
    """A lorafit field's value as a peer writes it, as lorafit's settings; Unmapped when lorafit has none."""
    found = VALUES.get(path, {}).get(str(value).lower()) if isinstance(value, str) else None
    if found is None:
        return {path: value}
    if found.settings is None:
        raise Unmapped(found.means)
    return dict(found.settings)


def value_for(path: str, value: Any) -> PeerValue | None:
    """The peer meaning of a value a lorafit field refused (`adapter.method: qlora`)."""
    return VALUES.get(path, {}).get(value.lower()) if isinstance(value, str) else None
