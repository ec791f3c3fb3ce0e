"""ternlm serve: an OpenAI-compatible HTTP server for one ternlm Model.

    ternlm serve --model PATH [--host 127.0.0.1] [--port 8000] [--threads N] [--max-sequences N]
    python -m ternlm.server --model PATH ...           # the same
    app = ternlm.server.create_app(model)              # the ASGI app, to embed or test

Endpoints: GET /v1/models, POST /v1/completions, POST /v1/chat/completions (each with
stream: true as server-sent events ending `data: [DONE]`), GET /health. What a request may
contain is in protocol.py; how generations run is in runner.py; the routes in app.py.

It is built on FastAPI + uvicorn (the optional extra `pip install 'ternlm[server]'`), the
stack llama-cpp-python's server uses: both are widely used and actively maintained,
pydantic gives strict request validation with per-field errors, and uvicorn reports client
disconnects, which is what lets an abandoned stream free its sequence at once. The rest of
ternlm does not import them.
"""
from __future__ import annotations

EXTRA_HINT = "ternlm serve needs FastAPI and uvicorn: pip install 'ternlm[server]'"


def _require_extra():
    """ImportError naming the extra when FastAPI or uvicorn is missing."""
    from ..hints import require_modules
    require_modules(("fastapi", "uvicorn"), EXTRA_HINT)


def create_app(model, model_name: str | None = None):
    """The FastAPI (ASGI) app serving `model` with OpenAI's API; model_name: the id it
    answers as (default: the model folder's or file's name)."""
    _require_extra()
    from .app import create_app as _create
    return _create(model, model_name)


def serve(model, host: str = "127.0.0.1", port: int = 8000, model_name: str | None = None,
          log_level: str = "info"):
    """Serve `model` with uvicorn until interrupted (Ctrl-C)."""
    _require_extra()
    import uvicorn
    uvicorn.run(create_app(model, model_name), host=host, port=port, log_level=log_level)
