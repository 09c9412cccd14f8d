"""The train sampler of training.group_by_length, shared by the SFT trainer (train/trainer.py) and DPO's
(train/preference.py): length-grouped batches drawn from a generator reseeded per epoch.

Imports torch and transformers: the training pipeline imports this module when it builds the trainer, never earlier."""

from __future__ import annotations

import torch
from transformers.trainer_pt_utils import LengthGroupedSampler


class EpochSeededLengthSampler(LengthGroupedSampler):
    """Length-grouped batches drawn from a generator reseeded per epoch, not from the global RNG."""

    def __init__(self, batch_size: int, lengths: list[int], seed: int):
        super().__init__(batch_size, lengths=lengths, generator=torch.Generator())
        self.seed = seed
        self.set_epoch(0)

    def set_epoch(self, epoch: int) -> None:
        self.generator.manual_seed(self.seed + epoch)


def length_grouped(args, lengths: list[int]) -> EpochSeededLengthSampler:
    """Group by the global batch: under DDP each rank takes every world_size-th micro-batch of this one order, so
    N ranks x batch b see the same examples per step as 1 process x batch N*b. The longest batch comes first (the
    sampler's rule), so a run that would run out of memory does so at once."""
    batch = args.train_batch_size * args.gradient_accumulation_steps * args.world_size
    return EpochSeededLengthSampler(batch, lengths, args.data_seed or args.seed)
