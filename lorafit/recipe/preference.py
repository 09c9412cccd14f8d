"""The recipe's `preference` section (DPO, KTO, ORPO, SimPO) and its rules across sections.

Every default is TRL 1.16's own (trl.DPOConfig, trl.KTOConfig, trl.experimental.orpo.ORPOConfig,
trl.experimental.cpo.CPOConfig), written out in the resolved recipe so a run says what it trained with.
Knobs whose default depends on the objective (loss_type, reference) are filled in before validation by
`fill_defaults`. Nothing heavy is imported: `lorafit validate` stays instant.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from lorafit.core.methods import DATA_INIT, STARTS_AS_BASE

Objective = Literal["sft", "dpo", "kto", "orpo", "simpo"]
PREFERENCE_OBJECTIVES = ("dpo", "kto", "orpo", "simpo")
WITH_REFERENCE = ("dpo", "kto")  # ORPO and SimPO are reference-free
GROUPED = ("dpo",)  # the objectives whose batches training.group_by_length groups (train/preference.py)
# The loss_type values TRL accepts per objective; the first is TRL's default.
LOSS_TYPES = {
    "dpo": (
        "sigmoid",
        "hinge",
        "ipo",
        "exo_pair",
        "nca_pair",
        "robust",
        "bco_pair",
        "sppo_hard",
        "aot",
        "aot_unpaired",
        "apo_zero",
        "apo_down",
        "discopop",
        "sft",
        "sigmoid_norm",
    ),
    "kto": ("kto", "apo_zero_unpaired"),
    "simpo": ("simpo",),  # CPOTrainer with loss_type simpo
    "orpo": (),  # ORPO has one loss
}
# The adapter methods a preference run can train. TRL builds its frozen reference as a second adapter with the
# policy's config (add_adapter + copy): a method whose init rewrites the base (pissa, olora, corda, loftq) would
# rewrite it again, and EVA / CorDA initialise from tokenized SFT examples; prompt learning is untested with
# TRL's preference collators.
PREFERENCE_METHODS = STARTS_AS_BASE - DATA_INIT
# Knob -> the objectives it applies to (a knob changed from its default under another objective is an error).
APPLIES_TO = {
    "label_smoothing": ("dpo",),
    "rpo_alpha": ("dpo",),
    "precompute_ref_log_probs": WITH_REFERENCE,
    "desirable_weight": ("kto",),
    "undesirable_weight": ("kto",),
    "simpo_gamma": ("simpo",),
    "cpo_alpha": ("simpo",),
}


class PreferenceSection(BaseModel):
    """Knobs of the preference objectives; each default is TRL's."""

    # recipe.Section's settings (frozen, unknown keys are errors, no .inf/.nan); not its subclass, since the
    # schema module imports this one
    model_config = ConfigDict(frozen=True, extra="forbid", validate_default=True, allow_inf_nan=False)

    beta: float = Field(
        0.1,
        gt=0,
        description="DPO / KTO: how far the policy may move from the reference (higher: less). ORPO: the weight "
        "of the odds-ratio term (λ in the paper). SimPO: the reward scale.",
    )
    loss_type: str | None = Field(
        None,
        description="The objective's loss variant, TRL's default when left out: dpo `sigmoid` (also hinge, ipo, "
        "robust, exo_pair, bco_pair, apo_zero, ...), kto `kto` (or apo_zero_unpaired), simpo `simpo`; ORPO has one "
        "loss (null).",
    )
    label_smoothing: float = Field(
        0.0,
        ge=0,
        lt=0.5,
        description="DPO: the probability that a preference label is flipped (robust and exo_pair losses; 0.1 is "
        "the Robust DPO paper's value).",
    )
    rpo_alpha: float = Field(
        0.0,
        ge=0,
        description="DPO: weight of an NLL term on the chosen side added to the preference loss (RPO; TRL's "
        "loss_type [<loss_type>, sft]). 0 is plain DPO. Set it (1.0 is the RPO paper's value) when the implicit "
        "reward learns the preference but greedy answers do not change: the term trains the chosen text itself.",
    )
    precompute_ref_log_probs: bool = Field(
        False,
        description="DPO / KTO: compute the reference's log-probabilities of the whole dataset once before training, "
        "so no reference forward runs during training.",
    )
    sync_ref_model: bool = Field(
        False,
        description="TR-DPO's reference that follows the policy. TRL cannot sync a reference with an adapter, so a "
        "lorafit run (always an adapter) keeps it false.",
    )
    desirable_weight: float = Field(1.0, gt=0, description="KTO: weight of the desirable (label true) examples' loss.")
    undesirable_weight: float = Field(
        1.0, gt=0, description="KTO: weight of the undesirable (label false) examples' loss."
    )
    simpo_gamma: float = Field(0.5, description="SimPO: the target reward margin.")
    cpo_alpha: float = Field(
        1.0,
        ge=0,
        description="SimPO (CPOTrainer): weight of the behaviour-cloning NLL term on the chosen side; 0 is the "
        "SimPO paper's pure loss, TRL's default 1.0 adds CPO's regulariser.",
    )
    reference: str | None = Field(
        None,
        description="DPO / KTO: the frozen reference. `init` (the default): the policy as training starts, i.e. "
        "base + the adapter of adapter.init_from when it is set, else the base; `base`: the bare base model; or a "
        "run directory whose adapter, on the base, is the reference. ORPO and SimPO have none (null).",
    )

    @field_validator("sync_ref_model")
    @classmethod
    def no_sync_with_an_adapter(cls, v: bool) -> bool:
        if v:
            raise ValueError(
                "TRL cannot sync a reference model with an adapter-trained policy (and lorafit trains adapters "
                "only); keep it false"
            )
        return v


