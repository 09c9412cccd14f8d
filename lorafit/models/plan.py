"""Back-of-envelope memory and compute for a fine-tuning run, before anything heavy is loaded.

Pure stdlib on purpose: `lorafit plan` must answer instantly and without torch. All sizes are
bytes; "GB" means 1e9 bytes, as in the usual "70B params x 2 bytes = 140 GB" arithmetic.

Model state per trainable parameter (AdamW): weights + gradients at the weight precision plus two
fp32 moments (8 B), so 16-bit weights give the 12-byte recipe and an fp32 master copy makes it 16.
LoRA keeps the frozen base at its precision and pays that state only for the adapters. QLoRA stores
the base linears as NF4 (0.5 B/param) plus blockwise constants (see `nf4_bits_per_param`).
"""

from __future__ import annotations

from dataclasses import dataclass

from lorafit.core.methods import ALL_LINEAR, OPTIMIZERS, TARGET_SETS

# --- Constants: the ones marked (calibrate) are fitted to measured peaks, the rest follow from formats.
ADAPTER_BYTES = 4  # PEFT upcasts adapter weights to fp32 (autocast_adapter_dtype), grads follow them
NF4_BLOCK = 64  # weights per fp32 absmax in bitsandbytes 4-bit: 32/64 = 0.5 bit/param
DQ_BLOCK = 256  # double quant: absmax stored in 8 bits, one fp32 constant per 256 of them
BNB_MIN_8BIT_SIZE = 4096  # bitsandbytes keeps 32-bit Adam state for tensors smaller than this
LOGITS_COPIES = 5.0  # fp32 logits, log-softmax, their gradients and CE temporaries (calibrated: see ACTIVATION_SCALE)
FUSED_CHUNK_TOKENS = 1024  # approximate tile of TRL's fused LM head
# TRL's fused log-prob head (DPO, KTO: trl.kernels.chunked_logprob): the LM head projected a tile of up to 4096
# positions x 32768 vocabulary entries at a time. Without Triton (CPU, MPS) every position is scored, padding and
# prompt included, and each tile is folded with torch ops: backward's fp32 temporaries (the tile, scaled logits,
# log-probs, probs, the gradient, a target mask and its arithmetic) come to ~9 tiles counted from TRL 1.16's
# _backward_tile. The measured peaks are not linear in the micro-batch: 1 and 2 pairs need 15.6 tiles, 3 and 4
# need ~11 (scripts/plan_check.py --objective dpo, SmolLM2 fp32 CPU); 12.5 keeps all four within 9%. With Triton
# (CUDA) only the trained positions are scored and the kernels keep about one tile and its gradient (not measured).
LOGPROB_TILE_TOKENS = 4096
LOGPROB_TILE_VOCAB = 32768
LOGPROB_TILE_COPIES = {"cpu": 12.5, "mps": 12.5, "cuda": 2.0}
# Saved tensors match the formula (checked with saved_tensors_hooks); backward temporaries and the allocator add the
# rest. Fitted to measured peak RSS (scripts/plan_check.py: SmolLM2 fp32 CPU, micro-batch 2/4/8, huge pages on):
# eager within 8%; with training.compile inductor recomputes elementwise results instead of keeping them (within 3%).
ACTIVATION_SCALE = 1.40
COMPILED_ACTIVATION_SCALE = 0.78
# What the process holds besides the model. cpu/mps: a `lorafit train` process on a tiny model peaks at
# ~650 MB RSS (interpreter, torch, transformers, peft, trl, trackers, tokenizer, data); cuda: CUDA context
# + cuBLAS workspace.
RUNTIME_BYTES = {"cpu": 650e6, "mps": 650e6, "cuda": 500e6}

TARGET_SETS = {"all-linear": ALL_LINEAR, **TARGET_SETS}
METHODS = ("full", "lora", "qlora")
LM_HEADS = ("full", "chunked", "trained", "logprob")
REFERENCES = ("none", "disabled", "adapter", "model", "precomputed")


