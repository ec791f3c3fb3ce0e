"""The FastAPI application: OpenAI's completions, chat completions and models endpoints over
one ternlm Model (see ternlm/server/__init__.py for the overview).

A request goes: body validated (protocol.py) -> prompt tokenized, chat template rendered and
the context checked in a worker thread -> one generation per choice (runner.py) -> one JSON
answer, or server-sent events `data: {chunk}` ending with `data: [DONE]` (the events that
are ready together sent as one body chunk: _body).
"""
from __future__ import annotations

import asyncio
import json
import os
import time
import uuid

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from .protocol import APIError, ChatRequest, CompletionRequest, error_body, validation_error_body
from .runner import ChoiceSpec, Counters, Run

DEFAULT_COMPLETION_TOKENS = 16        # OpenAI's default max_tokens for /v1/completions


def model_name_of(model) -> str:
    """The id /v1/models lists: the model folder's or file's name."""
    src = os.path.normpath(model.source or "ternlm")
    return os.path.basename(src) or "ternlm"


def create_app(model, model_name: str | None = None) -> FastAPI:
    """An ASGI app serving `model` (a ternlm.Model) with OpenAI's API; run it with any ASGI
    server (ternlm serve uses uvicorn). model_name: the id in /v1/models and in answers
    (default: the model folder's name)."""
    from .. import __version__
    app = FastAPI(title="ternlm", version=__version__, docs_url=None, redoc_url=None)
    name = model_name or model_name_of(model)
    counters = Counters()
    created = int(time.time())
    app.state.model, app.state.counters, app.state.name = model, counters, name
    # TERNLM_SSE_COALESCE=0: a streamed answer sends each event as its own body chunk
    # rather than the events that are ready together as one (the same bytes; see _body)
    app.state.coalesce = os.environ.get("TERNLM_SSE_COALESCE", "1") != "0"

    @app.exception_handler(APIError)
    async def _api_error(request, exc: APIError):
        return JSONResponse(exc.body(), status_code=exc.status)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request, exc: RequestValidationError):
        message, param = validation_error_body(exc.errors())
        return JSONResponse(error_body(message, param=param), status_code=400)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request, exc: StarletteHTTPException):
        message = (f"no such endpoint: {request.method} {request.url.path}" if exc.status_code in (404, 405)
                   else str(exc.detail))
        kind = "invalid_request_error" if exc.status_code < 500 else "server_error"
        return JSONResponse(error_body(message, kind), status_code=exc.status_code)

    @app.exception_handler(Exception)
    async def _server_error(request, exc: Exception):
        return JSONResponse(error_body(f"internal error: {type(exc).__name__}: {exc}", "server_error"),
                            status_code=500)

    @app.get("/health")
    async def health():
        return {"status": "ok", "model": name,
                "active_sequences": model.active_sequences, "max_sequences": model.max_sequences,
                "generations": counters.snapshot()}

    def model_card():
        return {"id": name, "object": "model", "created": created, "owned_by": "ternlm"}

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [model_card()]}

    @app.get("/v1/models/{model_id:path}")
    async def one_model(model_id: str):
        if model_id != name:
            raise APIError(404, f"the model {model_id!r} does not exist; this server serves {name!r}",
                           param="model", code="model_not_found")
        return model_card()

    @app.post("/v1/completions")
    async def completions(body: CompletionRequest, request: Request):
        stops = body.check()
        prompts = await asyncio.to_thread(_completion_prompts, model, body.prompts())
        max_new = DEFAULT_COMPLETION_TOKENS if body.max_tokens is None else body.max_tokens
        return await _serve(request, body, stops, prompts, lambda ids: max_new, "text_completion", name, counters)

    @app.post("/v1/chat/completions")
    async def chat_completions(body: ChatRequest, request: Request):
        stops = body.check()
        ids = await asyncio.to_thread(_chat_prompt, model, body.template_messages())
        limit = body.max_tokens if body.max_tokens is not None else body.max_completion_tokens
        # without a limit a reply may fill the context, as OpenAI's chat endpoint does
        max_new = (lambda ids: model.context - len(ids)) if limit is None else (lambda ids: limit)
        return await _serve(request, body, stops, [(ids, "")], max_new, "chat.completion", name, counters)

    return app


