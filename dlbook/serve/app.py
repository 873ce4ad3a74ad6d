"""An OpenAI-style HTTP server over the batching engine (section 6.6).

:func:`create_app` builds a FastAPI app around a language model (a :class:`~dlbook.nn.gpt.GPT`
and its tokenizer) served by a :class:`~dlbook.serve.engine.BatchingEngine`, plus, optionally,
a text classifier (the R8 classifier of section 5.3, loaded on first use unless preloaded):

==========================  ===============================================================
``GET  /``                  the chat page (plain HTML + JS, no CDN)
``GET  /health``            ``{"status": "ok", ...}`` and the engine's batching statistics
``GET  /v1/models``         the served models
``POST /v1/completions``    text completion; ``"stream": true`` gives server-sent events
``POST /v1/chat/completions``  chat in the model's ChatML template, OpenAI's request and
                            response (and stream chunk) shapes, ending with ``data: [DONE]``
``POST /v1/classify``       ``{"input": str | [str]}`` → a label and class probabilities
==========================  ===============================================================

Every error is JSON ``{"error": {"message", "type", "param", "code"}}`` as in OpenAI's API:
400 invalid request (malformed JSON, wrong types, a prompt longer than the context, a
``max_tokens`` outside ``[1, limits.max_tokens]``), 404 unknown model or path, 413 body over
``limits.max_body_bytes``, 429 engine queue full (with ``Retry-After``), 500 the model failed
on the request's batch, 503 the engine is shut down (or shut down under the request) or the
classifier is still loading (with ``Retry-After``), 504 request past its deadline; on a
stream that has begun, an error comes as a last ``data: {"error": ...}`` event. A client that
goes away (mid-stream, or while a non-streaming request waits) has its engine row cancelled.
:func:`serve_in_thread` runs the app with uvicorn on a free localhost port in a background
thread (tests, the chapter's load test); ``dlbook serve`` runs it in the foreground.
"""

from __future__ import annotations

import asyncio
import codecs
import contextlib
import json
import math
import threading
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass
from importlib import resources
from typing import Any, Literal

import torch

from dlbook.data.optional import require

require("fastapi", purpose="the HTTP server (pip install 'dlbook[apps]')")

from fastapi import FastAPI, Request  # noqa: E402
from fastapi.exceptions import RequestValidationError  # noqa: E402
from fastapi.responses import FileResponse, JSONResponse, StreamingResponse  # noqa: E402
from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictStr  # noqa: E402
from starlette.exceptions import HTTPException as StarletteHTTPException  # noqa: E402

from dlbook.serve.engine import BatchingEngine, EngineBusy, GenerationRequest  # noqa: E402

CLASSIFIER_NAME = "r8-classifier"
POLL_S = 0.25  # how often a waiting non-streaming request checks that its client is still there


@dataclass(frozen=True)
class ServeLimits:
    """Bounds on what one request may ask for.

    Attributes:
        max_tokens: largest ``max_tokens`` a request may ask for (larger: 400).
        default_max_tokens: ``max_tokens`` when the request gives none.
        max_body_bytes: largest request body (larger: 413).
        request_timeout_s: deadline of one request, queueing included (past it: 504, or an
            error event on a stream, and the engine row is cancelled).
        max_classify_inputs: most texts in one ``/v1/classify`` request.
    """

    max_tokens: int = 512
    default_max_tokens: int = 64
    max_body_bytes: int = 64 * 1024
    request_timeout_s: float = 120.0
    max_classify_inputs: int = 64

    def __post_init__(self) -> None:
        if not 1 <= self.default_max_tokens <= self.max_tokens:
            raise ValueError(f"need 1 <= default_max_tokens <= max_tokens, got "
                             f"{self.default_max_tokens} and {self.max_tokens}")
        timeout = self.request_timeout_s
        if (self.max_body_bytes < 1 or self.max_classify_inputs < 1
                or not isinstance(timeout, (int, float)) or not math.isfinite(timeout)
                or timeout <= 0):
            raise ValueError("max_body_bytes, request_timeout_s and max_classify_inputs must be "
                             f"finite and positive, got {self.max_body_bytes}, {timeout} and "
                             f"{self.max_classify_inputs}")


