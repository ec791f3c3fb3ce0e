"""The OpenAI request bodies ternlm serve accepts, and its error answers.

Request bodies are validated strictly (pydantic strict mode): a field of the wrong JSON type
("temperature": "hot", "max_tokens": 1.5, "stream": 1) is a 400 naming the field, never
coerced. Fields OpenAI defines that this server does not implement are accepted at their
neutral value (presence_penalty 0, logprobs null, ...) and refused otherwise, so a request
never silently means something else; fields no OpenAI endpoint defines are ignored (clients
send extra ones). Extensions, as llama-cpp-python names them: top_k, min_p,
repetition_penalty.

Errors have OpenAI's shape, which the openai client turns into its exception classes:

    {"error": {"message": "...", "type": "invalid_request_error", "param": "max_tokens", "code": null}}
"""
from __future__ import annotations

from typing import Any, Optional, Union

from pydantic import BaseModel, ConfigDict, Field

MAX_N = 16                 # choices per prompt (each one is a sequence of its own)
MAX_CHOICES = 64           # choices per request, prompts x n (each runs in a thread of its own)
MAX_STOP = 4               # stop strings per request, OpenAI's limit

_Float = dict(allow_inf_nan=False)


class APIError(Exception):
    """An error answered as OpenAI's {"error": {...}} JSON with an HTTP status."""

    def __init__(self, status: int, message: str, type: str = "invalid_request_error",
                 param: Optional[str] = None, code: Optional[str] = None):
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


def error_body(message, type="invalid_request_error", param=None, code=None) -> dict:
    return APIError(0, message, type, param, code).body()


# pydantic's location of a field names union members by their type ("str", "list[int]");
# the client knows the field, not those
_TYPE_TAGS = {"str", "int", "float", "bool", "dict", "list", "none", "is-instance", "literal"}


def validation_error_body(errors) -> tuple[str, Optional[str]]:
    """(message, param) for pydantic / FastAPI validation errors (first error only, as
    OpenAI reports one)."""
    err = errors[0]
    loc = [p for p in err.get("loc", ()) if p != "body"]
    if err.get("type") == "json_invalid":
        detail = (err.get("ctx") or {}).get("error", "")
        return f"the request body is not valid JSON{': ' + detail if detail else ''}", None
    parts = []
    for p in loc:
        if isinstance(p, int):
            parts.append(f"[{p}]")
        elif "[" in p or p in _TYPE_TAGS or p.startswith("function-"):
            break
        else:
            parts.append(("." if parts else "") + p)
    param = "".join(parts) or None
    msg = err.get("msg", "invalid value")
    if err.get("type") == "missing":
        return f"missing required field {param!r}", param
    got = err.get("input")
    shown = repr(got) if not isinstance(got, (dict, list)) else type(got).__name__
    if len(shown) > 80:
        shown = shown[:77] + "..."
    return (f"{param}: {msg} (got {shown})" if param else f"{msg} (got {shown})"), param


class StreamOptions(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore")
    include_usage: bool = False


class _Sampling(BaseModel):
    """Fields shared by /v1/completions and /v1/chat/completions."""
    model_config = ConfigDict(strict=True, extra="ignore")

    model: Optional[str] = None            # one model is served: any name is answered by it
    max_tokens: Optional[int] = Field(None, ge=0)
    temperature: float = Field(1.0, ge=0, **_Float)           # OpenAI's default
    top_p: float = Field(1.0, gt=0, le=1, **_Float)
    n: int = Field(1, ge=1, le=MAX_N)
    stream: bool = False
    stream_options: Optional[StreamOptions] = None
    stop: Optional[Union[str, list[str]]] = None
    seed: Optional[int] = None
    user: Optional[str] = None
    # OpenAI fields without an implementation here: only their neutral values pass
    presence_penalty: float = Field(0.0, **_Float)
    frequency_penalty: float = Field(0.0, **_Float)
    logit_bias: Optional[dict[str, Union[int, float]]] = None
    # extensions (llama-cpp-python's names)
    top_k: int = Field(0, ge=0)
    min_p: float = Field(0.0, ge=0, le=1, **_Float)
    repetition_penalty: float = Field(1.0, gt=0, **_Float)

    def check_common(self):
        stops = [self.stop] if isinstance(self.stop, str) else list(self.stop or [])
        if len(stops) > MAX_STOP:
            raise APIError(400, f"stop: at most {MAX_STOP} stop strings, got {len(stops)}", param="stop")
        if any(not s for s in stops):
            raise APIError(400, "stop: stop strings must not be empty", param="stop")
        for name in ("presence_penalty", "frequency_penalty"):
            if getattr(self, name) != 0:
                raise APIError(400, f"{name} is not supported by this server (only 0); repetition_penalty "
                                    f"(e.g. 1.1) penalizes repeated tokens", param=name)
        if self.logit_bias:
            raise APIError(400, "logit_bias is not supported by this server", param="logit_bias")
        if self.stream_options is not None and not self.stream:
            raise APIError(400, "stream_options is only allowed with stream: true", param="stream_options")
        return stops

    def sampling_kwargs(self, stops) -> dict:
        """Model.stream's keyword arguments (max_new_tokens set by the caller)."""
        return dict(temperature=self.temperature, top_p=self.top_p, top_k=self.top_k, min_p=self.min_p,
                    repetition_penalty=self.repetition_penalty, stop=stops or None)

    def seed_for(self, choice: int) -> Optional[int]:
        """Choice i of a seeded request samples with seed + i: the n choices differ, and the
        same request gives the same n answers. Any int is a seed (OpenAI's are signed)."""
        return None if self.seed is None else (self.seed + choice) % 2**63

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)


