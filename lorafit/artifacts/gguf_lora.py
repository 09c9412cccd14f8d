"""`lorafit export --format gguf-lora`: the adapter alone as a llama.cpp LoRA GGUF, beside its unmerged base as a GGUF.

Both files are written by llama.cpp's own converters (convert_lora_to_gguf.py, convert_hf_to_gguf.py), taken from
llama-cpp-python's sdist, which vendors llama.cpp (`make install` puts them in .venv/llama-cpp-convert). They ship
their own `gguf` module, so they run in subprocesses, as export.py runs convert_hf_to_gguf.

Where the converter alone would be wrong, lorafit corrects or refuses:
- llama.cpp scales an adapter by alpha / r (llama-adapter.cpp: adapter.lora.alpha over B's columns), and the
  converter copies lora_alpha as is. rsLoRA's PEFT scale is alpha / sqrt(r): the converter is given a copy of the
  adapter whose lora_alpha is alpha * sqrt(r), so llama.cpp's alpha / r is PEFT's scale again.
- pissa / olora / corda runs are saved by lorafit already converted against the untouched base (a plain LoRA of
  rank 2r, models/adapters.save). A folder still marked with such an init is relative to a residual base that
  nothing here can rebuild (lorafit keeps no initial A0 / B0, and CorDA's needs its calibration data): refused.
- DoRA, IA3, prompt / prefix tuning, trained module copies (modules_to_save), LoRA on embeddings and per-module
  alphas have no form in a llama.cpp LoRA GGUF: refused, with the merged GGUF (`--format gguf`) as the way out.

Every export is verified: the written GGUF is read back with the converter's own `gguf` reader and, for every
adapted module, alpha / r * B @ A is compared with PEFT's get_delta_weight (in the converter's tensor layout; see
gguf_probe.py). When llama-cpp-python is importable, base + adapter GGUF are also loaded in llama.cpp and its greedy
tokens on probe prompts compared with PEFT's.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from lorafit import runs
from lorafit.core.errors import LorafitError, MissingError, RecipeError

LLAMA_CPP_PYTHON = "0.3.36"  # the sdist the converters come from (Makefile LLAMA_CPP_PYTHON)
CONVERTER_ENV = "LORAFIT_LLAMA_CPP_CONVERTER"
GGUF_TYPES = ("f16", "q8_0", "f32", "bf16")
# Largest |scale * B @ A - PEFT delta| allowed, as a share of the tensor's largest |delta|: float32 rounding, then
# the stored type's (f16 has an 11-bit significand, bf16 8 bits, q8_0 8-bit blocks of 32).
RELATIVE_TOLERANCE = {"f32": 1e-5, "f16": 2e-3, "bf16": 1.6e-2, "q8_0": 2e-2}
PROBE_QUESTIONS = (
    "Where is my parcel?",
    "My order arrived damaged.",
    "Can I return an opened item?",
    "Write one sentence about the sea.",
)
PROBE_TOKENS = 8  # greedy tokens compared per probe prompt
RESIDUAL_INITS = ("pissa", "olora", "corda", "lora_ga")
MERGED_FIX = "export the merged model instead: lorafit export RUN --format gguf"


class ExportCheckFailed(LorafitError):
    exit_code = 1


def converter_dir() -> Path:
    return Path(os.environ.get(CONVERTER_ENV, Path(sys.prefix) / "llama-cpp-convert"))


def _converter() -> Path:
    tool = converter_dir()
    if not (tool / "convert_lora_to_gguf.py").is_file() or not (tool / "gguf-py").is_dir():
        raise MissingError(
            f"--format gguf-lora needs llama.cpp's converters in {tool} (from llama-cpp-python's sdist)",
            f"run `make install`, or point {CONVERTER_ENV} at a llama.cpp checkout (convert_lora_to_gguf.py, "
            f"conversion/, gguf-py/); the Makefile takes them from llama-cpp-python=={LLAMA_CPP_PYTHON}",
        )
    return tool


def converter_source() -> str:
    source = converter_dir() / "SOURCE"
    return source.read_text().strip() if source.is_file() else str(converter_dir())


# ---------------------------------------------------------------- what a LoRA GGUF can hold


def refusal(config: dict, method: str | None = None) -> RecipeError | None:
    """Why this adapter (its adapter_config.json; `method`: the recipe's) cannot become a llama.cpp LoRA GGUF."""
    kind = config.get("peft_type")
    if kind == "IA3":
        return RecipeError(
            "IA3 learns scaling vectors, not the B @ A pairs a llama.cpp LoRA GGUF holds",
            f"IA3 merges into its base: {MERGED_FIX}",
        )
    if kind in ("PROMPT_TUNING", "PREFIX_TUNING", "P_TUNING"):
        return RecipeError(
            f"{kind.lower()} learns virtual tokens, which llama.cpp's adapters cannot carry, and nothing of it merges",
            "serve it with PEFT: lorafit serve RUN (transformers engine), or lorafit export RUN --format peft",
        )
    if kind != "LORA":
        return RecipeError(f"a {kind} adapter has no llama.cpp LoRA form", MERGED_FIX)
    if config.get("use_dora"):
        return RecipeError(
            "DoRA rescales each column of W + B @ A by a learned magnitude; llama.cpp adds only scale * B @ A",
            f"DoRA merges exactly: {MERGED_FIX}",
        )
    if method == "loftq":
        return RecipeError(
            "loftq's A and B were fitted to the 4-bit base's quantization error, not to the full-precision base "
            "a GGUF base is converted from",
            "serve it as a PEFT adapter on the 4-bit base: lorafit export RUN --format peft",
        )
    if config.get("modules_to_save"):
        names = ", ".join(config["modules_to_save"])
        return RecipeError(
            f"the adapter trains full copies of {names} (modules_to_save), which a llama.cpp LoRA GGUF cannot carry",
            f"the merged model holds them: {MERGED_FIX}",
        )
    init = str(config.get("init_lora_weights", True)).lower()
    if init.startswith(RESIDUAL_INITS):
        return RecipeError(
            f"this adapter (init_lora_weights {init}) is relative to a residual base (the weights minus their "
            "initial A0 @ B0), which llama.cpp does not have; lorafit keeps no A0 / B0 to convert it",
            "lorafit saves its own pissa/olora/corda runs converted against the untouched base; re-save this one "
            "with PEFT's save_pretrained(..., path_initial_model_for_weight_conversion=...), or " + MERGED_FIX,
        )
    if config.get("lora_bias"):
        return RecipeError("the adapter trains a bias on B (lora_bias), which llama.cpp's LoRA has not", MERGED_FIX)
    if config.get("alpha_pattern") or (config.get("use_rslora") and config.get("rank_pattern")):
        return RecipeError(
            "the adapter scales its modules differently (alpha_pattern, or rsLoRA with rank_pattern); a llama.cpp "
            "LoRA GGUF holds one alpha, scaled by each tensor's rank",
            MERGED_FIX,
        )
    return None


def gguf_alpha(config: dict) -> float:
    """The adapter.lora.alpha under which llama.cpp's alpha / r is PEFT's scale: alpha, or alpha * sqrt(r) for rsLoRA
    (PEFT's alpha / sqrt(r))."""
    alpha = float(config["lora_alpha"])
    return alpha * math.sqrt(config["r"]) if config.get("use_rslora") else alpha


# ---------------------------------------------------------------- the converters


def _run(script: str, args: list[str], what: str) -> None:
    tool = _converter()
    cmd = [sys.executable, str(tool / script), *args]
    env = {k: v for k, v in os.environ.items() if k != "NO_LOCAL_GGUF"}  # the converter's own gguf-py
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        tail = "\n".join((proc.stderr or proc.stdout).strip().splitlines()[-4:])
        raise ExportCheckFailed(f"llama.cpp's {script} failed on {what}:\n{tail}")


def _replace_from_tmp(outfile: Path, write) -> None:
    tmp = outfile.with_name(f".{outfile.name}.tmp")
    tmp.unlink(missing_ok=True)
    try:
        write(tmp)
        if not tmp.is_file():
            raise ExportCheckFailed(f"llama.cpp's converter wrote no {outfile.name}")
        os.replace(tmp, outfile)
    finally:
        tmp.unlink(missing_ok=True)


def convert_adapter(adapter_dir: Path, base_dir: Path, outfile: Path, outtype: str, alpha: float) -> None:
    """convert_lora_to_gguf.py on a copy of the adapter whose lora_alpha is `alpha` (and use_rslora off, so the
    copy says what llama.cpp will do)."""
    config = json.loads((Path(adapter_dir) / "adapter_config.json").read_text())
    with tempfile.TemporaryDirectory(prefix="lorafit-gguf-lora-") as tmp:
        copy = Path(tmp) / "adapter"
        copy.mkdir()
        for name in ("adapter_model.safetensors", "adapter_model.bin"):
            if (Path(adapter_dir) / name).is_file():
                os.symlink((Path(adapter_dir) / name).resolve(), copy / name)
        (copy / "adapter_config.json").write_text(json.dumps({**config, "lora_alpha": alpha, "use_rslora": False}))
        args = ["--base", str(base_dir), "--outtype", outtype, str(copy)]
        _replace_from_tmp(
            Path(outfile),
            lambda tmp_out: _run("convert_lora_to_gguf.py", ["--outfile", str(tmp_out), *args], str(adapter_dir)),
        )


def convert_base(base_dir: Path, outfile: Path, outtype: str) -> None:
    args = [str(base_dir), "--outtype", outtype]
    _replace_from_tmp(
        Path(outfile), lambda tmp_out: _run("convert_hf_to_gguf.py", [*args, "--outfile", str(tmp_out)], str(base_dir))
    )


def _base_gguf(base_dir: Path, out: Path, outtype: str) -> tuple[Path, bool]:
    """base-TYPE.gguf in `out`, converted from the unmerged base; reused when a sidecar says it came from the same
    base directory and converter and the file is the size it had."""
    path = out / f"base-{outtype}.gguf"
    sidecar = path.with_name(path.name + ".source.json")
    source = {"base": str(Path(base_dir).resolve()), "converter": converter_source(), "type": outtype}
    if path.is_file() and sidecar.is_file():
        recorded = json.loads(sidecar.read_text())
        if recorded.get("bytes") == path.stat().st_size and {k: recorded.get(k) for k in source} == source:
            return path, True
    convert_base(base_dir, path, outtype)
    sidecar.write_text(json.dumps({**source, "bytes": path.stat().st_size}))
    return path, False


def base_model_dir(recipe) -> Path:
    """The base checkpoint as a local folder (what the converters read): a hub id resolves to its cached snapshot."""
    from lorafit import models

    name = models.resolve_model_path(recipe)
    if Path(name).is_dir():
        return Path(name)
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(name, revision=recipe.model.revision))
    except Exception as exc:  # offline without a cached copy, a gated repo, ...
        raise MissingError(
            f"llama.cpp's converters need {name} as local files: {exc}", "download it once with the hub reachable"
        ) from None


