"""`lorafit serve`: the runs' adapters behind one OpenAI-compatible endpoint."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from lorafit.cli.common import console, guarded

API_KEY_ENV = "LORAFIT_API_KEY"


def serve(
    runs: Optional[List[str]] = typer.Argument(
        None, help="Run directories, or names / ids from the run registry; each is a model named after its run."
    ),
    tag: Optional[List[str]] = typer.Option(None, "--tag", help="Also serve every registered run with this tag."),
    engine: str = typer.Option(
        "auto", "--engine", help="auto (vllm when found and able) | vllm | transformers (one base, PEFT adapters)."
    ),
    host: str = typer.Option("127.0.0.1", "--host", help="Address to listen on (0.0.0.0: every interface)."),
    port: int = typer.Option(8000, "--port", help="Port to listen on; 0 picks a free one."),
    api_key: Optional[str] = typer.Option(
        None, "--api-key", envvar=API_KEY_ENV, help=f"Every request must send it as a Bearer token (or ${API_KEY_ENV})."
    ),
    max_tokens: int = typer.Option(512, "--max-tokens", min=1, help="The most tokens one request may generate."),
    probe: Optional[str] = typer.Option(
        None, "--probe", help="The prompt that proves each adapter live at start-up (default: a greeting)."
    ),
    vllm: Optional[Path] = typer.Option(
        None, "--vllm", help="vLLM's executable or its venv (default: `vllm` on PATH); vLLM lives in its own env."
    ),
) -> None:
    """Serve runs' adapters over one base with an OpenAI-compatible API (/v1/models, /v1/chat/completions,
    /v1/completions), after proving each adapter answers as PEFT does and not as the base does."""

    def body():
        from lorafit.serve import liveness, server

        server.serve(
            runs or [],
            tags=tag or [],
            engine=engine,
            host=host,
            port=port,
            api_key=api_key or None,
            max_tokens=max_tokens,
            probe=probe or liveness.PROBE,
            vllm=vllm,
            console=console,
        )

    guarded(body)