@dataclass(frozen=True)
class ModelShape:
    """The dimensions of a Llama-style decoder (Llama, Mistral, Qwen2, SmolLM...)."""

    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int | None = None  # None: hidden_size // num_attention_heads
    tie_word_embeddings: bool = False
    attention_bias: bool = False  # Qwen2 has q/k/v biases

    @classmethod
    def from_config(cls, cfg: dict) -> ModelShape:
        """From a transformers config.json dict; multimodal configs are read from their text_config."""
        if "hidden_size" not in cfg and isinstance(cfg.get("text_config"), dict):
            cfg = {**cfg["text_config"], "tie_word_embeddings": cfg.get("tie_word_embeddings", False)}
        need = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads")
        missing = [k for k in need if cfg.get(k) is None]
        if missing:
            raise ValueError(f"config has no {', '.join(missing)}: not a Llama-style decoder config")
        experts = next((cfg[k] for k in ("num_local_experts", "num_experts", "n_routed_experts") if cfg.get(k)), None)
        if experts:  # every expert's weights are resident: a dense reading would undercount them several times
            raise ValueError(f"a mixture-of-experts config ({experts} experts) is not planned yet")
        return cls(
            **{k: int(cfg[k]) for k in need},
            num_key_value_heads=int(cfg.get("num_key_value_heads") or cfg["num_attention_heads"]),
            head_dim=int(cfg["head_dim"]) if cfg.get("head_dim") else None,
            tie_word_embeddings=bool(cfg.get("tie_word_embeddings", False)),
            attention_bias=bool(cfg.get("attention_bias", cfg.get("model_type") == "qwen2")),
        )

    @property
    def head(self) -> int:
        return self.head_dim or self.hidden_size // self.num_attention_heads

    def linear_shapes(self) -> dict[str, tuple[int, int]]:
        """(in_features, out_features) of each linear in one decoder layer."""
        h, i = self.hidden_size, self.intermediate_size
        q, kv = self.num_attention_heads * self.head, self.num_key_value_heads * self.head
        return {
            "q_proj": (h, q),
            "k_proj": (h, kv),
            "v_proj": (h, kv),
            "o_proj": (q, h),
            "gate_proj": (h, i),
            "up_proj": (h, i),
            "down_proj": (i, h),
        }

    def layer_linear_params(self) -> int:
        """Weights of one layer's linears: what bitsandbytes quantizes (not embeddings, norms, lm_head)."""
        return sum(a * b for a, b in self.linear_shapes().values())

    def params(self) -> int:
        """Total parameters: embeddings, layers (linears, biases, two RMSNorms), final norm, lm_head."""
        bias = (self.num_attention_heads + 2 * self.num_key_value_heads) * self.head if self.attention_bias else 0
        layer = self.layer_linear_params() + bias + 2 * self.hidden_size
        heads = 1 if self.tie_word_embeddings else 2
        return heads * self.vocab_size * self.hidden_size + self.num_hidden_layers * layer + self.hidden_size


def resolve_targets(shape: ModelShape, targets: str | list[str] | tuple[str, ...]) -> tuple[str, ...]:
    """A target set name, one module name or a list of names -> module names (errors name the valid ones)."""
    names = TARGET_SETS.get(targets, (targets,)) if isinstance(targets, str) else tuple(targets)
    unknown = [n for n in names if n not in shape.linear_shapes()]
    if unknown:
        raise ValueError(
            f"unknown target module(s) {unknown}; use {sorted(TARGET_SETS)} or {sorted(shape.linear_shapes())}"
        )
    return names


def lora_params(shape: ModelShape, r: int = 16, targets="all-linear", dora: bool = False) -> int:
    """r*(in+out) per adapted linear (A is r x in, B is out x r); DoRA adds `out` magnitudes."""
    lin = shape.linear_shapes()
    per_layer = sum(r * (lin[n][0] + lin[n][1]) + (lin[n][1] if dora else 0) for n in resolve_targets(shape, targets))
    return per_layer * shape.num_hidden_layers


