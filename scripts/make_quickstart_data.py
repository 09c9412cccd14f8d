"""Generate the quickstart dataset: support answers under Halverton Fulfilment's (invented) policy.

The task is narrow on purpose: a small base model such as SmolLM2-135M-Instruct cannot guess
these rules (48-hour damage window, DMG-<order> claim codes, 14:00 dispatch cutoff, per-carrier
trace windows, ...), so a LoRA fine-tune on this data shows a measurable before/after difference.
Every assistant answer is the policy applied to the slot values of the question, so answers are
deterministic given the facts. Each answer first restates the facts the rule compares (days, time,
item state) and the rule's limit, then writes the value again right before how it stands to the limit,
in the same words for every rule ("28 is fewer than 30", "5 is exactly 5", "hour 15 is past our 14:00
dispatch cutoff"), and only then gives the decision. Values that decide a rule are drawn mostly next to
its limit, on both sides equally often, and every training example of a rule with a limit has a twin
that differs only in that value (see `build`). What a small model needs to learn the comparison rather
than the examples: README, "What the quickstart learns".
One example in eight is a two-turn conversation (user, assistant, user, assistant), so multi-turn
loss masking gets exercised.

Train and eval draw from disjoint customer names, products and order numbers, and each category
keeps one phrasing template back for eval only. Every record carries a "category" (the rule and its
outcome, e.g. tracking/trace; follow_up for a second turn) for `lorafit eval`'s per-category table;
eval records also carry a "reference" phrase that a correct final answer must contain.

Regenerate (the output is fully determined by the seed):
    python scripts/make_quickstart_data.py --seed 7 --out-dir recipes/data
"""

from __future__ import annotations

import argparse
import json
import os
import random
import tempfile
from pathlib import Path

SYSTEM = "You are the customer support assistant for Halverton Fulfilment."
TRACE_DAYS = {"Parcelway": 3, "SwiftFreight": 5, "OrbitPost": 7}  # business days a carrier trace may take
TRACE_AFTER = 5  # business days without a tracking update before we file a trace
TWO_TURN_EVERY = 8  # every 8th example gets a follow-up question

# Slot pools: index 0 feeds train, index 1 feeds eval, so held-out values never appear in train.
NAMES = (
    ["Priya", "Marcus", "Elena", "Tom", "Aisha", "Jonas", "Mei", "Carlos", "Fatima", "Oliver", "Sofia", "Dmitri"],
    ["Ingrid", "Kwame", "Lucia", "Ravi", "Hannah", "Tariq"],
)
ELECTRONICS = (
    [
        "wireless earbuds",
        "USB-C hub",
        "smart plug",
        "Bluetooth speaker",
        "webcam",
        "power bank",
        "smartwatch",
        "wireless router",
        "gaming mouse",
        "tablet",
        "headphones",
        "phone charger",
    ],
    ["e-reader", "mechanical keyboard", "fitness tracker"],
)
GENERAL = (
    [
        "mug set",
        "yoga mat",
        "backpack",
        "throw blanket",
        "frying pan",
        "hiking boots",
        "desk organiser",
        "candle set",
        "umbrella",
        "bath towel",
        "plant pot",
        "tea kettle",
    ],
    ["picture frame", "water bottle", "linen tablecloth"],
)
PERISHABLE = (
    [
        "coffee beans",
        "cheese hamper",
        "fresh flowers",
        "chocolate truffles",
        "sourdough loaf",
        "strawberries",
        "birthday cake",
        "fresh pasta",
        "meal kit",
        "olive bread",
    ],
    ["smoked salmon", "fruit box"],
)
ORDERS = ((10000, 59999), (60000, 99999))
RETURN_POLICY = (
    "Unopened items can be returned within 30 days of delivery, opened electronics within 14 days, "
    "and perishables not at all. Refunds reach your original payment method within 5 business days "
    "after inspection."
)


def _say(templates: list[str], r: random.Random, held_out: bool, **slots) -> str:
    """Pick a phrasing; the last template of each list is reserved for eval."""
    pool = templates if held_out else templates[:-1]
    return r.choice(pool).format(**slots)


def relation(value: int, limit: int) -> str:
    """How a value stands to a rule's limit, in the same words for every rule: one comparison to learn, taught by
    all of them, instead of one per rule."""
    return "more than" if value > limit else "exactly" if value == limit else "fewer than"