class APIError(Exception):
    """An error answered as ``{"error": {...}}`` with ``status``."""

    def __init__(self, status: int, message: str, type: str = "invalid_request_error",
                 param: str | None = None, code: str | None = None,
                 retry_after: int = 1) -> None:
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = (
            status, message, type, param, code)
        self.retry_after = retry_after  # seconds, sent as Retry-After with a 429 or 503

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param,
                          "code": self.code}}


def _error_response(err: APIError, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(err.body(), status_code=err.status, headers=headers)


# --------------------------------------------------------------------------- request bodies


class _Body(BaseModel):
    # unknown fields (OpenAI's `n`, `user`, ...) are ignored, as most OpenAI-compatible servers do
    model_config = ConfigDict(extra="ignore")


class StreamOptions(_Body):
    include_usage: StrictBool = False


class _Sampling(_Body):
    model: StrictStr | None = None
    stream_options: StreamOptions | None = None
    max_tokens: int | None = Field(default=None, strict=True)
    temperature: float = Field(default=0.0, strict=True, ge=0.0, le=2.0)
    top_p: float | None = Field(default=None, strict=True, gt=0.0, le=1.0)
    stream: StrictBool = False
    seed: int | None = Field(default=None, strict=True, ge=0, lt=2**63)


class CompletionBody(_Sampling):
    """``POST /v1/completions``: ``prompt`` (a string) and the sampling settings."""

    prompt: StrictStr = Field(min_length=1)


class ChatMessage(_Body):
    role: Literal["system", "user", "assistant"]
    content: StrictStr


class ChatBody(_Sampling):
    """``POST /v1/chat/completions``: ``messages`` and the sampling settings."""

    messages: list[ChatMessage] = Field(min_length=1)


class ClassifyBody(_Body):
    """``POST /v1/classify``: one text or a list of texts."""

    model: StrictStr | None = None
    input: StrictStr | list[StrictStr]


# --------------------------------------------------------------------------- helpers


class ByteLimitMiddleware:
    """Pure ASGI middleware: answer 413 to a request body over ``max_bytes`` (by its
    ``Content-Length``, or counted while it arrives when it has none), before the app sees it."""

    def __init__(self, app: Any, max_bytes: int) -> None:
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http" or scope["method"] not in ("POST", "PUT", "PATCH"):
            await self.app(scope, receive, send)
            return
        too_big = APIError(413, f"the request body exceeds the limit of {self.max_bytes} bytes",
                           code="request_too_large")
        for name, value in scope.get("headers", []):
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    declared = 0
                if declared > self.max_bytes:
                    await _error_response(too_big)(scope, receive, send)
                    return
        chunks, size, more = [], 0, True
        while more:  # bodies are small (bounded): read it all, then replay it to the app
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            more = message.get("more_body", False)
            if size > self.max_bytes:
                await _error_response(too_big)(scope, receive, send)
                return
        body, replayed = b"".join(chunks), False

        async def replay() -> dict:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()  # later: wait for the disconnect (streaming responses)

        await self.app(scope, replay, send)


class TextStream:
    """Turns token ids into text pieces as they arrive: a token may end in the middle of a
    UTF-8 character, so bytes are held back until the character is complete."""

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def push(self, token_id: int) -> str:
        return self._decoder.decode(self.tokenizer.token_bytes(token_id))

    def flush(self) -> str:
        return self._decoder.decode(b"", final=True)


def chat_prompt_ids(tokenizer: Any, messages: Sequence[dict[str, str]]) -> list[int]:
    """Token ids of a conversation in the tokenizer's chat template, ending with the header of
    the assistant's turn (SmolLM2's ChatML, :meth:`~dlbook.bpe_gguf.GGUFBPETokenizer.
    apply_chat_template`, as :mod:`dlbook.rag` and :mod:`dlbook.evaluate` use it).

    Raises:
        ValueError: the tokenizer has no chat template, or a message holds a special token.
    """
    if not hasattr(tokenizer, "apply_chat_template"):
        raise ValueError(f"{type(tokenizer).__name__} has no chat template")
    return list(tokenizer.apply_chat_template(list(messages), add_generation_prompt=True,
                                              tokenize=True))


def _special_id(tokenizer: Any, name: str) -> int | None:
    return getattr(tokenizer, "special_tokens", {}).get(name)


def _sse(payload: Any) -> bytes:
    data = payload if isinstance(payload, str) else json.dumps(payload, separators=(",", ":"))
    return f"data: {data}\n\n".encode()


async def _until(stream: Any, deadline: float,
                 gone: Callable[[], Awaitable[bool]] | None = None) -> AsyncIterator[int]:
    """The stream's tokens; ``asyncio.TimeoutError`` once ``time.monotonic()`` passes
    ``deadline``. With ``gone`` (e.g. ``request.is_disconnected``), asked about every
    ``POLL_S`` seconds: when it says the client left, the stream is cancelled and the
    iteration ends (its ``finish_reason`` is then ``"cancelled"``)."""
    tokens = stream.__aiter__()
    checked = time.monotonic()
    while True:
        step = asyncio.ensure_future(tokens.__anext__())
        try:
            while True:
                now = time.monotonic()
                if gone is not None and now - checked >= POLL_S:
                    checked = now
                    if await gone():
                        stream.cancel()
                        return
                if step.done():
                    break
                remaining = deadline - now
                if remaining <= 0:
                    raise asyncio.TimeoutError
                await asyncio.wait({step}, timeout=min(remaining, POLL_S))
        finally:
            if not step.done():  # leaving early (deadline, client gone, or cancelled)
                step.cancel()
        try:
            token = step.result()
        except StopAsyncIteration:
            return
        yield token


def _usage_wanted(body: _Sampling) -> bool:
    return body.stream_options is not None and body.stream_options.include_usage


def _predict(classifier: Any, texts: list[str]) -> torch.Tensor:
    with torch.inference_mode():  # grad mode is per thread: this runs in a worker thread
        return classifier.predict(texts)


def _probabilities(logits: torch.Tensor) -> torch.Tensor:
    return torch.softmax(logits.float(), dim=-1)


# --------------------------------------------------------------------------- the app


def create_app(
    model: Any = None,
    tokenizer: Any = None,
    *,
    model_name: str = "smollm2-135m",
    engine: BatchingEngine | None = None,
    max_batch: int = 8,
    max_queue: int | None = None,
    limits: ServeLimits | None = None,
    classifier: Any = None,
    classifier_factory: Callable[[], Any] | None = None,
    preload_classifier: bool = False,
    background_classifier: bool = False,
) -> FastAPI:
    """The serving app.

    Args:
        model: a :class:`~dlbook.nn.gpt.GPT` (``block_size`` is the context limit); default:
            :func:`dlbook.hub.load` of ``model_name`` (SmolLM2-135M-Instruct).
        tokenizer: its tokenizer (``encode``, ``token_bytes``, ``apply_chat_template`` for the
            chat endpoint, ``special_tokens`` for the stop tokens).
        model_name: the ``model`` id clients send (another one: 404).
        engine: a :class:`BatchingEngine` to use instead of building one over ``model``
            (the app starts it if needed and closes it at shutdown).
        max_batch: the engine's largest batch, when the app builds it.
        max_queue: most requests waiting for the engine (more: 429); default ``8 * max_batch``.
        limits: request bounds (:class:`ServeLimits`).
        classifier: an object with ``classes`` (names) and ``predict(texts) -> (N, K)`` logits,
            served at ``/v1/classify`` as ``"r8-classifier"``.
        classifier_factory: builds the classifier on the first classify request (default:
            :func:`dlbook.finetune.finetuned_r8_classifier`, full fine-tuning, trained on
            first use and cached), so the server starts fast.
        preload_classifier: build it at start-up instead (the server starts once it is
            built).
        background_classifier: build it in a background thread, started by the first
            classify request; until it is ready ``/v1/classify`` answers 503 ``"classifier
            loading"`` with ``Retry-After`` instead of holding the request (what ``dlbook
            serve`` does: a cold cache trains the classifier, which takes minutes).

    Returns:
        The FastAPI app; ``app.state.engine``, ``app.state.limits`` and
        ``app.state.model_name`` are what it serves with. The engine starts with the app
        (uvicorn's lifespan) and is closed when the app shuts down.

    Raises:
        ValueError: a model without its tokenizer.
    """
    limits = ServeLimits() if limits is None else limits
    if model is None:
        from dlbook import hub

        model, tokenizer = hub.load(model_name)
    if tokenizer is None:
        raise ValueError("a model needs its tokenizer")
    if engine is None:
        engine = BatchingEngine(model, max_batch=max_batch, max_queue=max_queue)
    if classifier is None and classifier_factory is None:
        def classifier_factory() -> Any:
            from dlbook.finetune import finetuned_r8_classifier

            return finetuned_r8_classifier(progress=False)

    context = int(model.config.block_size)
    vocab = int(model.config.vocab_size)
    eos = [i for i in (_special_id(tokenizer, "<|endoftext|>"),) if i is not None]
    chat_stop = [i for i in (_special_id(tokenizer, "<|im_end|>"),) if i is not None] + eos
    state: dict[str, Any] = {"classifier": classifier, "loader": None, "load_error": None}
    classifier_lock = threading.Lock()  # held while the classifier is built
    loader_lock = threading.Lock()  # held only briefly: the event loop takes it

    def get_classifier() -> Any:
        with classifier_lock:
            if state["classifier"] is None:
                state["classifier"] = classifier_factory()
            return state["classifier"]

    def load_in_background() -> None:
        try:
            get_classifier()
        except Exception as e:  # reported to the next classify request, which retries
            with loader_lock:
                state["load_error"] = f"{type(e).__name__}: {e}"
        finally:
            with loader_lock:
                state["loader"] = None

    def ready_classifier() -> Any:
        """The classifier, or (background mode) a 503 while a thread builds it."""
        if state["classifier"] is not None:
            return state["classifier"]
        with loader_lock:
            if state["classifier"] is not None:
                return state["classifier"]
            failed, state["load_error"] = state["load_error"], None
            if state["loader"] is None:
                state["loader"] = threading.Thread(target=load_in_background,
                                                   name="dlbook-classifier", daemon=True)
                state["loader"].start()
        message = ("the classifier is loading (the first time it is trained, which takes a "
                   "while); try again later")
        if failed is not None:
            message = f"the classifier failed to load ({failed}); loading it again"
        raise APIError(503, message, type="server_error", code="classifier_loading",
                       retry_after=10)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        engine.start()
        if preload_classifier:
            await asyncio.to_thread(get_classifier)
        try:
            yield
        finally:
            engine.close()

    app = FastAPI(title="dlbook serve", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.engine, app.state.limits, app.state.model_name = engine, limits, model_name

    # ---------------------------------------------------------------- errors as OpenAI's
    @app.exception_handler(APIError)
    async def _api_error(request: Request, err: APIError) -> JSONResponse:
        headers = {"Retry-After": str(err.retry_after)} if err.status in (429, 503) else None
        return _error_response(err, headers)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, err: RequestValidationError) -> JSONResponse:
        errors = err.errors()
        first = errors[0] if errors else {}
        if first.get("type") == "json_invalid":
            return _error_response(APIError(400, "the request body is not valid JSON: "
                                            f"{first.get('ctx', {}).get('error', '')}".strip(),
                                            code="invalid_json"))
        where = [str(p) for p in first.get("loc", ()) if p != "body"]
        param = ".".join(where) or None
        message = "; ".join(
            f"{'.'.join(str(p) for p in e.get('loc', ()) if p != 'body') or 'body'}: {e['msg']}"
            for e in errors[:5])
        return _error_response(APIError(400, message, param=param))

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, err: StarletteHTTPException) -> JSONResponse:
        kind = "not_found_error" if err.status_code == 404 else "invalid_request_error"
        return _error_response(APIError(err.status_code, str(err.detail), type=kind))

    @app.exception_handler(Exception)
    async def _internal(request: Request, err: Exception) -> JSONResponse:
        return _error_response(APIError(500, f"internal error: {type(err).__name__}",
                                        type="server_error"))

    # ---------------------------------------------------------------- plain pages
    @app.get("/", include_in_schema=False)
    async def index() -> FileResponse:
        return FileResponse(_static("chat.html"), media_type="text/html")

    @app.get("/static/{name}", include_in_schema=False)
    async def static(name: str) -> FileResponse:
        if name not in ("chat.js", "chat.css", "chat.html"):
            raise APIError(404, f"no static file {name!r}", type="not_found_error")
        kinds = {"js": "text/javascript", "css": "text/css", "html": "text/html"}
        return FileResponse(_static(name), media_type=kinds[name.rsplit(".", 1)[1]])

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "model": model_name, "context": context,
                "engine": engine.stats,
                "classifier_loaded": state["classifier"] is not None}

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        data = [{"id": model_name, "object": "model", "owned_by": "dlbook",
                 "context_length": context, "max_tokens": limits.max_tokens},
                {"id": CLASSIFIER_NAME, "object": "model", "owned_by": "dlbook"}]
        return {"object": "list", "data": data}

    # ---------------------------------------------------------------- generation
    def check_model(name: str | None, allowed: str = model_name) -> None:
        if name is not None and name != allowed:
            raise APIError(404, f"the model {name!r} does not exist; this server serves "
                           f"{allowed!r}", type="not_found_error", param="model",
                           code="model_not_found")

    def make_request(body: _Sampling, prompt: list[int], stop: list[int],
                     prompt_param: str) -> GenerationRequest:
        check_model(body.model)
        n = limits.default_max_tokens if body.max_tokens is None else body.max_tokens
        if not 1 <= n <= limits.max_tokens:
            raise APIError(400, f"max_tokens must lie in [1, {limits.max_tokens}], got {n}",
                           param="max_tokens")
        if len(prompt) + n > context:
            raise APIError(400, f"this model's context is {context} tokens; the prompt has "
                           f"{len(prompt)} and max_tokens asks for {n} more ({len(prompt) + n})",
                           param="max_tokens" if len(prompt) < context else prompt_param,
                           code="context_length_exceeded")
        return GenerationRequest(tuple(prompt), n, temperature=body.temperature,
                                 top_p=body.top_p, stop_tokens=tuple(stop), seed=body.seed)

    def submit(request: GenerationRequest) -> Any:
        try:
            return engine.submit(request)
        except EngineBusy as e:
            raise APIError(429, f"the server is busy: {e}", type="rate_limit_error",
                           code="queue_full") from e
        except ValueError as e:
            raise APIError(400, str(e)) from e
        except RuntimeError as e:  # the engine was closed (the server is shutting down)
            raise APIError(503, str(e), type="server_error") from e

    async def encode_prompt(text: str) -> list[int]:
        try:  # in a worker thread: a long prompt must not block the event loop
            ids = list(await asyncio.to_thread(tokenizer.encode, text))
        except ValueError as e:
            raise APIError(400, str(e), param="prompt") from e
        if not ids:
            raise APIError(400, "the prompt is empty", param="prompt")
        if max(ids) >= vocab:
            raise APIError(400, "the prompt uses ids outside the model's vocabulary")
        return ids

    async def collect(stream: Any, deadline: float, request: Request) -> tuple[str, str | None]:
        """The whole answer; the engine row is cancelled if the client leaves while it waits
        or the deadline passes."""
        text = TextStream(tokenizer)
        pieces: list[str] = []
        try:
            async for token in _until(stream, deadline, request.is_disconnected):
                pieces.append(text.push(token))
        except asyncio.TimeoutError as e:
            stream.cancel()
            raise APIError(504, f"the request took longer than its deadline of "
                           f"{limits.request_timeout_s:g} s", type="timeout_error",
                           code="timeout") from e
        except asyncio.CancelledError:
            stream.cancel()
            raise
        pieces.append(text.flush())
        if stream.finish_reason == "error":
            raise APIError(500, "the model failed on this batch; try again", type="server_error")
        if stream.finish_reason == "cancelled":  # the engine closed (or the client left)
            raise APIError(503, "the server is shutting down; the request was cancelled",
                           type="server_error", code="shutting_down")
        return "".join(pieces), stream.finish_reason

    async def events(stream: Any, deadline: float, chunk: Callable[[dict, str | None], dict],
                     first: dict | None, include_usage: bool) -> AsyncIterator[bytes]:
        """Server-sent events of one stream; the engine row is cancelled if the client leaves
        (Starlette cancels this generator) or the deadline passes."""
        text = TextStream(tokenizer)
        try:
            if first is not None:
                yield _sse(chunk(first, None))
            async for token in _until(stream, deadline):
                piece = text.push(token)
                if piece:
                    yield _sse(chunk({"content": piece}, None))
            tail = text.flush()
            if tail:
                yield _sse(chunk({"content": tail}, None))
            if stream.finish_reason == "error":
                yield _sse(APIError(500, "the model failed on this batch",
                                    type="server_error").body())
            elif stream.finish_reason == "cancelled":  # the engine closed under the stream
                yield _sse(APIError(503, "the server is shutting down; the request was "
                                    "cancelled", type="server_error",
                                    code="shutting_down").body())
            else:
                yield _sse(chunk({}, stream.finish_reason))
                if include_usage:
                    yield _sse(dict(chunk({}, None), choices=[], usage=usage(stream)))
            yield _sse("[DONE]")
        except asyncio.TimeoutError:
            stream.cancel()
            yield _sse(APIError(504, f"the request took longer than its deadline of "
                                f"{limits.request_timeout_s:g} s", type="timeout_error",
                                code="timeout").body())
            yield _sse("[DONE]")
        finally:
            if stream.finish_reason is None:  # client gone (generator closed) or cancelled
                stream.cancel()

    def usage(stream: Any) -> dict[str, int]:
        return {"prompt_tokens": stream.prompt_tokens,
                "completion_tokens": stream.completion_tokens,
                "total_tokens": stream.prompt_tokens + stream.completion_tokens}

    sse_headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}

    @app.post("/v1/completions", response_model=None)
    async def completions(body: CompletionBody, request: Request) -> Any:
        deadline = time.monotonic() + limits.request_timeout_s
        stream = submit(make_request(body, await encode_prompt(body.prompt), eos, "prompt"))
        ident, created = f"cmpl-{uuid.uuid4().hex[:24]}", int(time.time())

        def chunk(delta: dict, finish: str | None) -> dict:
            return {"id": ident, "object": "text_completion", "created": created,
                    "model": model_name, "choices": [{"index": 0, "text": delta.get(
                        "content", ""), "finish_reason": finish}]}

        if body.stream:
            return StreamingResponse(events(stream, deadline, chunk, None, _usage_wanted(body)),
                                     media_type="text/event-stream", headers=sse_headers)
        text, finish = await collect(stream, deadline, request)
        return {"id": ident, "object": "text_completion", "created": created,
                "model": model_name,
                "choices": [{"index": 0, "text": text, "finish_reason": finish}],
                "usage": usage(stream)}

    @app.post("/v1/chat/completions", response_model=None)
    async def chat_completions(body: ChatBody, request: Request) -> Any:
        deadline = time.monotonic() + limits.request_timeout_s
        try:
            prompt = await asyncio.to_thread(chat_prompt_ids, tokenizer,
                                             [m.model_dump() for m in body.messages])
        except ValueError as e:
            raise APIError(400, str(e), param="messages") from e
        stream = submit(make_request(body, prompt, chat_stop, "messages"))
        ident, created = f"chatcmpl-{uuid.uuid4().hex[:24]}", int(time.time())

        def chunk(delta: dict, finish: str | None) -> dict:
            return {"id": ident, "object": "chat.completion.chunk", "created": created,
                    "model": model_name,
                    "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}

        if body.stream:
            return StreamingResponse(
                events(stream, deadline, chunk, {"role": "assistant", "content": ""},
                       _usage_wanted(body)),
                media_type="text/event-stream", headers=sse_headers)
        text, finish = await collect(stream, deadline, request)
        return {"id": ident, "object": "chat.completion", "created": created,
                "model": model_name,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                             "finish_reason": finish}],
                "usage": usage(stream)}

    @app.post("/v1/classify")
    async def classify(body: ClassifyBody) -> dict[str, Any]:
        check_model(body.model, CLASSIFIER_NAME)
        texts = [body.input] if isinstance(body.input, str) else list(body.input)
        if not texts or not 1 <= len(texts) <= limits.max_classify_inputs:
            raise APIError(400, f"input must hold 1 to {limits.max_classify_inputs} texts, "
                           f"got {len(texts)}", param="input")
        if any(not t.strip() for t in texts):
            raise APIError(400, "input holds an empty text", param="input")
        if background_classifier:
            clf = ready_classifier()
        else:
            clf = await asyncio.to_thread(get_classifier)
        logits = await asyncio.to_thread(_predict, clf, texts)
        probs = _probabilities(logits)
        classes = list(clf.classes)
        data = [{"index": i, "label": classes[int(p.argmax())],
                 "probabilities": {c: round(float(x), 6) for c, x in zip(classes, p,
                                                                         strict=True)}}
                for i, p in enumerate(probs)]
        return {"object": "list", "model": CLASSIFIER_NAME, "data": data}

    app.add_middleware(ByteLimitMiddleware, max_bytes=limits.max_body_bytes)
    return app