def nf4_bits_per_param(double_quant: bool = True) -> float:
    """4 bits plus constants: fp32 absmax per 64 weights (0.5 bit), or with double quant an 8-bit
    absmax per 64 plus an fp32 per 256 absmaxes (8/64 + 32/16384 = 0.127 bit), QLoRA's figures."""
    if double_quant:
        return 4 + 8 / NF4_BLOCK + 32 / (NF4_BLOCK * DQ_BLOCK)
    return 4 + 32 / NF4_BLOCK


def _trainable_tensors(shape: ModelShape, method: str, r: int, targets, dora: bool) -> list[tuple[int, int, bool]]:
    """(rows, cols, is_embedding) of every trainable tensor, vectors as (n, 1): the optimizer's view."""
    L, h, v, lin = shape.num_hidden_layers, shape.hidden_size, shape.vocab_size, shape.linear_shapes()
    if method != "full":
        per_layer = []
        for n in resolve_targets(shape, targets):
            per_layer += [(r, lin[n][0], False), (lin[n][1], r, False)] + ([(lin[n][1], 1, False)] if dora else [])
        return per_layer * L
    bias = [(shape.num_attention_heads * shape.head, 1, False)] + [
        (shape.num_key_value_heads * shape.head, 1, False)
    ] * 2
    layer = [(o, i, False) for i, o in lin.values()] + [(h, 1, False)] * 2 + (bias if shape.attention_bias else [])
    head = [] if shape.tie_word_embeddings else [(v, h, False)]
    return [(v, h, True)] + head + [(h, 1, False)] + layer * L


def _optimizer_bytes(tensors: list[tuple[int, int, bool]], optimizer: str) -> float:
    """Adam: two fp32 moments (8 B/param). bitsandbytes 8-bit: two 1-byte moments, but 32-bit for
    tensors under 4096 elements and (as the HF Trainer registers them) embeddings. SGD (HF default,
    no momentum): none. Adafactor (HF: no first moment): factored fp32 second moment, rows + cols
    per matrix, full size for vectors."""
    if optimizer in ("adamw_torch", "adamw_torch_fused", "paged_adamw_32bit"):
        return 8.0 * sum(a * b for a, b, _ in tensors)
    if optimizer in ("adamw_8bit", "paged_adamw_8bit"):
        return float(sum(a * b * (8 if emb or a * b < BNB_MIN_8BIT_SIZE else 2) for a, b, emb in tensors))
    if optimizer == "sgd":
        return 0.0
    return 4.0 * sum(a + b if min(a, b) > 1 else a * b for a, b, _ in tensors)  # adafactor


def activation_elems_per_token(shape: ModelShape) -> int:
    """Elements one decoder layer saves per token for backward, after Korthikanti et al. (2022)
    adapted to Llama blocks with SDPA/flash attention (no T x T matrix) and no dropout:
    2 RMSNorm inputs (2h) + q/k/v input (h) + q,k,v and attention output kept by SDPA (2q + 2kv)
    + MLP input (h) + gate out, up out, silu(gate), product = down input (4i) -> 4h + 2q + 2kv + 4i.
    `estimate` adds 2h for full FT (trainable norms keep their normalized inputs) and r per adapter
    (A's output), and with lora_dropout a dropped input copy + 1-byte mask per adapter. Saved tensors
    measured on SmolLM2-135M (fp32, CPU) matched within 1% (LoRA, full); 6% under with dropout."""
    h, i = shape.hidden_size, shape.intermediate_size
    q, kv = shape.num_attention_heads * shape.head, shape.num_key_value_heads * shape.head
    return 4 * h + 2 * q + 2 * kv + 4 * i