def compare(value: int, limit: int) -> str:
    """The comparison a decision rests on, with the value written again right before it: the relation word then
    follows the number it depends on, which a small model attends to far more easily than one a clause back."""
    return f"{value} is {relation(value, limit)} {limit}"


def below(r: random.Random, s: dict) -> bool:
    """Which side of its rule's limit an example falls on: even odds, and the other side for an example's twin."""
    return (r.random() < 0.5) != s.get("twin", False)


def near(r: random.Random, s: dict, threshold: int, low: int, high: int) -> int:
    """A value below `threshold` or at/above it with equal odds, mostly within 4 of it: the examples that teach
    where a rule's line lies are the ones next to it."""
    if below(r, s):
        return r.randint(max(low, threshold - 4), threshold - 1) if r.random() < 0.7 else r.randint(low, threshold - 1)
    return r.randint(threshold, min(high, threshold + 3)) if r.random() < 0.7 else r.randint(threshold, high)


def damaged(r, s):
    within = below(r, s)
    recent = ["this morning", "yesterday", "last night", "earlier today"]  # all inside 48 hours
    when = r.choice(recent) if within else f"{r.randint(3, 12)} days ago"
    user = _say(
        [
            "My {p} from order {o} arrived broken {w}. What do I do?",
            "Order #{o} was delivered {w} and the {p} is damaged.",
            "The {p} (order {o}) came cracked. It was delivered {w}. Can I get a replacement?",
            "Delivered {w}: order {o}, and the {p} inside is smashed.",
            "I got my {p} {w} but it's broken. Order number {o}.",
            "Order {o} came {w}. The {p} has a big crack in it. What are my options?",
            "The {p} from order #{o} was damaged when it arrived {w}. Can you help?",
            "Got order {o} {w}, the box was crushed and the {p} is ruined. Help?",
        ],
        r,
        s["eval"],
        o=s["order"],
        p=s["product"],
        w=when,
    )
    facts = f"Order {s['order']} was delivered {when}"
    if within:
        answer = (
            f"{facts}, within our 48-hour damage window, so you can file a claim: reply with a photo of the "
            f"damage and quote claim code DMG-{s['order']}."
        )
        follow = (
            "How long until the replacement ships?",
            "The replacement ships within 2 business days of your claim being approved, with tracking by email.",
            "2 business days",
        )
        return user, answer, f"DMG-{s['order']}", "within", follow
    answer = (
        f"{facts}, past our 48-hour damage window, so it can't be filed as a damage claim; a return may still apply."
    )
    follow = ("How long do I have for a return then?", RETURN_POLICY, "30 days")
    return user, answer, "can't be filed as a damage claim", "too_late", follow


def tracking(r, s):
    days, carrier = near(r, s, TRACE_AFTER, low=2, high=12), r.choice(list(TRACE_DAYS))
    user = _say(
        [
            "Order {o} has shown no tracking update on {c} for {d} business days. Where is it?",
            "My {c} tracking for #{o} hasn't moved in {d} working days. Should I worry?",
            "Tracking for order {o} ({c}) has been stuck for {d} business days.",
            "Where is order #{o}? {c} tracking hasn't updated in {d} business days.",
            "It's been {d} business days with no scan from {c} on order {o}. Is it lost?",
            "My {p} (order {o}) has been sitting on the same {c} status for {d} working days.",
            "{c} shows nothing new for order {o} in {d} business days. What's going on?",
            "No movement on {c} for {d} working days for my {p}, order {o}. Can you chase it?",
        ],
        r,
        s["eval"],
        o=s["order"],
        c=carrier,
        d=days,
        p=s["product"],
    )
    window = TRACE_DAYS[carrier]
    follow = (
        f"How long does a trace with {carrier} take?",
        f"A {carrier} trace takes up to {window} business days. If the parcel isn't found by then, we refund "
        "you in full or send a free replacement.",
        f"{window} business days",
    )
    facts = (
        f"Order {s['order']} has had no tracking update for {days} business days and we file a trace after "
        f"{TRACE_AFTER}: {compare(days, TRACE_AFTER)}"
    )
    if days >= TRACE_AFTER:
        answer = (
            f"{facts}, so we will file a trace with {carrier} today. {carrier} traces take up to {window} "
            "business days; we'll email you the result."
        )
        return user, answer, f"trace with {carrier} today", "trace", follow
    answer = (
        f"{facts}, so it's too early for a trace: if it still hasn't moved after {TRACE_AFTER} business days, "
        f"we'll file one with {carrier}."
    )
    return user, answer, "too early for a trace", "wait", follow