# ---------------------------------------------------------------- verification


def peft_deltas(model) -> dict:
    """PEFT's own delta (get_delta_weight) for every adapted module, named as the base checkpoint names the weight."""
    from peft.tuners.lora import Linear, LoraLayer

    deltas = {}
    for name, module in model.named_modules():
        if not isinstance(module, LoraLayer) or "default" not in module.lora_A:
            continue
        if not isinstance(module, Linear):
            raise RecipeError(
                f"{name} is a LoRA on a {type(module.get_base_layer()).__name__}; lorafit exports and verifies "
                "llama.cpp adapters on linear layers only",
                MERGED_FIX,
            )
        delta = module.get_delta_weight("default").detach().float().contiguous()
        deltas[name.removeprefix("base_model.model.") + ".weight"] = delta
    return deltas


def compare_deltas(base_dir: Path, adapter_gguf: Path, deltas: dict) -> dict:
    """gguf_probe.py's reading of the GGUF against PEFT's deltas: {"alpha", "tensors": {gguf name: diffs}, ...}."""
    from safetensors.torch import save_file

    tool = _converter()
    with tempfile.TemporaryDirectory(prefix="lorafit-gguf-check-") as tmp:
        deltas_file, out = Path(tmp) / "deltas.safetensors", Path(tmp) / "probe.json"
        save_file(deltas, str(deltas_file))
        probe = Path(__file__).with_name("gguf_probe.py")
        cmd = [sys.executable, str(probe), str(tool), str(base_dir), str(adapter_gguf), str(deltas_file), str(out)]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0 or not out.is_file():
            tail = "\n".join((proc.stderr or proc.stdout).strip().splitlines()[-4:])
            raise ExportCheckFailed(f"reading {adapter_gguf} back failed:\n{tail}")
        return json.loads(out.read_text())


