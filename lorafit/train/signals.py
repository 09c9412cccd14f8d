"""SIGUSR1, SIGINT and SIGTERM during `lorafit train`: a signal ends a run with a resumable checkpoint."""

from __future__ import annotations

import os
import signal

from lorafit.core import dist
from lorafit.core.errors import Interrupted


class Signals:
    """SIGUSR1, SIGINT and SIGTERM for all of `lorafit train`.

    Before the first step only SIGUSR1 is taken (Slurm's pre-timeout warning, and what `lorafit launch`
    forwards): it is recorded, and every rank stops together before training starts (check(), exit 6).
    Ctrl-C and kill keep their defaults there, so they stop a long model load at once. Once training runs,
    all three are recorded for the callback: the step in flight finishes and a resumable checkpoint is
    written. Except SIGTERM under `lorafit launch`: there it only ever comes from torchrun tearing down a
    job whose other rank failed, so it keeps its default, and a failing job is not reported as resumable
    (and requeued by Slurm, forever)."""

    def __init__(self):
        self.callback = None
        self.received: int | None = None
        self.previous: dict = {}

    def __enter__(self) -> Signals:
        self._take(getattr(signal, "SIGUSR1", None))
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)
        self.previous = {}

    def _take(self, sig) -> None:
        if sig is not None and sig not in self.previous:
            self.previous[sig] = signal.signal(sig, self._handle)

    def _handle(self, signum, frame) -> None:
        if self.callback is None:
            self.received = signum
        else:
            self.callback.signal = signum

    def check(self) -> None:
        """Before training: stop if this rank, or any rank, was signalled (a collective under torchrun)."""
        received = dist.all_max(self.received or 0) if dist.is_distributed() else self.received
        if received:
            raise Interrupted(
                f"stopped by signal {name(received)} before training started; nothing was trained",
                "run the same command again",
            )

    def training(self, callback) -> None:
        """From here a signal ends the run after the step in flight, with a checkpoint (callback: SignalStop)."""
        self.callback = callback
        self._take(signal.SIGINT)
        if not os.environ.get(dist.EXIT_FILE_ENV):
            self._take(signal.SIGTERM)


def name(signum: int) -> str:
    return signal.Signals(signum).name
