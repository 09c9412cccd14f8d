"""Run apart from lorafit, by `lorafit export --format gguf-lora`: `python gguf_probe.py CONVERTER BASE_DIR ADAPTER_GGUF
DELTAS OUT_JSON`. It imports llama.cpp's own `gguf` and `conversion` modules from CONVERTER (not the pinned `gguf`
of site-packages, hence the subprocess), so it imports nothing from lorafit.

For each PEFT delta in DELTAS (a safetensors file of HF-named `....weight` tensors, each PEFT's get_delta_weight),
it applies the converter's own tensor transformation for the base architecture (its name map, and e.g. Llama's
q/k row permutation for RoPE), then compares it with what llama.cpp will add to that weight from the adapter GGUF:
scale * B @ A with scale = adapter.lora.alpha / rank (llama.cpp's rule, rank = B's columns). It writes the GGUF's
alpha and, per tensor, the largest absolute difference and the largest |delta|.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def main(converter: str, base_dir: str, adapter_gguf: str, deltas_file: str, out_json: str) -> None:
    sys.path.insert(0, str(Path(converter) / "gguf-py"))
    sys.path.insert(0, converter)
    import gguf
    import torch
    from conversion import ModelBase, ModelType, get_model_architecture, get_model_class
    from safetensors.torch import load_file

    reader = gguf.GGUFReader(adapter_gguf)
    field = reader.get_field(gguf.Keys.Adapter.LORA_ALPHA)
    alpha = float(field.contents())
    tensors = {
        t.name: torch.from_numpy(gguf.quants.dequantize(t.data, t.tensor_type).copy()).float() for t in reader.tensors
    }

    hparams = ModelBase.load_hparams(Path(base_dir), False)
    model_class = get_model_class(get_model_architecture(hparams, ModelType.TEXT))
    model = model_class(
        Path(base_dir), gguf.LlamaFileType.ALL_F32, Path(out_json).with_suffix(".gguf"), dry_run=True, hparams=hparams
    )
    rows = {}
    for name, delta in load_file(deltas_file).items():
        bid = int(name.split(".layers.")[1].split(".")[0]) if ".layers." in name else None
        mapped = list(model.modify_tensors(delta.float(), name, bid))
        for gguf_name, expected in mapped:
            a, b = tensors.get(f"{gguf_name}.lora_a"), tensors.get(f"{gguf_name}.lora_b")
            if a is None or b is None:
                rows[gguf_name] = {"source": name, "missing": True}
                continue
            implied = (alpha / b.shape[-1]) * (b @ a)
            rows[gguf_name] = {
                "source": name,
                "rank": int(b.shape[-1]),
                "max_abs_diff": float((implied - expected).abs().max()),
                "max_abs_delta": float(expected.abs().max()),
            }
    adapted = sorted(n.removesuffix(".lora_a") for n in tensors if n.endswith(".lora_a"))
    Path(out_json).write_text(json.dumps({"alpha": alpha, "tensors": rows, "adapted": adapted}))


if __name__ == "__main__":
    main(*sys.argv[1:6])