def delta_check(probe: dict, expected: int, outtype: str) -> dict:
    """The verdict on compare_deltas' rows: every PEFT delta found in the GGUF, each within the type's tolerance."""
    rows = probe["tensors"]
    missing = sorted(r["source"] for r in rows.values() if r.get("missing"))
    if missing or len(rows) != expected or len(probe["adapted"]) != expected:
        raise ExportCheckFailed(
            f"the GGUF adapts {len(probe['adapted'])} tensors where PEFT adapts {expected}"
            + (f"; missing: {', '.join(missing[:4])}" if missing else "")
        )
    worst = max(rows.values(), key=lambda r: r["max_abs_diff"] / max(r["max_abs_delta"], 1e-30))
    relative = worst["max_abs_diff"] / max(worst["max_abs_delta"], 1e-30)
    if relative > RELATIVE_TOLERANCE[outtype]:
        raise ExportCheckFailed(
            f"llama.cpp would add alpha/r * B @ A off PEFT's delta by {worst['max_abs_diff']:.2e} on "
            f"{worst['source']} ({relative:.1%} of its largest entry; {outtype} allows "
            f"{RELATIVE_TOLERANCE[outtype]:.1e})"
        )
    return {
        "tensors": expected,
        "gguf_alpha": probe["alpha"],
        "max_abs_diff": max(r["max_abs_diff"] for r in rows.values()),
        "max_relative_diff": relative,
    }