# ---- prompts ------------------------------------------------------------------------------------
def _check_context(model, ids, param):
    if len(ids) >= model.context:
        raise APIError(400, f"the prompt is {len(ids)} tokens but the model's context is {model.context}: it must "
                            f"leave room for at least one new token (shorten the prompt, or start the server "
                            f"with a larger --context)", param=param, code="context_length_exceeded")


def _completion_prompts(model, prompts) -> list:
    """[(ids, text)] per prompt: token ids as Model.stream tokenizes a str (special tokens
    added), and the prompt's text (for echo)."""
    out = []
    for i, p in enumerate(prompts):
        if isinstance(p, str):
            ids, text = model.tokenizer.encode(p), p
        else:
            ids = list(p)
            v = model.config.vocab_size
            bad = [t for t in ids if not 0 <= t < v]
            if bad:
                raise APIError(400, f"prompt: token id {bad[0]} is outside the vocabulary [0, {v})", param="prompt")
            text = model.tokenizer.decode(ids)
        _check_context(model, ids, "prompt")
        out.append((ids, text))
    return out


def _chat_prompt(model, messages) -> list:
    """The conversation rendered with the model's chat template, as token ids (the template
    writes BOS itself, so no special tokens are added: as Model.chat does)."""
    if not model.tokenizer.chat_template:
        raise APIError(400, "this model has no chat template; use /v1/completions with plain text",
                       param="messages", code="no_chat_template")
    try:
        text = model.tokenizer.apply_chat_template(messages, add_generation_prompt=True)
    except (ValueError, TypeError) as e:      # the template refused the conversation
        raise APIError(400, f"messages: the chat template failed: {e}", param="messages") from None
    ids = model.tokenizer.encode(text, add_special_tokens=False)
    _check_context(model, ids, "messages")
    return ids


# ---- one request ---------------------------------------------------------------------------------
def _usage(prompt_tokens, completion_tokens, cached_tokens) -> dict:
    """OpenAI's usage; cached_tokens: prompt tokens whose KV cache a chat request found in
    its sequence from an earlier turn, so they were not prefilled again."""
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
            "prompt_tokens_details": {"cached_tokens": cached_tokens}}


async def _serve(request, body, stops, prompts, max_new, kind, name, counters):
    model = request.app.state.model
    n = body.n
    base = body.sampling_kwargs(stops)
    if kind == "chat.completion":
        # as Model.chat: a conversation's next turn lands on the sequence that holds the
        # previous one and prefills only the tokens it adds
        base["_reuse_cache"] = True
    specs = [ChoiceSpec(p * n + j, ids, dict(base, max_new_tokens=max_new(ids), seed=body.seed_for(p * n + j)))
             for p, (ids, _) in enumerate(prompts) for j in range(n)]
    prompt_tokens = sum(max(len(ids), 1) for ids, _ in prompts)      # an empty prompt starts from BOS
    echo = [text if getattr(body, "echo", False) else "" for _, text in prompts for _ in range(n)]
    run = Run(model, specs, counters).start()
    try:
        await _unless_disconnected(request, run.started(), run)
    except (ValueError, TypeError) as e:      # Model.stream's checks of the request's values
        raise APIError(400, str(e)) from None
    except _ClientGone:
        return Response(status_code=499)
    except BaseException:
        run.cancel()
        raise
    rid = ("chatcmpl-" if kind == "chat.completion" else "cmpl-") + uuid.uuid4().hex
    meta = {"id": rid, "created": int(time.time()), "model": name}
    if body.stream:
        events = _stream_events(run, meta, kind, len(specs), echo, prompt_tokens, body.include_usage)
        return _EventStream(_body(events, request.app.state.coalesce), run)
    try:
        result = await _unless_disconnected(request, _collect(run, len(specs)), run)
    except _ClientGone:
        return Response(status_code=499)
    texts, finish, tokens, cached = result
    choices = []
    for i in range(len(specs)):
        text = echo[i] + "".join(texts[i])
        if kind == "chat.completion":
            choices.append({"index": i, "message": {"role": "assistant", "content": text},
                            "logprobs": None, "finish_reason": finish[i]})
        else:
            choices.append({"index": i, "text": text, "logprobs": None, "finish_reason": finish[i]})
    return {**meta, "object": kind, "choices": choices, "usage": _usage(prompt_tokens, sum(tokens), sum(cached))}