@dataclass(frozen=True)
class Plan:
    """Peak-memory breakdown (bytes) of one training micro-step, and its FLOPs."""

    method: str
    weights: float  # base model at its storage precision (NF4 payload for quantized linears)
    quant_constants: float  # NF4 absmax constants
    adapter: float  # trainable adapter weights (0 for full: the weights are trainable themselves)
    gradients: float
    optimizer: float  # optimizer state, incl. an fp32 master copy when asked for
    activations: float
    logits: float
    overhead: float  # runtime baseline, plus QLoRA's transient dequantized weight
    total: float
    trainable_params: int
    total_params: int  # base + adapters, as PEFT's print_trainable_parameters counts "all params"
    tokens: int  # per micro-batch
    flops: float  # per micro-batch, forward + backward (+ recompute)

    @property
    def model_state(self) -> float:
        """Weights, constants, adapters, gradients and optimizer: what the seeds' tables count."""
        return self.weights + self.quant_constants + self.adapter + self.gradients + self.optimizer


def estimate(
    shape: ModelShape,
    *,
    method: str = "lora",
    r: int = 16,
    targets="all-linear",
    dora: bool = False,
    weight_bytes: int = 4,
    load_in_4bit: bool = False,
    double_quant: bool = True,
    optimizer: str = "adamw_torch",
    master_weights: bool = False,
    batch_size: int = 8,
    seq_len: int = 512,
    gradient_checkpointing: bool = False,
    lora_dropout: float = 0.0,
    activation_bytes: int | None = None,
    device: str = "cpu",
    lm_head: str = "full",
    trained_fraction: float = 1.0,
    compiled: bool = False,
    reference: str = "none",
) -> Plan:
    """Estimate one micro-step's peak memory. weight_bytes is the base/compute precision (fp32=4,
    bf16/fp16=2); activations use it too unless activation_bytes says otherwise (autocast).
    Checkpointing keeps each layer's input (h per token) plus one layer's full activations.
    FLOPs: forward 2 per matmul weight per token + causal attention 2*seq*q_dim per layer; backward
    is 2x forward for full, 1x (input grads only) for a frozen base plus 4x for the adapters.
    lm_head (see training.lm_head): `full` scores every position, `chunked` a tile at a time, `trained`
    only the trained_fraction of positions whose next token is trained; `logprob` is TRL's fused log-prob head
    of the preference objectives (tiles of LOGPROB_TILE_TOKENS x LOGPROB_TILE_VOCAB).
    reference, for DPO / KTO: `disabled` scores it on the same weights with the adapter switched off (a fresh
    adapter), `adapter` through TRL's frozen copy of a continued adapter (adapter.init_from), `model` is a second
    frozen model (preference.reference base or a run),
    `precomputed` its log-probs computed before training (preference.precompute_ref_log_probs). Its forward
    runs without grad while the policy's activations wait for backward: a layer at a time, less than backward's
    LM-head tiles, so it adds no activations of its own."""
    for name, value, valid in (
        ("method", method, METHODS),
        ("optimizer", optimizer, OPTIMIZERS),
        ("device", device, tuple(RUNTIME_BYTES)),
        ("lm_head", lm_head, LM_HEADS),
        ("reference", reference, REFERENCES),
    ):
        if value not in valid:
            raise ValueError(f"{name} {value!r}: use one of {', '.join(valid)}")
    quantized = method == "qlora" or load_in_4bit
    if quantized and method == "full":
        raise ValueError("a 4-bit base cannot be fully fine-tuned; use method lora or qlora")
    method = "qlora" if quantized else method
    L, base = shape.num_hidden_layers, shape.params()
    act_b = activation_bytes or weight_bytes
    tokens = batch_size * seq_len

    tensors = _trainable_tensors(shape, method, r, targets, dora)
    trainable = sum(a * b for a, b, _ in tensors)
    if method == "full":  # the trainable weights are the base itself; master copy only below fp32
        adapter, grads = 0.0, float(trainable * weight_bytes)
        opt = _optimizer_bytes(tensors, optimizer) + (4.0 * trainable if master_weights and weight_bytes < 4 else 0.0)
    else:
        adapter = grads = float(trainable * ADAPTER_BYTES)
        opt = _optimizer_bytes(tensors, optimizer)
    if quantized:
        q_params = L * shape.layer_linear_params()
        weights = q_params * 0.5 + (base - q_params) * weight_bytes
        constants = q_params * (nf4_bits_per_param(double_quant) - 4) / 8
    else:
        weights, constants = float(base * weight_bytes), 0.0

    per_layer = activation_elems_per_token(shape)
    if method == "full":
        per_layer += 2 * shape.hidden_size
    else:
        lin, names = shape.linear_shapes(), resolve_targets(shape, targets)
        per_layer += r * len(names)  # A's output, kept as B's input
        if lora_dropout > 0:  # each adapter drops its own copy of the input, plus a 1-byte mask
            per_layer += sum(lin[n][0] for n in names) * (1 + 1 / act_b)
    kept = (L * shape.hidden_size + per_layer) if gradient_checkpointing else L * per_layer
    scale = COMPILED_ACTIVATION_SCALE if compiled else ACTIVATION_SCALE
    activations = scale * tokens * (kept + 2 * shape.hidden_size) * act_b  # + final norm
    if lm_head == "logprob":
        scored = tokens * trained_fraction if device == "cuda" else tokens
        tile = min(scored, LOGPROB_TILE_TOKENS) * min(shape.vocab_size, LOGPROB_TILE_VOCAB)
        logits = LOGPROB_TILE_COPIES[device] * tile * 4
    else:  # TRL's chunked LM head never holds the full logits; the trained-positions head holds only theirs.
        scored = {"full": tokens, "chunked": min(tokens, FUSED_CHUNK_TOKENS), "trained": tokens * trained_fraction}
        logits = LOGITS_COPIES * scored[lm_head] * shape.vocab_size * 4
    overhead = RUNTIME_BYTES[device]
    if reference == "model":  # a second frozen copy of the base (its adapter merged in)
        weights *= 2
        constants *= 2
    elif reference == "adapter" and method != "full":  # TRL's "ref" copy of a continued adapter
        adapter *= 2
    if quantized:  # one linear is dequantized at a time for its matmul
        overhead += max(a * b for a, b in shape.linear_shapes().values()) * weight_bytes

    head_tokens = tokens * trained_fraction if lm_head == "trained" else tokens
    fwd = tokens * 2 * (L * shape.layer_linear_params() + L * seq_len * shape.num_attention_heads * shape.head)
    fwd += head_tokens * 2 * shape.vocab_size * shape.hidden_size
    flops = (3 * fwd if method == "full" else 2 * fwd + 6 * tokens * trainable) + (fwd if gradient_checkpointing else 0)

    parts = (weights, constants, adapter, grads, opt, activations, logits, overhead)
    return Plan(
        method,
        *parts,
        total=sum(parts),
        trainable_params=trainable,
        total_params=base + (0 if method == "full" else trainable),
        tokens=tokens,
        flops=float(flops),
    )