def returns(r, s):
    kind = r.choice(["unopened", "unopened", "opened", "opened", "perishable"])  # one share per outcome
    if kind == "perishable":
        product, days = r.choice(PERISHABLE[s["eval"]]), r.randint(2, 20)
        state = r.choice(["unopened", "opened"])
    else:
        product = r.choice(ELECTRONICS[s["eval"]] + (GENERAL[s["eval"]] if kind == "unopened" else []))
        limit, state = (14 if kind == "opened" else 30), kind
        days = near(r, s, limit + 1, low=2, high=limit + 20)  # inside the window up to `limit`, outside from limit+1
    user = _say(
        [
            "Can I return the {st} {p} from order {o}? It arrived {d} days ago.",
            "I'd like to send back my {p} (order #{o}). It's {st} and was delivered {d} days ago.",
            "Order {o}: delivered {d} days ago, the {p} is {st}. Is a return possible?",
            "Is it too late to return my {st} {p}? Order {o} came {d} days ago.",
            "I want to return this {st} {p} (order {o}), delivered {d} days ago.",
            "Order #{o}, {p}, {st}, delivered {d} days ago. Can I send it back?",
            "Can the {p} from order {o} still go back? It's {st} and it arrived {d} days ago.",
            "Changed my mind about the {st} {p}, order {o}, delivered {d} days ago. Refund?",
        ],
        r,
        s["eval"],
        o=s["order"],
        p=product,
        d=days,
        st=state,
    )
    follow = (
        "When will I get my money back?",
        "Refunds go to your original payment method within 5 business days after we inspect the returned item.",
        "5 business days",
    )
    if kind == "perishable":
        answer = (
            f"The {product} is perishable, and perishables can't be returned, opened or not, so order "
            f"{s['order']} is not eligible for a return."
        )
        follow = (
            "So I can't return it at all?",
            "That's right: perishable items are never eligible for return at Halverton, opened or unopened.",
            "never eligible",
        )
        return user, answer, "not eligible for a return", "perishable", follow
    rule = "opened electronics" if kind == "opened" else "unopened items"
    facts = (
        f"The {product} is {state}; {rule} can be returned within {limit} days of delivery, and order "
        f"{s['order']} arrived {days} days ago: {compare(days, limit)}"
    )
    if days <= limit:
        answer = f"{facts}, so yes: use return code RET-{s['order']}."
        return user, answer, f"RET-{s['order']}", f"{kind}_in_time", follow
    answer = f"{facts}, so it's outside the return window and can't be returned."
    follow = ("What is your return policy exactly?", RETURN_POLICY, f"{limit} days")
    return user, answer, "outside the return window", f"{kind}_too_late", follow


def wrong_item(r, s):
    other = r.choice([g for g in GENERAL[s["eval"]] if g != s["product"]])
    user = _say(
        [
            "I ordered a {p} (order {o}) but got a {x} instead.",
            "Wrong item in order #{o}: there's a {x} in the box, not my {p}.",
            "You sent me a {x}. My order {o} was for a {p}!",
            "Order #{o} should be a {p}, but I received a {x}.",
            "There's a {x} in my parcel for order {o}. I ordered a {p}.",
            "Got the wrong thing: a {x} came instead of my {p} (order {o}).",
            "Order {o} arrived with a {x} rather than the {p} I paid for. What now?",
        ],
        r,
        s["eval"],
        o=s["order"],
        p=s["product"],
        x=other,
    )
    answer = (
        f"Apologies for the mix-up. Your wrong-item case is WRG-{s['order']}. The correct {s['product']} "
        f"ships within 1 business day, and we'll email a prepaid label to send the {other} back at no cost."
    )
    follow = (
        "Do I have to pay to send the wrong one back?",
        "No. Use the prepaid label we emailed you; returning a wrong item costs you nothing.",
        "prepaid",
    )
    return user, answer, f"WRG-{s['order']}", "case", follow