class CompletionRequest(_Sampling):
    prompt: Union[str, list[str], list[int], list[list[int]]]
    echo: bool = False
    suffix: Optional[str] = None
    best_of: Optional[int] = Field(None, ge=1)
    logprobs: Optional[int] = None

    def check(self):
        stops = self.check_common()
        if self.suffix:
            raise APIError(400, "suffix (insertion) is not supported by this server", param="suffix")
        if self.best_of not in (None, 1, self.n):
            raise APIError(400, "best_of is not supported by this server (only best_of = n)", param="best_of")
        if self.logprobs:
            raise APIError(400, "logprobs is not supported by this server", param="logprobs")
        if isinstance(self.prompt, list) and not self.prompt:
            raise APIError(400, "prompt: an empty list holds no prompt", param="prompt")
        if len(self.prompts()) * self.n > MAX_CHOICES:
            raise APIError(400, f"prompt: {len(self.prompts())} prompts x n={self.n} choices is more than the "
                                f"{MAX_CHOICES} one request may ask for", param="prompt")
        return stops

    def prompts(self) -> list:
        """The prompts, each a str or a list of token ids."""
        p = self.prompt
        if isinstance(p, str) or (p and isinstance(p[0], int)):
            return [p]
        return list(p)


class TextPart(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore")
    type: str
    text: Optional[str] = None


class Message(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore")
    role: str
    content: Optional[Union[str, list[TextPart]]] = None
    name: Optional[str] = None


class ChatRequest(_Sampling):
    messages: list[Message] = Field(min_length=1)
    max_completion_tokens: Optional[int] = Field(None, ge=0)     # the newer name of max_tokens
    logprobs: Optional[bool] = None
    top_logprobs: Optional[int] = None
    tools: Optional[list[dict[str, Any]]] = None
    tool_choice: Optional[Union[str, dict[str, Any]]] = None
    response_format: Optional[dict[str, Any]] = None

    def check(self):
        stops = self.check_common()
        if self.logprobs or self.top_logprobs:
            raise APIError(400, "logprobs is not supported by this server", param="logprobs")
        if self.tools:
            raise APIError(400, "tools (function calling) is not supported by this server", param="tools")
        if self.tool_choice not in (None, "none", "auto"):
            raise APIError(400, "tool_choice is not supported by this server", param="tool_choice")
        kind = (self.response_format or {}).get("type", "text")
        if kind != "text":
            raise APIError(400, f"response_format {kind!r} is not supported by this server (only 'text')",
                           param="response_format")
        if self.max_tokens is not None and self.max_completion_tokens not in (None, self.max_tokens):
            raise APIError(400, "max_tokens and max_completion_tokens differ; give one", param="max_tokens")
        return stops

    def template_messages(self) -> list[dict]:
        """The conversation as a chat template reads it: content a str. Text parts are
        joined; other parts (images, audio) are refused. OpenAI's "developer" role is the
        system role of the models served here."""
        out = []
        for i, m in enumerate(self.messages):
            content = m.content
            if isinstance(content, list):
                texts = []
                for j, part in enumerate(content):
                    if part.type != "text" or part.text is None:
                        raise APIError(400, f"messages[{i}].content[{j}]: only text parts are supported, got "
                                            f"{part.type!r}", param=f"messages[{i}].content")
                    texts.append(part.text)
                content = "".join(texts)
            msg = {"role": "system" if m.role == "developer" else m.role, "content": content or ""}
            if m.name is not None:
                msg["name"] = m.name
            out.append(msg)
        return out



def finish_reason(stop_reason: str) -> str:
    """Model stats' stop_reason -> OpenAI's finish_reason: end of sequence or a stop
    string is "stop"; max_tokens or a full context is "length"."""
    return "stop" if stop_reason in ("eos", "stop") else "length"
