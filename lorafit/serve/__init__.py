"""`lorafit serve`: an OpenAI-compatible endpoint for one base and every given run's adapter.

- served.py   which runs: directories, registry names, --tag; one shared base
- engine.py   the transformers engine: one base in memory, PEFT multi-adapter, a request at a time
- api.py      the OpenAI-compatible HTTP API over that engine (FastAPI + uvicorn)
- liveness.py the proof, before ready, that every adapter answers as PEFT does and not as the base does
- vllm.py     the vllm engine: the `vllm serve` command, its refusals, the child process
- server.py   the steps of `lorafit serve`, in the order they can fail
"""