def probe_prompts(tokenizer) -> list[list[int]]:
    from lorafit.models.generation import chat_prompt

    texts = [chat_prompt(tokenizer, [{"role": "user", "content": q}]) for q in PROBE_QUESTIONS]
    return [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]


def peft_greedy(model, prompts: list[list[int]], n: int = PROBE_TOKENS) -> list[list[int]]:
    """n argmax tokens after each prompt (no stop token: llama.cpp's side runs the same n)."""
    import torch

    out = []
    for ids in prompts:
        seq = list(ids)
        with torch.no_grad():
            for _ in range(n):
                seq.append(int(model(input_ids=torch.tensor([seq])).logits[0, -1].argmax()))
        out.append(seq[len(ids) :])
    return out


def llama_cpp_greedy(base: Path, adapter: Path, prompts: list[list[int]], n: int = PROBE_TOKENS):
    """The same in llama.cpp (llama-cpp-python), base GGUF + adapter GGUF; None when llama_cpp is not installed."""
    try:
        import llama_cpp
    except ImportError:
        return None
    llm = llama_cpp.Llama(
        model_path=str(base),
        lora_path=str(adapter),
        n_ctx=max(len(p) for p in prompts) + n + 8,
        n_threads=max(1, min(4, os.cpu_count() or 1)),
        seed=0,
        verbose=False,
    )
    out = []
    for ids in prompts:
        llm.reset()
        tokens = []
        for token in llm.generate(ids, temp=0.0, top_k=1, top_p=1.0, min_p=0.0, repeat_penalty=1.0, reset=True):
            tokens.append(int(token))
            if len(tokens) == n:
                break
        out.append(tokens)
    if hasattr(llm, "close"):
        llm.close()
    return out