def address_change(r, s):
    before = below(r, s)
    hour = r.randint(8, 13) if before else r.randint(14, 19)
    time = f"{hour:02d}:{r.choice([5, 10, 20, 35, 45, 55]):02d}"
    carrier = r.choice(list(TRACE_DAYS))
    user = _say(
        [
            "It's {t} now. Can I change the delivery address for order {o}? It ships with {c} today.",
            "Need to update the address on #{o} (shipping today via {c}). Time here is {t}.",
            "We've moved house. Order {o} dispatches today with {c}. It's {t}, can you change the address?",
            "Order #{o} has my old address. It goes out with {c} today and it's {t} now.",
            "It's {t}. Please change the shipping address for order {o}, dispatching via {c} today.",
            "Can you redirect order {o} to a new address? It leaves with {c} today; the time is {t}.",
            "Address mistake on #{o} ({c}, shipping today). It's {t} here. Still fixable?",
            "Wrong address on order {o}, going out with {c} today. It's {t}. Can you fix it?",
        ],
        r,
        s["eval"],
        o=s["order"],
        t=time,
        c=carrier,
    )
    follow = (
        "What's the cutoff for address changes?",
        "Address changes are possible until 14:00 on the day of dispatch. After that the parcel is with the carrier.",
        "14:00",
    )
    if before:
        answer = (
            f"It's {time}: hour {hour:02d} is before our 14:00 dispatch cutoff, so the address for order {s['order']} can "
            "still be changed: reply with the new address."
        )
        return user, answer, "can still be changed", "before_cutoff", follow
    answer = (
        f"It's {time}: hour {hour:02d} is past our 14:00 dispatch cutoff, so order {s['order']} can no longer be "
        f"changed here. Once you have tracking, ask {carrier} to redirect the parcel."
    )
    return user, answer, f"ask {carrier} to redirect", "after_cutoff", follow


def lost_parcel(r, s):
    carrier = r.choice(list(TRACE_DAYS))
    window = TRACE_DAYS[carrier]  # a trace is open: refund only once the carrier's trace window has passed
    days = r.randint(2, window) if below(r, s) else r.randint(window + 1, window + 6)
    user = _say(
        [
            "You filed a trace with {c} for order {o} {d} business days ago. Any news? Can I get a refund?",
            "The {c} trace on #{o} was opened {d} working days ago and my {p} is still missing.",
            "Still no {p}. {c} has had the trace for order {o} for {d} business days. Refund please.",
            "{c} opened a trace on order {o} {d} business days ago. Still nothing. Can I have a refund?",
            "It's been {d} business days since the {c} trace on #{o} started. Is my {p} lost?",
            "The trace with {c} for order {o} is {d} working days old now. What happens next?",
            "My {p} (order #{o}) is still missing after a {d}-business-day {c} trace.",
            "Order {o} is lost, I think. The {c} trace started {d} business days ago.",
        ],
        r,
        s["eval"],
        o=s["order"],
        c=carrier,
        d=days,
        p=s["product"],
    )
    follow = (
        "Can I get a replacement instead of a refund?",
        "Yes. If the parcel is declared lost you can choose a free replacement instead of the refund.",
        "replacement",
    )
    facts = (
        f"A {carrier} trace takes up to {window} business days and yours has been open for {days}: "
        f"{compare(days, window)}"
    )
    if days > window:
        answer = f"{facts}, so order {s['order']} is treated as lost: you'll get a full refund within 5 business days."
        return user, answer, "treated as lost", "lost", follow
    answer = (
        f"{facts}, so the trace is still in progress: if order {s['order']} isn't found by business day "
        f"{window}, we'll give you a full refund or a free replacement."
    )
    return user, answer, "still in progress", "in_progress", follow


CATEGORIES = {
    "damaged": damaged,
    "tracking": tracking,
    "returns": returns,
    "wrong_item": wrong_item,
    "address_change": address_change,
    "lost_parcel": lost_parcel,
}
# How many outcomes each rule has: each outcome gets the same share of the examples (returns has five:
# unopened and opened, each in time or too late, and perishable; wrong_item has one).
OUTCOMES = {"damaged": 2, "tracking": 2, "returns": 5, "wrong_item": 1, "address_change": 2, "lost_parcel": 2}
SCHEDULE = [name for name, n in OUTCOMES.items() for _ in range(n)]


