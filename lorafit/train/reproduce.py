"""`lorafit reproduce`'s checks: what differs now from when a run was trained, and whether its adapter came out
the same."""

from __future__ import annotations

from pathlib import Path

from lorafit import runs


def checks(run_dir: Path) -> list[str]:
    """What differs now from when RUN_DIR was trained: library versions, data files, device. One line each."""
    from lorafit.core import device
    from lorafit.data import sources
    from lorafit.train import outputs

    before = runs.read_run_json(run_dir)
    warnings = []
    now = outputs.versions()
    for pkg, was in (before.get("versions") or {}).items():
        if now.get(pkg) != was:
            warnings.append(f"{pkg} {now.get(pkg, 'not installed')} here, {was} in the original run")
    for name, digest in (before.get("data") or {}).get("files", {}).items():
        path = Path(name)
        if str(digest).startswith("hub:"):
            continue  # compared after loading, from the new run.json
        if not path.is_file():
            warnings.append(f"data file {name} is missing here")
        elif sources.sha256(path) != digest:
            warnings.append(f"data file {name} changed (sha256 {sources.sha256(path)[:12]}, was {str(digest)[:12]})")
    info, was = device.detect(), before.get("device") or {}
    if was and (info.kind, info.name) != (was.get("kind"), was.get("name")):
        warnings.append(
            f"device {info.kind} {info.name} here, {was.get('kind')} {was.get('name')} in the original run (results may differ in the last bits)"
        )
    return warnings


def default_out(run_dir: Path) -> Path:
    run_dir = run_dir.resolve()  # `lorafit reproduce .` has no name to append -repro to
    out, n = run_dir.with_name(f"{run_dir.name}-repro"), 2
    while out.exists():
        out, n = run_dir.with_name(f"{run_dir.name}-repro{n}"), n + 1
    return out


def compare_adapters(original: Path, new: Path) -> str:
    a = original / runs.ADAPTER / "adapter_model.safetensors"
    b = new / runs.ADAPTER / "adapter_model.safetensors"
    if not a.is_file():
        return f"reproduced into {new} (the original has no adapter to compare with)"
    if a.read_bytes() == b.read_bytes():
        return f"[green]identical[/] adapter: {b} matches {a} byte for byte"
    from safetensors.torch import load_file

    ta, tb = load_file(str(a)), load_file(str(b))
    diff = max(
        ((ta[k] - tb[k]).abs().max().item() for k in ta if k in tb and ta[k].shape == tb[k].shape), default=float("nan")
    )
    return (
        f"[yellow]different[/] adapter: max abs weight difference {diff:.3g} from the original (see the warnings above)"
    )