def fill_defaults(values: Any) -> Any:
    """Before validation: a preference objective gets a `preference` section with the objective's own
    defaults written in (loss_type, reference), and training.group_by_length defaults to false except for DPO
    (lorafit groups DPO's pairs by their longer side; KTO's sampler is sequential: TRL pairs each example with
    its neighbour's completion for the KL term; ORPO and SimPO batch in a seeded random order)."""
    if not isinstance(values, dict):
        return values
    training = values.get("training")
    objective = training.get("objective", "sft") if isinstance(training, dict) else "sft"
    if objective not in PREFERENCE_OBJECTIVES:
        return values
    section = values.get("preference")
    if section is None:
        section = {}
    if not isinstance(section, dict):
        return values
    section = dict(section)
    if "loss_type" not in section and LOSS_TYPES[objective]:
        section["loss_type"] = LOSS_TYPES[objective][0]
    if "reference" not in section and objective in WITH_REFERENCE:
        section["reference"] = "init"
    values = {**values, "preference": section}
    if isinstance(training, dict) and "group_by_length" not in training and objective not in GROUPED:
        values["training"] = {**training, "group_by_length": False}
    return values


def check(recipe) -> None:
    """The rules across sections for a preference objective (called from the Recipe's validator)."""
    t, p, objective = recipe.training, recipe.preference, recipe.training.objective
    a = recipe.adapter
    if a.init_sha256 is not None and a.init_from is None:
        raise ValueError("adapter.init_sha256 records adapter.init_from's adapter; set init_from, or remove it")
    if a.init_from is not None and a.method not in PREFERENCE_METHODS:
        raise ValueError(
            f"adapter.init_from continues a {', '.join(sorted(PREFERENCE_METHODS))} adapter, not adapter.method "
            f"{a.method} (a method whose start rewrites the base or comes from data cannot start from a parent)"
        )
    if objective == "sft":
        if p is not None:
            raise ValueError(
                "preference applies to a preference objective: set training.objective (dpo, kto, orpo or simpo), "
                "or remove the preference section"
            )
        return
    method = recipe.adapter.method
    if method not in PREFERENCE_METHODS:
        raise ValueError(
            f"training.objective {objective} trains adapter methods {', '.join(sorted(PREFERENCE_METHODS))}; "
            f"not adapter.method {method} (TRL copies the adapter for its reference, and {method} cannot be copied so)"
        )
    allowed = LOSS_TYPES[objective]
    if not allowed and p.loss_type is not None:
        raise ValueError(f"preference.loss_type does not apply to {objective} (it has one loss); remove it")
    if allowed and p.loss_type not in allowed:
        raise ValueError(
            f"preference.loss_type {p.loss_type!r} is not a {objective} loss; use one of: {', '.join(allowed)}"
        )
    if objective not in WITH_REFERENCE and p.reference is not None:
        raise ValueError(
            f"preference.reference does not apply to {objective}: it is reference-free (no reference model); remove it"
        )
    if objective in WITH_REFERENCE and not p.reference:
        raise ValueError("preference.reference must be init, base or a run directory")
    for knob, objectives in APPLIES_TO.items():
        if objective not in objectives and getattr(p, knob) != PreferenceSection.model_fields[knob].default:
            raise ValueError(f"preference.{knob} only applies to {' / '.join(objectives)}, not {objective}")
    if p.rpo_alpha and p.loss_type == "sft":
        raise ValueError(
            "preference.rpo_alpha adds TRL's sft loss to the DPO loss, and loss_type is already sft: the chosen "
            "side's NLL would count twice; set rpo_alpha: 0, or a preference loss_type (sigmoid, TRL's default)"
        )
    if objective == "kto" and p.loss_type == "kto" and t.batch_size <= 1:
        raise ValueError(
            "training.batch_size must be > 1 for kto: its KL term pairs each example with another completion of "
            "the same micro-batch (grad_accum does not help); set batch_size: 2 or more"
        )
    if t.group_by_length and objective not in GROUPED:
        raise ValueError(
            f"training.group_by_length does not apply to {objective}: TRL's preference data is batched in a seeded "
            "random order (KTO's in order, each example's KL completion comes from its neighbour); set it to false"
        )
    if t.lm_head != "auto":
        raise ValueError(
            f"training.lm_head does not apply to {objective}: TRL's preference trainers compute their own "
            "log-probabilities; leave it at auto"
        )
    if recipe.data.packing:
        raise ValueError(f"data.packing does not apply to {objective}: preference pairs are never packed")
    if recipe.data.train_on != "assistant":
        raise ValueError(
            f"data.train_on does not apply to {objective}: only the completions (chosen / rejected) carry loss"
        )
    if recipe.data.preserve is not None:
        raise ValueError(f"data.preserve does not apply to {objective}: it mixes SFT answers into SFT data")
    if recipe.data.format != "auto":
        raise ValueError(
            f"data.format applies to SFT data; {objective} detects preference records (prompt/chosen/rejected, "
            "chosen/rejected conversations, prompt/completion/label): leave it at auto"
        )