def max_batch_size(shape: ModelShape, budget_bytes: float, *, limit: int = 1 << 20, **kw) -> int:
    """Largest micro-batch whose estimate fits the budget (0 if not even one); memory grows with batch."""
    fits = lambda b: estimate(shape, batch_size=b, **kw).total <= budget_bytes  # noqa: E731
    if not fits(1):
        return 0
    lo, hi = 1, 2
    while hi <= limit and fits(hi):
        lo, hi = hi, hi * 2
    hi = min(hi, limit + 1)
    while hi - lo > 1:  # invariant: fits(lo); hi does not fit or is past the limit
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if fits(mid) else (lo, mid)
    return lo


def compare_methods(shape: ModelShape, weight_bytes: int = 2, **kw) -> dict[str, Plan]:
    """Full fine-tuning vs LoRA on a 16-bit base vs QLoRA on an NF4 base, with the same settings."""
    return {m: estimate(shape, method=m, weight_bytes=weight_bytes, **kw) for m in METHODS}


def format_bytes(n: float) -> str:
    """'12.3 GB' from 1 GB up, '512.0 MB' below (decimal units, like the parameter arithmetic)."""
    return f"{n / 1e9:.1f} GB" if abs(n) >= 1e9 else f"{n / 1e6:.1f} MB"
