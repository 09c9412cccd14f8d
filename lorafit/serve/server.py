"""`lorafit serve`: resolve the runs, bind the port, load the engine, prove every adapter live, then serve until
Ctrl-C. The steps, in the order they can fail, so a mistake costs seconds, not a model load."""

from __future__ import annotations

from pathlib import Path

from lorafit.core.errors import MissingError, RecipeError
from lorafit.serve import served
from lorafit.serve.listen import bind

ENGINES = ("auto", "vllm", "transformers")


def serve(
    refs: list[str],
    *,
    tags: list[str],
    engine: str,
    host: str,
    port: int,
    api_key: str | None,
    max_tokens: int,
    probe: str,
    vllm: Path | None,
    console,
) -> None:
    if engine not in ENGINES:
        raise RecipeError(f"--engine {engine!r}: expected one of {', '.join(ENGINES)}")
    runs = served.resolve(refs, tags)
    base = served.base_name(runs[0])
    if base in {run.name for run in runs}:
        raise RecipeError(
            f"the run {base!r} has the base model's name", "serve runs whose directories are named otherwise"
        )
    engine = pick_engine(engine, runs, vllm, console)
    if engine == "vllm":
        from lorafit.serve import vllm as vllm_engine

        return vllm_engine.serve(
            runs,
            base,
            host=host,
            port=port,
            api_key=api_key,
            max_tokens=max_tokens,
            probe=probe,
            executable=vllm,
            console=console,
        )
    serve_transformers(runs, base, host, port, api_key, max_tokens, probe, console)


def pick_engine(engine: str, runs, executable: Path | None, console) -> str:
    """auto: vLLM where one is found and can serve every adapter, else transformers (saying why)."""
    if engine != "auto":
        return engine
    from lorafit.serve import vllm

    found = vllm.find(executable, required=False)
    refusals = [reason for run in runs for reason in vllm.refusals(run)]
    if found and not refusals:
        return "vllm"
    why = "no vllm executable on PATH (or --vllm)" if not found else refusals[0]
    console.print(f"engine: transformers ({why})", highlight=False)
    return "transformers"


def serve_transformers(runs, base: str, host, port, api_key, max_tokens, probe, console) -> None:
    try:
        import uvicorn

        from lorafit.serve import api
    except ImportError as exc:
        raise MissingError(
            f"lorafit serve needs FastAPI and uvicorn ({exc.name} is not installed)", "pip install 'lorafit[serve]'"
        ) from None
    from lorafit.serve import engine as engines
    from lorafit.serve import liveness

    sock = bind(host, port)
    try:
        with console.status(f"loading {base} and {len(runs)} adapter(s)..."):
            engine, references = engines.load(runs, base, probe)
            answers = liveness.check(lambda name: engine.answer(name, probe, liveness.PROBE_TOKENS), references, base)
        for name, answer in answers.items():
            console.print(f"  live: {name}: {answer[:60]!r}", highlight=False, markup=False)
        where = sock.getsockname()
        url = f"http://{'[' + where[0] + ']' if ':' in where[0] else where[0]}:{where[1]}/v1"
        ready = lambda: console.print(  # noqa: E731
            f"[green]ready[/] {url}: {', '.join(engine.names)}" + (" (API key required)" if api_key else ""),
            highlight=False,
        )
        app = api.build(engine, api_key=api_key, max_tokens=max_tokens, on_ready=ready)
        config = uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=2, access_log=False)
        try:
            uvicorn.Server(config).run(sockets=[sock])
        except KeyboardInterrupt:  # uvicorn shut down cleanly first, then raised the signal again
            pass
        console.print("stopped", highlight=False)
    finally:
        sock.close()
