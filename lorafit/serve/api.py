"""The OpenAI-compatible HTTP API of the `transformers` engine (FastAPI): `/v1/models`, `/v1/chat/completions` and
`/v1/completions`, streamed (server-sent events) or not. Every failure is an OpenAI-style error body
(`{"error": {"message", "type", "param", "code"}}`), never a traceback; a client that goes away stops its decoding."""

import hmac
import json
import sys
import time
import uuid
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any, Optional, Union

import anyio
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException

if TYPE_CHECKING:
    from lorafit.serve.engine import Engine, Reply

_END = object()


class ApiError(Exception):
    def __init__(self, status: int, message: str, param: Optional[str] = None, code: Optional[str] = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code


class Part(BaseModel):
    model_config = ConfigDict(extra="ignore")
    type: str = "text"
    text: str = ""


class Message(BaseModel):
    model_config = ConfigDict(extra="ignore")
    role: str
    content: Union[str, list[Part], None] = None

    def as_dict(self) -> dict:
        content = self.content if isinstance(self.content, str) else "".join(p.text for p in self.content or [])
        return {"role": self.role, "content": content}


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="ignore")
    include_usage: bool = False


class Sampling(BaseModel):
    """What both endpoints take; other OpenAI fields are accepted and ignored, as vLLM does."""

    model_config = ConfigDict(extra="ignore")
    model: str
    max_tokens: Optional[int] = None
    temperature: Optional[float] = None
    top_p: Optional[float] = None
    seed: Optional[int] = None
    n: int = 1
    stream: bool = False
    stream_options: Optional[StreamOptions] = None


class ChatRequest(Sampling):
    messages: list[Message]
    max_completion_tokens: Optional[int] = None


class CompletionRequest(Sampling):
    prompt: Union[str, list[str]]


