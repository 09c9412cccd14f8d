"""Plain TRL SFT + LoRA training script, as a user would write it by hand.

Used as the reference point for throughput benchmarks. Everything is TRL's
SFTConfig defaults except fp32 (bf16=False), logging every step, and the
values given on the command line. Prints one JSON line:

    {"tokens", "seconds", "tokens_per_s", "peak_rss_mb", "final_loss", "time_to_first_step_s"}

`tokens` counts the non-padding tokens fed to the model in steps 2..max_steps
(the first step is warm-up and excluded, from both tokens and seconds).

Example:
    python scripts/trl_baseline.py --model /tmp/smollm2 --data data.jsonl \
        --batch-size 8 --max-steps 20
"""

import time

START = time.perf_counter()

import argparse  # noqa: E402
import json  # noqa: E402
import resource  # noqa: E402
import tempfile  # noqa: E402

import torch  # noqa: E402
from datasets import load_dataset  # noqa: E402
from peft import LoraConfig  # noqa: E402
from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback  # noqa: E402
from trl import SFTConfig, SFTTrainer  # noqa: E402


class CountingCollator:
    """Wraps the trainer's collator and records the real tokens of every batch."""

    def __init__(self, collator):
        self.collator = collator
        self.counts = []

    def __call__(self, examples):
        batch = self.collator(examples)
        if "attention_mask" in batch:
            self.counts.append(int(batch["attention_mask"].sum()))
        else:  # padding-free: one row of real tokens only
            self.counts.append(int(batch["input_ids"].numel()))
        return batch


class StepTimer(TrainerCallback):
    """Wall time of every step end, and the latest logged loss."""

    def __init__(self):
        self.step_end_times = []
        self.loss = None

    def on_step_end(self, args, state, control, **kwargs):
        self.step_end_times.append(time.perf_counter())

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs and "loss" in logs:
            self.loss = logs["loss"]


def peak_rss_mb() -> float:
    """VmHWM: this program's own peak (ru_maxrss would include a parent's memory at fork)."""
    try:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:")) / 1024
    except (OSError, StopIteration):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--model", required=True, help="path of a transformers checkpoint")
    p.add_argument("--data", required=True, help="jsonl with a 'messages' column")
    p.add_argument("--lora-r", type=int, default=16)
    p.add_argument("--lora-alpha", type=int, default=32)
    p.add_argument("--lora-dropout", type=float, default=0.05)
    p.add_argument("--target-modules", default="all-linear", help="'all-linear' or comma-separated names")
    p.add_argument("--lr", type=float, default=2e-4)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--max-length", type=int, default=1024)
    p.add_argument("--max-steps", type=int, default=20)
    args = p.parse_args()

    tokenizer = AutoTokenizer.from_pretrained(args.model)
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32)
    dataset = load_dataset("json", data_files=args.data, split="train")

    targets = args.target_modules
    peft_config = LoraConfig(
        r=args.lora_r,
        lora_alpha=args.lora_alpha,
        lora_dropout=args.lora_dropout,
        target_modules=targets if targets == "all-linear" else targets.split(","),
        task_type="CAUSAL_LM",
    )
    config = SFTConfig(
        output_dir=tempfile.mkdtemp(prefix="trl_baseline_"),
        bf16=False,
        learning_rate=args.lr,
        per_device_train_batch_size=args.batch_size,
        max_length=args.max_length,
        max_steps=args.max_steps,
        save_strategy="no",
        logging_steps=1,  # TRL logs every 10 steps by default; every step lets short runs report a final loss
    )
    timer = StepTimer()
    trainer = SFTTrainer(
        model=model,
        args=config,
        train_dataset=dataset,
        processing_class=tokenizer,
        peft_config=peft_config,
        callbacks=[timer],
    )
    trainer.data_collator = counter = CountingCollator(trainer.data_collator)
    trainer.train()

    ga = config.gradient_accumulation_steps
    times = timer.step_end_times
    tokens = sum(counter.counts[ga : ga * len(times)])  # batches of steps 2..N
    seconds = times[-1] - times[0]
    print(
        json.dumps(
            {
                "tokens": tokens,
                "seconds": round(seconds, 3),
                "tokens_per_s": round(tokens / seconds, 2),
                "peak_rss_mb": round(peak_rss_mb(), 1),
                "final_loss": timer.loss,
                "time_to_first_step_s": round(times[0] - START, 3),
            }
        )
    )


if __name__ == "__main__":
    main()