def make_record(
    r: random.Random, category: str, held_out: bool, two_turn: bool, used_orders: set[int], twin: bool = False
) -> dict:
    split = int(held_out)
    order = r.randint(*ORDERS[split])
    while order in used_orders:
        order = r.randint(*ORDERS[split])
    used_orders.add(order)
    slots = {"eval": split, "order": order, "product": r.choice(ELECTRONICS[split] + GENERAL[split]), "twin": twin}
    if category == "wrong_item":
        slots["product"] = r.choice(GENERAL[split])
    user, answer, ref, outcome, follow = CATEGORIES[category](r, slots)
    name = r.choice(NAMES[split])
    greeting = r.choice(["", "Hi! ", "Hi, {} here. ", "Hello, this is {}. ", "{} here: "])
    user = greeting.format(name) + user
    if "{}" in greeting:  # the customer gave a name: answer by name
        answer = f"Hi {name}. {answer}"
    messages = [
        {"role": "system", "content": SYSTEM},
        {"role": "user", "content": user},
        {"role": "assistant", "content": answer},
    ]
    if two_turn:
        messages += [{"role": "user", "content": follow[0]}, {"role": "assistant", "content": follow[1]}]
        ref, outcome = follow[2], "follow_up"
    assert ref in messages[-1]["content"], (category, ref)
    record = {"messages": messages, "category": f"{category}/{outcome}"}
    if held_out:
        record["reference"] = ref
    return record


def build(n: int, held_out: bool, r: random.Random) -> list[dict]:
    """n records: rules round-robin in proportion to their outcomes, every TWO_TURN_EVERY-th one two-turn,
    then shuffled. In training, every example of a rule with a limit comes with its twin: the same customer,
    order, product and wording, with the value on the other side of the limit and the other decision. Without
    twins a small model fits each training answer by what else the question says (its order number, product,
    phrasing) and decides held-out questions no better than chance; a twin differs only in the value, so only
    the comparison explains both."""
    used: set[int] = set()
    records: list[dict] = []
    i, again = 0, False
    while len(records) < n:
        category, two_turn = SCHEDULE[i % len(SCHEDULE)], i % TWO_TURN_EVERY == TWO_TURN_EVERY - 1
        start, known = r.getstate(), set(used)
        records.append(make_record(r, category, held_out, two_turn, used))
        if not held_out and len(records) < n:
            after = r.getstate()
            r.setstate(start)  # the same draws, so the same customer, order, product and wording
            twin = make_record(r, category, held_out, two_turn, set(known), twin=True)
            r.setstate(after)
            if twin["messages"] != records[-1]["messages"]:
                records.append(twin)
            elif not again:  # a rule without a limit has no twin: it gets a second example of its own instead
                again = True
                continue
        i, again = i + 1, False
    r.shuffle(records)
    return records


def write_jsonl(path: Path, records: list[dict]) -> None:
    """Write atomically: a temp file in the same folder, then os.replace."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            for rec in records:
                f.write(json.dumps(rec, ensure_ascii=False) + "\n")
        os.chmod(tmp, 0o644)  # mkstemp creates 0600
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--out-dir", type=Path, default=Path("recipes/data"))
    ap.add_argument("--n-train", type=int, default=1200)
    ap.add_argument("--n-eval", type=int, default=112)
    args = ap.parse_args()
    # Separate streams: the held-out set stays the same whatever --n-train is, so runs on more data compare.
    train, evals = (
        build(args.n_train, False, random.Random(args.seed)),
        build(args.n_eval, True, random.Random(-args.seed)),
    )
    write_jsonl(args.out_dir / "warehouse_train.jsonl", train)
    write_jsonl(args.out_dir / "warehouse_eval.jsonl", evals)
    for label, recs in (("train", train), ("eval", evals)):
        counts = {c: sum(rec["category"].startswith(c + "/") for rec in recs) for c in CATEGORIES}
        print(f"{label}: {len(recs)} records {counts}")


if __name__ == "__main__":
    main()