async def _collect(run, count):
    texts, finish, tokens, cached = [[] for _ in range(count)], [None] * count, [0] * count, [0] * count
    async for ev in run.events():
        if ev[0] == "piece":
            texts[ev[1]].append(ev[2])
        elif ev[0] == "done":
            finish[ev[1]], tokens[ev[1]], cached[ev[1]] = ev[2:5]
        else:                                 # an error while generating: the model's fault
            run.cancel()
            raise APIError(500, f"generation failed: {ev[2]}", type="server_error")
    return texts, finish, tokens, cached


class _ClientGone(Exception):
    pass


async def _unless_disconnected(request, awaitable, run):
    """Await `awaitable`, unless the client disconnects first: then cancel the run (its
    generations stop at their next token) and raise _ClientGone."""
    work = asyncio.ensure_future(awaitable)
    watch = asyncio.ensure_future(_disconnect(request))
    try:
        await asyncio.wait({work, watch}, return_when=asyncio.FIRST_COMPLETED)
        if work.done():
            return work.result()
        run.cancel()
        work.cancel()
        raise _ClientGone()
    finally:
        watch.cancel()


async def _disconnect(request):
    while (await request.receive())["type"] != "http.disconnect":
        pass


def _sse(obj) -> str:
    return f"data: {json.dumps(obj, ensure_ascii=False, separators=(',', ':'))}\n\n"


async def _stream_events(run, meta, kind, count, echo, prompt_tokens, include_usage):
    """The SSE events of a streamed answer, in lists of events that can leave together:
    the choices' first events, then per batch of the run's events (Run.batches) their
    chunks, the last batch with the usage and `data: [DONE]` after its chunks."""
    chat = kind == "chat.completion"
    head = {**meta, "object": "chat.completion.chunk" if chat else "text_completion"}
    extra = {"usage": None} if include_usage else {}

    def chunk(i, piece=None, finish=None):
        if chat:
            delta = {} if piece is None else {"content": piece}
            choice = {"index": i, "delta": delta, "logprobs": None, "finish_reason": finish}
        else:
            choice = {"index": i, "text": piece or "", "logprobs": None, "finish_reason": finish}
        return _sse({**head, "choices": [choice], **extra})

    completion_tokens = cached_tokens = ended = 0

    def tail():
        usage = _usage(prompt_tokens, completion_tokens, cached_tokens)
        return ([_sse({**head, "choices": [], "usage": usage})] if include_usage else []) + ["data: [DONE]\n\n"]

    try:
        if chat:
            yield [_sse({**head, "choices": [{"index": i, "delta": {"role": "assistant", "content": ""},
                                              "logprobs": None, "finish_reason": None}], **extra})
                   for i in range(count)]
        elif any(echo):
            yield [chunk(i, echo[i]) for i in range(count) if echo[i]]
        async for batch in run.batches():
            events = []
            for ev in batch:
                if ev[0] == "piece":
                    events.append(chunk(ev[1], ev[2]))
                elif ev[0] == "done":
                    completion_tokens += ev[3]
                    cached_tokens += ev[4]
                    ended += 1
                    events.append(chunk(ev[1], None, ev[2]))
                else:
                    run.cancel()
                    yield events + [_sse(error_body(f"generation failed: {ev[2]}", "server_error"))]
                    return
            if ended == count:                # every choice has finished: nothing comes after
                break
            yield events
        else:                                 # cancelled (the client has gone): nothing was pending
            events = []
        yield events + tail()
    finally:
        run.cancel()


async def _body(groups, coalesce):
    """Body chunks from _stream_events' lists: one chunk per list (coalesce), or one per
    event. Either way the bytes are the same; what differs is the number of ASGI messages,
    each of which costs the server per message on its way out (behind Ray Serve: a hop
    between the replica's two event loops and a message to the proxy process), while a
    client parses events, not chunks. A server that keeps up sends each token's event as
    it comes; one that falls behind sends what has piled up at once."""
    async for group in groups:
        if coalesce:
            yield "".join(group)
        else:
            for event in group:
                yield event


class _EventStream(StreamingResponse):
    """Server-sent events whose generations stop however the response ends: finished, the
    client gone (the ASGI server reports the disconnect, or a send fails) or cancelled."""

    def __init__(self, chunks, run):
        super().__init__(chunks, media_type="text/event-stream",
                         headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        self._run = run

    async def __call__(self, scope, receive, send):
        try:
            await super().__call__(scope, receive, send)
        finally:
            self._run.cancel()
