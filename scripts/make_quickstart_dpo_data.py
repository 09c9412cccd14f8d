"""Generate the preference quickstart's data: escalate upset customers, and only them.

The SFT quickstart (make_quickstart_data.py) teaches Halverton's policy; it has never seen an upset customer,
so it answers "This is the third time I'm writing!" with the plain policy answer. The policy this data adds:
when a customer is upset, the answer is the same policy answer followed by an escalation,
"I've escalated this to a supervisor as case ESC-<order>: you'll hear back within 24 hours."; when a customer
is calm, no escalation. Each record is a pair over the same prompt:
  upset prompt   chosen = answer + escalation, rejected = answer (what the SFT run says)
  calm prompt    chosen = answer,              rejected = answer + escalation (escalating everyone is wrong)
One pair in four is calm. The prompts, orders, names and products come from the SFT generator, with its
train/eval split (held-out values never appear in train); the upset phrasings keep two back for eval only.
Held-out records carry a "reference" (ESC-<order> for an upset customer, the SFT rule's phrase for a calm one),
for a calm one an "avoid" (the escalation: a calm answer that escalates is wrong) and a "category"
(escalate/<rule> or calm/<rule>) for `lorafit eval`'s generation metric.

Regenerate (the output is fully determined by the seed):
    python scripts/make_quickstart_dpo_data.py --seed 7 --out-dir recipes/data
"""

from __future__ import annotations

import argparse
import random
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import make_quickstart_data as sft  # noqa: E402

# Index 0 feeds train, index 1 eval: the last two phrasings are never trained on.
UPSET = (
    [
        "This is the third time I'm writing about this!",
        "I'm really angry about this.",
        "Honestly, this is unacceptable.",
        "I want to speak to a manager.",
        "I've had enough of this.",
        "Your service has been terrible.",
        "I'm so frustrated right now.",
        "This is ridiculous.",
    ],
    ["I am absolutely fed up with Halverton.", "This is a disgrace and I expect better."],
)
CALM_EVERY = 4  # one pair in four is a calm customer, who must not be escalated
ESCALATED = "escalated this to a supervisor"  # what a calm customer's answer never says


def escalation(order: int) -> str:
    return f" I've {ESCALATED} as case ESC-{order}: you'll hear back within 24 hours."


def make_pair(r: random.Random, category: str, held_out: bool, calm: bool, used: set[int]) -> dict:
    known = set(used)
    record = sft.make_record(r, category, held_out, two_turn=False, used_orders=used)
    (order,) = used - known  # the order number the record drew
    system, user, assistant = record["messages"]
    plain = assistant["content"]
    escalated = plain + escalation(order)
    if calm:
        chosen, rejected, ref = plain, escalated, record.get("reference")
    else:
        upset = r.choice(UPSET[int(held_out)])
        user = {**user, "content": f"{user['content']} {upset}"}
        chosen, rejected, ref = escalated, plain, f"ESC-{order}"
    pair = {
        "prompt": [system, user],
        "chosen": [{"role": "assistant", "content": chosen}],
        "rejected": [{"role": "assistant", "content": rejected}],
        "category": f"{'calm' if calm else 'escalate'}/{category}",
    }
    if held_out:
        pair["reference"] = ref
        if calm:
            pair["avoid"] = ESCALATED
    return pair


def build(n: int, held_out: bool, r: random.Random, calm_every: int = CALM_EVERY) -> list[dict]:
    used: set[int] = set()
    pairs = [
        make_pair(r, sft.SCHEDULE[i % len(sft.SCHEDULE)], held_out, i % calm_every == calm_every - 1, used)
        for i in range(n)
    ]
    r.shuffle(pairs)
    return pairs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--out-dir", type=Path, default=Path("recipes/data"))
    ap.add_argument("--n-train", type=int, default=320)
    ap.add_argument("--n-eval", type=int, default=64)
    ap.add_argument("--train-calm-every", type=int, default=CALM_EVERY, help="one train pair in N is calm")
    args = ap.parse_args()
    # Streams of their own, apart from the SFT generator's: the SFT data stays as it is.
    train = build(args.n_train, False, random.Random(1000 + args.seed), args.train_calm_every)
    evals = build(args.n_eval, True, random.Random(-1000 - args.seed))
    sft.write_jsonl(args.out_dir / "warehouse_dpo_train.jsonl", train)
    sft.write_jsonl(args.out_dir / "warehouse_dpo_eval.jsonl", evals)
    for label, pairs in (("train", train), ("eval", evals)):
        calm = sum(p["category"].startswith("calm/") for p in pairs)
        print(f"{label}: {len(pairs)} pairs, {len(pairs) - calm} upset, {calm} calm")


if __name__ == "__main__":
    main()