def _static(name: str) -> Any:
    return resources.files("dlbook.serve") / "static" / name


# --------------------------------------------------------------------------- running it


class _ThreadServer:
    """uvicorn in a background thread (no signal handlers: the main thread keeps its own)."""

    def __init__(self, app: Any, host: str, port: int, log_level: str) -> None:
        uvicorn = require("uvicorn", purpose="the HTTP server (pip install 'dlbook[apps]')")

        class Server(uvicorn.Server):
            def install_signal_handlers(self) -> None:  # older uvicorn
                pass

            @contextlib.contextmanager
            def capture_signals(self) -> Iterator[None]:  # newer uvicorn
                yield

        self.server = Server(uvicorn.Config(app, host=host, port=port, log_level=log_level,
                                            lifespan="on", timeout_graceful_shutdown=5))
        self.thread = threading.Thread(target=self.server.run, name="dlbook-serve", daemon=True)


@contextlib.contextmanager
def serve_in_thread(app: Any, host: str = "127.0.0.1", port: int = 0,
                    log_level: str = "warning", start_timeout_s: float = 60.0) -> Iterator[str]:
    """Run ``app`` with uvicorn in a daemon thread; yield its base URL
    (``http://127.0.0.1:<port>``; ``port=0`` picks a free one) and shut it down on exit.

    Raises:
        RuntimeError: the server did not start within ``start_timeout_s``.
    """
    runner = _ThreadServer(app, host, port, log_level)
    server = runner.server
    runner.thread.start()
    start = time.monotonic()
    while not server.started:
        if not runner.thread.is_alive() or time.monotonic() - start > start_timeout_s:
            server.should_exit = True
            raise RuntimeError(f"the server did not start on {host}:{port}")
        time.sleep(0.01)
    bound = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://{host}:{bound}"
    finally:
        server.should_exit = True
        runner.thread.join(timeout=30)
