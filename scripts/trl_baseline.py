"""Plain TRL SFT or DPO + LoRA training script, as a user would write it by hand.

Used as the reference point for throughput benchmarks. Everything is TRL's
SFTConfig / DPOConfig defaults except fp32 (bf16=False), logging every step, and
the values given on the command line. With --objective dpo the data is
preference records (prompt/chosen/rejected) and DPOTrainer gets a LoraConfig:
TRL then scores the reference with the adapter disabled (no second model).
Prints one JSON line:

    {"tokens", "tokens_total", "seconds", "tokens_per_s", "peak_rss_mb", "final_loss", "time_to_first_step_s"}

`tokens` counts the non-padding tokens fed to the model in steps 2..max_steps
(the first step is warm-up and excluded, from both tokens and seconds); for DPO,
the chosen and the rejected rows of each pair (attention mask sum of TRL's
concatenated batch), as `lorafit train` counts them. `tokens_total` includes step 1.

Example:
    python scripts/trl_baseline.py --model /tmp/smollm2 --data data.jsonl \
        --batch-size 8 --max-steps 20
    python scripts/trl_baseline.py --objective dpo --model /tmp/smollm2 --data pairs.jsonl \
        --batch-size 4 --max-length 512 --lr 5e-5 --beta 0.1 --max-steps 20
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
from trl import DPOConfig, DPOTrainer, SFTConfig, SFTTrainer  # noqa: E402


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
    p.add_argument("--objective", choices=("sft", "dpo"), default="sft")
    p.add_argument("--data", required=True, help="jsonl with a 'messages' column (dpo: prompt/chosen/rejected)")
    p.add_argument("--lora-r", type=int, default=16)
    p.add_argument("--lora-alpha", type=int, default=32)
    p.add_argument("--lora-dropout", type=float, default=0.05)
    p.add_argument("--target-modules", default="all-linear", help="'all-linear' or comma-separated names")
    p.add_argument("--lr", type=float, default=2e-4)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--max-length", type=int, default=1024)
    p.add_argument("--max-steps", type=int, default=20)
    p.add_argument("--beta", type=float, default=0.1, help="dpo: DPOConfig.beta")
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
    common = dict(
        output_dir=tempfile.mkdtemp(prefix="trl_baseline_"),
        bf16=False,
        learning_rate=args.lr,
        per_device_train_batch_size=args.batch_size,
        max_length=args.max_length,
        max_steps=args.max_steps,
        save_strategy="no",
        logging_steps=1,  # TRL logs every 10 steps by default; every step lets short runs report a final loss
    )
    if args.objective == "dpo":
        config, trainer_class = DPOConfig(**common, beta=args.beta), DPOTrainer
    else:
        config, trainer_class = SFTConfig(**common), SFTTrainer
    timer = StepTimer()
    trainer = trainer_class(
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
                "tokens_total": sum(counter.counts[: ga * len(times)]),
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
