"""The listening socket of `lorafit serve`, for either engine."""

from __future__ import annotations

import socket

from lorafit.core.errors import RecipeError


def bind(host: str, port: int) -> socket.socket:
    """The listening socket, taken before any model loads: a port in use fails at once."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise RecipeError(
            f"cannot listen on {host}:{port}: {exc.strerror or exc}",
            "choose another --port (0 picks a free one), or stop what is listening there",
        ) from None
    sock.listen(128)
    return sock
