"""Where the LM head runs during training, and the cross-entropy computed from it.

The LM head is the largest single matmul of a small model (SmolLM2-135M: 28M of its 135M
multiply-adds per token) and its fp32 logits, with their log-softmax and gradients, are the largest
activation. Chat fine-tuning trains on the assistant's tokens only (about half of them in the
quickstart data), so scoring every position wastes both. `TrainedPositionLoss` scores only the
positions whose next token carries a label, which gives the same loss as transformers' own
(tests/test_loss.py), with less compute and memory.
"""

from __future__ import annotations

from contextlib import contextmanager

IGNORE = -100


class TrainedPositionLoss:
    """A `compute_loss_func` for transformers' Trainer plus the LM-head hook it relies on.

    The hook sits on the model's output embedding (found through PEFT and DDP wrappers alike, so
    gradients still flow through the wrapper's forward) and, while `selecting(...)` is active, hands
    the head only the hidden states of trained positions: logits come out as [trained tokens, vocab]."""

    def __init__(self, model):
        head = model.get_output_embeddings()
        if head is None:
            raise ValueError("the model has no output embedding (LM head) to score trained positions with")
        self.keep = None
        self.targets = None
        head.register_forward_pre_hook(self._select)

    @contextmanager
    def selecting(self, inputs: dict):
        """Score only trained positions during one forward; `inputs` carries `labels` (or `shift_labels`)."""
        import torch

        shifted = inputs.get("shift_labels")
        if shifted is None:
            labels = inputs["labels"]
            shifted = torch.full_like(labels, IGNORE)
            shifted[..., :-1] = labels[..., 1:]
        self.keep = shifted != IGNORE
        self.targets = shifted[self.keep]
        try:
            yield
        finally:
            self.keep = self.targets = None

    def _select(self, module, args):
        if self.keep is None:  # generation, or a forward outside training: the head sees everything
            return None
        hidden = args[0]
        if hidden.shape[:-1] != self.keep.shape:
            raise RuntimeError(
                f"LM head input {tuple(hidden.shape[:-1])} does not line up with the labels {tuple(self.keep.shape)}; "
                "set training.lm_head: full for this model"
            )
        return (hidden[self.keep.to(hidden.device)], *args[1:])  # a device_map can end the backbone on another device

    def __call__(self, outputs, labels, num_items_in_batch=None):
        """Token-summed cross-entropy over the trained positions, divided like transformers' ForCausalLMLoss:
        by num_items_in_batch (the trained tokens of the whole accumulated, all-rank batch) when given,
        else averaged over this micro-batch's trained tokens."""
        import torch.nn.functional as F

        logits = outputs["logits"].float()
        targets = self.targets.to(logits.device)
        if num_items_in_batch is None:
            return F.cross_entropy(logits, targets, reduction="mean")
        loss = F.cross_entropy(logits, targets, reduction="sum")
        if hasattr(num_items_in_batch, "to"):
            num_items_in_batch = num_items_in_batch.to(loss.device)
        return loss / num_items_in_batch


def resolve(mode: str, device_kind: str, method: str) -> str:
    """training.lm_head `auto`: TRL's chunked head on CUDA (bounded memory at long context and large
    vocabularies), trained positions elsewhere; the full head for prompt tuning, whose virtual tokens
    the labels do not cover (the recipe refuses an explicit `trained` there)."""
    if mode != "auto":
        return mode
    if device_kind == "cuda":
        return "chunked"
    return "full" if method == "prompt_tuning" else "trained"