def _llama_cpp_check(base_gguf: Path, adapter_gguf: Path, model, tokenizer, outtype: str) -> dict:
    prompts = probe_prompts(tokenizer)
    theirs = llama_cpp_greedy(base_gguf, adapter_gguf, prompts)
    if theirs is None:
        return {"llama_cpp": "skipped: llama-cpp-python is not installed (pip install 'lorafit[gguf]')"}
    ours = peft_greedy(model, prompts)
    first = sum(a[0] == b[0] for a, b in zip(ours, theirs)) / len(prompts)
    whole = sum(a == b for a, b in zip(ours, theirs))
    needed = 1.0 if outtype != "q8_0" else 0.75  # as for the merged GGUF: q8_0 may flip a near-tie
    if first < needed:
        raise ExportCheckFailed(
            f"llama.cpp with {adapter_gguf.name} disagrees with PEFT on {1 - first:.0%} of greedy next tokens"
        )
    return {
        "llama_cpp": "checked",
        "greedy_agreement": first,
        "greedy_sequences_equal": f"{whole}/{len(prompts)} ({PROBE_TOKENS} tokens each)",
    }


# ---------------------------------------------------------------- the export


def export_gguf_lora(run_dir: Path, out: Path, outtype: str, record: bool = True) -> dict:
    if outtype not in GGUF_TYPES:
        raise RecipeError(f"--gguf-type {outtype!r} is not one of {', '.join(GGUF_TYPES)}")
    from lorafit import models

    recipe, _ = runs.load_run(run_dir)
    adapter_dir = runs.adapter_path(run_dir)
    config = json.loads((adapter_dir / "adapter_config.json").read_text())
    problem = refusal(config, recipe.adapter.method)
    if problem is not None:
        raise problem
    _converter()  # before the model loads
    base_dir = base_model_dir(recipe)
    started = time.perf_counter()
    model, tokenizer = models.load_with_adapter(recipe, adapter_dir, full_precision=True)
    deltas = peft_deltas(model)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    adapter_gguf = out / f"adapter-{outtype}.gguf"
    convert_adapter(adapter_dir, base_dir, adapter_gguf, outtype, gguf_alpha(config))
    check = delta_check(compare_deltas(base_dir, adapter_gguf, deltas), len(deltas), outtype)
    base_gguf, reused = _base_gguf(base_dir, out, outtype)
    report = {
        "path": str(adapter_gguf),
        "base": str(base_gguf),
        "base_reused": reused,
        "type": outtype,
        "bytes": adapter_gguf.stat().st_size,
        "peft_alpha": config["lora_alpha"],
        "rank": config["r"],
        "rslora": bool(config.get("use_rslora")),
        **check,
        **_llama_cpp_check(base_gguf, adapter_gguf, model, tokenizer, outtype),
        "converter": converter_source(),
        "seconds": round(time.perf_counter() - started, 2),
    }
    if record and runs.adapter_path(run_dir) != Path(run_dir):  # a copied adapter folder has no run.json
        runs.record_export(run_dir, f"gguf_lora_{outtype}", report)
    return report


def copy_into(path: Path, folder: Path) -> Path:
    """`path` inside `folder` (hard link when it can, else a copy): what an Ollama folder holds."""
    target = Path(folder) / Path(path).name
    if target.resolve() == Path(path).resolve():
        return target
    target.unlink(missing_ok=True)
    try:
        os.link(path, target)
    except OSError:
        shutil.copy2(path, target)
    return target
