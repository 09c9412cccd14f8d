#!/usr/bin/env bash
# The one command to run whenever a GPU is at hand (about 8 minutes on one GPU):
#   scripts/gpu_check.sh            # from a checkout, after `make install`
# Runs every `gpu` test, a LoRA and a QLoRA run of the quickstart on CUDA, and scripts/bench.py on CUDA, then
# prints one summary table. Exits non-zero if any part failed; each part's log is in $OUT (default /tmp/gpu_check).
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
OUT=${OUT:-/tmp/gpu_check}
STEPS=${STEPS:-40}
mkdir -p "$OUT"
export HF_HUB_OFFLINE=1 LORAFIT_REGISTRY="$OUT/runs.sqlite"

if ! "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    echo "gpu_check: no CUDA device visible to $PY" >&2
    exit 2
fi

declare -a NAMES CODES
part() {  # part NAME COMMAND...: run one part, keep its log and exit code
    local name=$1
    shift
    echo "== $name: $*" >&2
    "$@" >"$OUT/$name.log" 2>&1
    local code=$?
    NAMES+=("$name")
    CODES+=("$code")
    tail -n 3 "$OUT/$name.log" >&2
}

part gpu-tests timeout 240 "$PY" -m pytest -q -m gpu -p no:cacheprovider
for kind in lora qlora; do
    quant=false
    [ "$kind" = qlora ] && quant=true
    rm -rf "$OUT/quickstart-$kind"
    part "quickstart-$kind" timeout 150 "$PY" -m lorafit.cli train recipes/quickstart.yaml \
        --set "training.max_steps=$STEPS" --set "quantization.load_in_4bit=$quant" --set "output.dir=$OUT/quickstart-$kind"
done
part bench timeout 180 "$PY" scripts/bench.py --steps 20 --repeats 1

summary() {  # one row per part; training runs add their figures from run.json
    "$PY" - "$OUT" "${NAMES[@]}" -- "${CODES[@]}" <<'PYEOF'
import json, sys
from pathlib import Path

out, rest = Path(sys.argv[1]), sys.argv[2:]
names, codes = rest[: rest.index("--")], rest[rest.index("--") + 1 :]
print(f"{'part':<18} {'exit':>4}  {'steps':>5} {'tok/s':>9} {'peak MB':>9} {'loss':>8}  note")
for name, code in zip(names, codes):
    row = {"steps": "", "tok/s": "", "peak": "", "loss": "", "note": ""}
    run_json = out / name / "run.json"
    if run_json.is_file():
        t = json.loads(run_json.read_text()).get("train") or {}
        row.update(steps=t.get("steps", ""), **{"tok/s": t.get("tokens_per_s", ""), "peak": t.get("peak_memory_mb", ""),
                                                 "loss": t.get("last_logged_loss", "")})
    log = (out / f"{name}.log").read_text(errors="replace").strip().splitlines()
    if name == "bench" and log:
        try:
            b = json.loads(log[-1])
            row.update(**{"tok/s": b.get("lorafit_tok_s", ""), "peak": b.get("lorafit_peak_mb", ""),
                          "note": f"speedup vs TRL {b.get('speedup')}, memory ratio {b.get('memory_ratio')}"})
        except ValueError:
            pass
    if name == "gpu-tests" and log:
        row["note"] = log[-1][:60]
    print(f"{name:<18} {code:>4}  {row['steps']!s:>5} {row['tok/s']!s:>9} {row['peak']!s:>9} {row['loss']!s:>8}  {row['note']}")
PYEOF
}
summary | tee "$OUT/summary.txt"
for code in "${CODES[@]}"; do
    [ "$code" = 0 ] || exit 1
done