class ClosingStream(StreamingResponse):
    """A streamed reply whose decoding ends with the response however it ends: Starlette leaves a body iterator
    whose client went away to the garbage collector, and until then the engine stays held."""

    async def __call__(self, scope, receive, send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            with anyio.CancelScope(shield=True):
                await self.body_iterator.aclose()


def error_body(status: int, message: str, param: Optional[str] = None, code: Optional[str] = None) -> dict:
    kind = "invalid_request_error" if status < 500 else "server_error"
    if status == 401:
        kind = "authentication_error"
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


def build(engine: "Engine", *, api_key: Optional[str], max_tokens: int, on_ready=None):
    """The app for one engine; `api_key`: every /v1 request must carry `Authorization: Bearer KEY`."""

    @asynccontextmanager
    async def lifespan(app):
        if on_ready:
            on_ready()
        yield
        engine.closing.set()

    app = FastAPI(title="lorafit serve", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    created = int(time.time())

    def failure(status: int, message: str, param: Optional[str] = None, code: Optional[str] = None) -> JSONResponse:
        return JSONResponse(error_body(status, message, param, code), status_code=status)

    @app.exception_handler(ApiError)
    async def api_error(request, exc: ApiError):
        return failure(exc.status, exc.message, exc.param, exc.code)

    @app.exception_handler(RequestValidationError)
    async def invalid(request, exc: RequestValidationError):
        first = exc.errors()[0] if exc.errors() else {}
        if first.get("type") == "json_invalid" or not parses(first.get("input")):  # no JSON content type: bytes
            return failure(400, f"the request body is not valid JSON: {first.get('msg', '')}", code="invalid_json")
        where = ".".join(str(p) for p in first.get("loc", ())[1:]) or None
        return failure(400, f"{where or 'body'}: {first.get('msg', 'invalid')}", param=where)

    @app.exception_handler(HTTPException)
    async def http_error(request, exc: HTTPException):
        return failure(exc.status_code, str(exc.detail))

    @app.exception_handler(Exception)
    async def unexpected(request, exc: Exception):
        print(f"lorafit serve: {type(exc).__name__}: {exc}", file=sys.stderr)  # one line; the client gets a body
        return failure(500, f"the server failed on this request: {type(exc).__name__}: {exc}")

    @app.middleware("http")
    async def authorize(request: Request, call_next):
        if api_key and request.url.path.startswith("/v1"):
            given = request.headers.get("authorization", "")
            if not hmac.compare_digest(given.encode(), f"Bearer {api_key}".encode()):
                return failure(
                    401, "missing or incorrect API key: send `Authorization: Bearer KEY`", code="invalid_api_key"
                )
        return await call_next(request)

    @app.get("/health")
    async def health():
        return {"status": "ok", "models": engine.names}

    @app.get("/v1/models")
    async def list_models():
        data = [
            {
                "id": name,
                "object": "model",
                "created": created,
                "owned_by": "lorafit",
                "root": name,
                "parent": None if name == engine.base_name else engine.base_name,
            }
            for name in engine.names
        ]
        return {"object": "list", "data": data}

    @app.post("/v1/chat/completions")
    async def chat(body: ChatRequest, request: Request):
        model = known(engine, body.model)
        if not body.messages:
            raise ApiError(400, "messages: at least one message is needed", param="messages")
        prompt = engine.prompt(model, [m.as_dict() for m in body.messages])
        reply = start(engine, body, model, prompt, body.max_completion_tokens or body.max_tokens, max_tokens, True)
        ident, kind = f"chatcmpl-{uuid.uuid4().hex}", "chat.completion"
        if body.stream:
            first = {"role": "assistant", "content": ""}
            return ClosingStream(
                events(reply, request, ident, f"{kind}.chunk", body, first=first), media_type="text/event-stream"
            )
        text = await collect(reply, request)
        message = {"role": "assistant", "content": text}
        choice = {"index": 0, "message": message, "finish_reason": reply.finish_reason, "logprobs": None}
        return {**head(ident, kind, model), "choices": [choice], "usage": reply.usage}

    @app.post("/v1/completions")
    async def complete(body: CompletionRequest, request: Request):
        model = known(engine, body.model)
        prompts = [body.prompt] if isinstance(body.prompt, str) else body.prompt
        if len(prompts) != 1:
            raise ApiError(400, "prompt: one prompt per request (this server batches none)", param="prompt")
        reply = start(engine, body, model, prompts[0], body.max_tokens, max_tokens, False)
        ident, kind = f"cmpl-{uuid.uuid4().hex}", "text_completion"
        if body.stream:
            return ClosingStream(events(reply, request, ident, kind, body), media_type="text/event-stream")
        text = await collect(reply, request)
        choice = {"index": 0, "text": text, "finish_reason": reply.finish_reason, "logprobs": None}
        return {**head(ident, kind, model), "choices": [choice], "usage": reply.usage}

    return app


def parses(given) -> bool:
    if not isinstance(given, (bytes, str)):
        return True
    try:
        json.loads(given)
    except ValueError:
        return False
    return True


def known(engine: "Engine", model: str) -> str:
    if model not in engine.names:
        raise ApiError(
            404,
            f"the model {model!r} does not exist; this server has: {', '.join(engine.names)}",
            param="model",
            code="model_not_found",
        )
    return model


def start(
    engine: "Engine", body: Sampling, model: str, prompt: str, asked: Optional[int], limit: int, chat: bool
) -> "Reply":
    """A request checked against what this server and the model can do, as a reply ready to decode."""
    if body.n != 1:
        raise ApiError(400, "n: this server returns one choice per request", param="n")
    used = engine.prompt_tokens(model, prompt, chat=chat)
    room = (engine.context or used + limit) - used
    if asked is not None and asked < 1:
        raise ApiError(400, f"max_tokens: {asked} is less than 1", param="max_tokens")
    if asked is not None and asked > limit:
        raise ApiError(
            400,
            f"max_tokens: {asked} is more than this server allows ({limit}; lorafit serve --max-tokens)",
            "max_tokens",
        )
    if room < 1 or (asked is not None and asked > room):
        raise ApiError(
            400,
            f"this model's context is {engine.context} tokens; the prompt has {used}"
            + (f" and max_tokens asks {asked} more" if asked else ""),
            param="max_tokens" if asked else "messages" if chat else "prompt",
            code="context_length_exceeded",
        )
    return engine.reply(model, prompt, min(asked or limit, room), chat=chat, sampling=sampling(body))


def sampling(body: Sampling) -> Optional[dict]:
    """Greedy at temperature 0 (what the liveness probe and reproducible tests ask); OpenAI's default is 1."""
    temperature = 1.0 if body.temperature is None else body.temperature
    if temperature < 0:
        raise ApiError(400, f"temperature: {temperature} is negative", param="temperature")
    if temperature == 0:
        return None
    top_p = 1.0 if body.top_p is None else body.top_p
    return {"do_sample": True, "temperature": temperature, "top_p": top_p, "seed": body.seed}


def head(ident: str, kind: str, model: str) -> dict[str, Any]:
    return {"id": ident, "object": kind, "created": int(time.time()), "model": model}


async def pieces(reply: "Reply", request: Request):
    """The reply's text pieces, decoded in a worker thread; the decoding stops when the client goes away or the
    server shuts down."""
    it = iter(reply)
    try:
        while (piece := await run_in_threadpool(next, it, _END)) is not _END:
            yield piece
            if await request.is_disconnected():
                return
    finally:
        with anyio.CancelScope(shield=True):
            await run_in_threadpool(it.close)


async def collect(reply: "Reply", request: Request) -> str:
    async for _ in pieces(reply, request):
        pass
    return reply.stream.text


async def events(reply: "Reply", request: Request, ident: str, kind: str, body: Sampling, first: Optional[dict] = None):
    """Server-sent events as OpenAI streams them: chunks, the finish reason, usage if asked, then [DONE]."""
    chat = first is not None
    model = reply.model

    def chunk(content: Optional[str] = None, finish: Optional[str] = None, delta: Optional[dict] = None) -> str:
        if chat:
            choice = {"index": 0, "delta": delta if delta is not None else {"content": content} if content else {}}
        else:
            choice = {"index": 0, "text": content or ""}
        choice.update(finish_reason=finish, logprobs=None)
        return f"data: {json.dumps({**head(ident, kind, model), 'choices': [choice]})}\n\n"

    if chat:
        yield chunk(delta=first)
    async for piece in pieces(reply, request):
        yield chunk(piece)
    yield chunk(finish=reply.finish_reason)
    if body.stream_options and body.stream_options.include_usage:
        yield f"data: {json.dumps({**head(ident, kind, model), 'choices': [], 'usage': reply.usage})}\n\n"
    yield "data: [DONE]\n\n"
