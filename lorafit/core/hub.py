"""The Hugging Face hub's reachability: one answer for model and dataset loading (and the probe trackers use).

Unreachable, the hub client retries every request with backoff (about a minute per model before the
error, with a retry line each time); offline mode makes it answer from the local cache at once.
"""

from __future__ import annotations

import contextlib
import functools
import os
import socket
from collections.abc import Iterator
from urllib.parse import urlparse

PROBE_TIMEOUT = 3  # seconds to wait for the hub's host before treating it as unreachable
_TRUE = ("1", "ON", "YES", "TRUE")


def offline() -> bool:
    """True when the hub cannot be used: HF_HUB_OFFLINE is set, or its host does not answer quickly."""
    if (
        os.environ.get("HF_HUB_OFFLINE", "").upper() in _TRUE
        or os.environ.get("TRANSFORMERS_OFFLINE", "").upper() in _TRUE
    ):
        return True
    if behind_proxy():
        return False  # let the hub client find out
    return not _answers(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))


@functools.lru_cache(maxsize=4)
def _answers(endpoint: str) -> bool:
    """Whether the hub's host takes a connection (asked once per process: a run loads the hub several times)."""
    return connects(endpoint)


def behind_proxy() -> bool:
    """A proxy is set in the environment: only it knows whether a host is reachable, so no probe can tell."""
    return any(os.environ.get(v) for v in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY"))


def connects(endpoint: str, timeout: float = PROBE_TIMEOUT) -> bool:
    """Whether the URL's host takes a TCP connection within `timeout`: the one probe, for the hub and for the
    trackers' servers."""
    url = urlparse(endpoint)
    try:
        socket.create_connection(
            (url.hostname, url.port or (443 if url.scheme == "https" else 80)), timeout=timeout
        ).close()
    except OSError:
        return False
    return True


@contextlib.contextmanager
def mode(is_offline: bool) -> Iterator[None]:
    """Offline, make transformers and datasets answer from the local cache instead of retrying."""
    import huggingface_hub.constants

    try:
        import datasets.config
    except ImportError:  # datasets is a dependency; guard only so a model load never needs it
        datasets = None
    saved = huggingface_hub.constants.HF_HUB_OFFLINE, datasets.config.HF_HUB_OFFLINE if datasets else None
    if is_offline:
        huggingface_hub.constants.HF_HUB_OFFLINE = True
        if datasets:
            datasets.config.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        huggingface_hub.constants.HF_HUB_OFFLINE = saved[0]
        if datasets:
            datasets.config.HF_HUB_OFFLINE = saved[1]


def for_model(path: str) -> contextlib.AbstractContextManager:
    """The hub mode for loading a model or tokenizer from `path`: local directories never touch the hub."""
    return contextlib.nullcontext() if os.path.isdir(path) else mode(offline())
