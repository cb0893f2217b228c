"""OpenAI-compatible request and response types, and the OpenAI-style error body.

Requests are validated strictly at the edge: no `true` as 1, no `"4"` as 4, seeds in the engine's
range, no lone surrogates in any string. Every top-level field is either honoured, or known not to
change the answer (`HARMLESS`: `user`, `metadata`, ...), or refused with a 400 that names it
(`unsupported()`): nothing that would change the answer is silently ignored.

Response shapes: `completion_body`/`chat_body` and their streaming chunks; logprobs in the legacy
completions shape (`tokens`, `token_logprobs`, `top_logprobs`, `text_offset`) or the chat shape
(`content: [{token, logprob, bytes, top_logprobs}]`).
"""

from __future__ import annotations

import time
import uuid
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from compress.serve.sequence import SEED_LIMIT  # the engine takes 0 <= seed < 2**63

MAX_LOGPROBS = 20  # top-k alternatives per token (vLLM's default max_logprobs)
MAX_CHOICES = 128  # prompts x n per request


class APIError(Exception):
    """An error answered to the client as `{"error": {message, type, param, code}}`."""

    def __init__(self, status: int, message: str, type: str = "invalid_request_error",
                 param: str | None = None, code: str | None = None, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code
        self.headers = headers or {}

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


class _Model(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True)


class StreamOptions(_Model):
    include_usage: bool = False


class _Sampling(_Model):
    model: str
    max_tokens: int | None = Field(None, ge=0)
    temperature: float = Field(1.0, ge=0.0, le=2.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    top_k: int = Field(0, ge=-1)  # vLLM extension; 0 or -1 = off
    stop: str | list[str] | None = None
    stop_token_ids: list[int] | None = None  # vLLM extension
    seed: int | None = Field(None, ge=0, lt=SEED_LIMIT)
    stream: bool = False
    stream_options: StreamOptions | None = None
    n: int = Field(1, ge=1, le=MAX_CHOICES)
    user: str | None = None
    priority: int | str | None = None  # "interactive" | "batch" | vLLM-style int (<= 0 = interactive)
    ignore_eos: bool = False  # vLLM extension: keep generating past end-of-sequence (benchmarks)
    min_tokens: int = Field(0, ge=0)  # vLLM extension: no eos / stop token before this many tokens
    presence_penalty: float = Field(0.0, ge=-2.0, le=2.0)
    frequency_penalty: float = Field(0.0, ge=-2.0, le=2.0)
    repetition_penalty: float = Field(1.0, gt=0.0, le=10.0)  # vLLM extension (HF definition)
    logit_bias: dict[str, float] | None = None  # token id (as a string, OpenAI's shape) -> bias in [-100, 100]

    @field_validator("logit_bias")
    @classmethod
    def _bias(cls, v: dict[str, float] | None) -> dict[str, float] | None:
        for key, bias in (v or {}).items():
            if not key.isdigit():
                raise ValueError(f"keys must be token ids (got {key[:20]!r})")
            if not -100.0 <= bias <= 100.0:
                raise ValueError(f"bias for token {key} must be in [-100, 100]")
        return v

    def stop_list(self) -> list[str]:
        if self.stop is None:
            return []
        stops = [self.stop] if isinstance(self.stop, str) else list(self.stop)
        return [s for s in stops if s]

    def requested_tokens(self) -> int | None:
        return self.max_tokens


class CompletionRequest(_Sampling):
    prompt: str | list[str] | list[int] | list[list[int]]
    echo: bool = False
    logprobs: int | None = Field(None, ge=0, le=MAX_LOGPROBS)


class TextPart(_Model):
    model_config = ConfigDict(extra="forbid", strict=True)
    type: Literal["text"] = "text"
    text: str


class ChatMessage(_Model):
    role: Literal["system", "user", "assistant", "developer", "tool"]
    content: str | list[TextPart] | None = None

    def text(self) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(p.text for p in self.content)


class ChatRequest(_Sampling):
    messages: list[ChatMessage]
    max_completion_tokens: int | None = Field(None, ge=0)
    logprobs: bool = False
    top_logprobs: int | None = Field(None, ge=0, le=MAX_LOGPROBS)

    def requested_tokens(self) -> int | None:
        return self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens


# Fields that never change the answer: accepted and not acted on.
HARMLESS = {"metadata", "store", "service_tier", "parallel_tool_calls"}
# Fields we know but cannot honour: accepted only with these neutral values.
_NEUTRAL = {
    "best_of": lambda v, req: v is None or v == req.n,
    "suffix": lambda v, req: v in (None, ""),
    "tools": lambda v, req: not v,
    "tool_choice": lambda v, req: v in (None, "none"),
    "functions": lambda v, req: not v,
    "function_call": lambda v, req: v in (None, "none"),
    "response_format": lambda v, req: v is None or v == {"type": "text"},
}
_WHY = {"response_format": "constrained decoding is not available on this server",
        "best_of": "best_of other than n is not supported",
        "suffix": "insertion (suffix) is not supported", "tools": "tool calling is not supported",
        "tool_choice": "tool calling is not supported", "functions": "function calling is not supported",
        "function_call": "function calling is not supported"}


def unsupported(req: _Sampling) -> list[str]:
    """Names of the request's fields that would change the answer and that this server does not honour."""
    bad = []
    for name, value in (req.model_extra or {}).items():
        check = _NEUTRAL.get(name)
        if check is None and name not in HARMLESS or check is not None and not check(value, req):
            bad.append(name)
    return bad


def refuse_unsupported(req: _Sampling) -> None:
    bad = unsupported(req)
    if bad:
        reasons = "; ".join(f"{b}: {_WHY.get(b, 'unknown field')}" for b in bad)
        raise APIError(400, f"unsupported field(s) {', '.join(bad)} ({reasons})", param=",".join(bad),
                       code="unsupported_field")


def surrogate_path(value: Any, path: str = "") -> str | None:
    """The path of the first string in a parsed JSON value that holds a lone surrogate, or None."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return path or None
        return None
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for k, v in items:
        if isinstance(k, str) and surrogate_path(k) is not None:
            return f"{path}.{k}".strip(".")
        found = surrogate_path(v, f"{path}.{k}".strip("."))
        if found is not None:
            return found
    return None


_UNION_TAGS = {"str", "int", "float", "bool", "list", "dict", "none"}


def _param(loc: tuple) -> str | None:
    parts = [str(x) for x in loc if str(x) not in _UNION_TAGS and "[" not in str(x) and "-" not in str(x)]
    return ".".join(parts) or None


def parse(model: type[_Sampling], body: Any) -> _Sampling:
    """Validate a parsed JSON body as `model`; every failure is a 400 whose `param` names the field."""
    if not isinstance(body, dict):
        raise APIError(400, "request body must be a JSON object")
    where = surrogate_path(body)
    if where is not None:
        raise APIError(400, f"{where}: contains a lone surrogate (not valid Unicode)", param=where)
    try:
        req = model.model_validate(body)
    except ValidationError as e:
        err = e.errors()[0]
        param = _param(err.get("loc", ()))
        raise APIError(400, f"{param or 'body'}: {err.get('msg')}", param=param) from None
    refuse_unsupported(req)
    return req


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:24]}"


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


def completion_choice(index: int, text: str, finish: str | None, logprobs: dict | None = None) -> dict:
    return {"index": index, "text": text, "logprobs": logprobs, "finish_reason": finish}


def chat_choice(index: int, text: str, finish: str | None, logprobs: dict | None = None) -> dict:
    return {"index": index, "message": {"role": "assistant", "content": text}, "logprobs": logprobs,
            "finish_reason": finish}


def completion_body(rid: str, model: str, text: str, finish: str | None, use: dict | None,
                    choices: list[dict] | None = None) -> dict[str, Any]:
    return {"id": rid, "object": "text_completion", "created": int(time.time()), "model": model,
            "choices": choices if choices is not None else [completion_choice(0, text, finish)], "usage": use}


def chat_body(rid: str, model: str, text: str, finish: str | None, use: dict | None,
              choices: list[dict] | None = None) -> dict[str, Any]:
    return {"id": rid, "object": "chat.completion", "created": int(time.time()), "model": model,
            "choices": choices if choices is not None else [chat_choice(0, text, finish)], "usage": use}


def chat_chunk(rid: str, model: str, delta: dict, finish: str | None, use: dict | None = None,
               choices: bool = True, index: int = 0, logprobs: dict | None = None) -> dict[str, Any]:
    return {"id": rid, "object": "chat.completion.chunk", "created": int(time.time()), "model": model,
            "choices": [{"index": index, "delta": delta, "logprobs": logprobs, "finish_reason": finish}]
            if choices else [], "usage": use}


def completion_chunk(rid: str, model: str, text: str, finish: str | None, use: dict | None = None,
                     choices: bool = True, index: int = 0, logprobs: dict | None = None) -> dict[str, Any]:
    return {"id": rid, "object": "text_completion", "created": int(time.time()), "model": model,
            "choices": [completion_choice(index, text, finish, logprobs)] if choices else [], "usage": use}


# ---------------------------------------------------------------- logprobs shapes


def legacy_logprobs(entries: list, decode, offset: int = 0) -> dict:
    """Completions' legacy shape from a list of TokenLogprob-or-None (None: the first prompt token,
    which has no logprob; its token is then given as `(token_id, None)` by the caller)."""
    tokens, token_logprobs, top, offsets = [], [], [], []
    pos = offset
    for e in entries:
        tid, lp, alts = e
        text = decode(tid)
        tokens.append(text)
        token_logprobs.append(lp)
        if alts is None:
            top.append(None)
        else:
            d: dict[str, float] = {}
            for alt_id, alt_lp in alts:
                key = decode(alt_id)
                d[key] = max(d.get(key, float("-inf")), alt_lp)
            top.append(d)
        offsets.append(pos)
        pos += len(text)
    return {"tokens": tokens, "token_logprobs": token_logprobs, "top_logprobs": top, "text_offset": offsets}


def chat_logprobs(entries: list, decode) -> dict:
    """Chat's shape: {"content": [{token, logprob, bytes, top_logprobs: [{token, logprob, bytes}]}]}."""
    def item(tid: int, lp: float) -> dict:
        text = decode(tid)
        return {"token": text, "logprob": lp, "bytes": list(text.encode("utf-8", "replace"))}

    return {"content": [{**item(tid, lp), "top_logprobs": [item(a, alp) for a, alp in (alts or [])]}
                        for tid, lp, alts in entries]}
