"""OpenAI request and response bodies (pydantic), and their translation to engine parameters.

Unknown request fields are ignored (clients send many optional ones); fields we do not support
with a non-default value (``n`` > 1, ``best_of``, ``logprobs``, penalties, ``min_p``,
``logit_bias`` ...) raise a 400. Every number has its range (OpenAI's where it has one; integers
that cross to the workers fit msgpack's 64 bits; NaN and infinities are refused), and null means
the default. Validation failures become OpenAI-style 400 errors in :mod:`dopd.serve.api`.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any, Literal, NotRequired

from pydantic import BaseModel, ConfigDict, Field
from typing_extensions import TypedDict

from dopd.engine.model import SamplingParams
from dopd.errors import DopdError
from dopd.serve.errors import ServeError

MAX_STOP = 4


class StreamOptions(BaseModel):
    include_usage: bool = False


I64_MIN, U64_MAX, I32_MAX = -(2**63), 2**64 - 1, 2**31 - 1


class _Common(BaseModel):
    model_config = ConfigDict(extra="ignore", allow_inf_nan=False)

    model: str
    max_tokens: int | None = Field(None, ge=I64_MIN, le=U64_MAX)
    temperature: float | None = Field(1.0, ge=0.0, le=2.0)
    top_p: float | None = Field(1.0, gt=0.0, le=1.0)
    top_k: int | None = Field(0, ge=-1, le=I32_MAX)
    n: int | None = Field(1, ge=1, le=128)
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    stop: str | list[str] | None = None
    seed: int | None = Field(None, ge=I64_MIN, le=U64_MAX)
    ignore_eos: bool = False
    return_token_ids: bool = False
    user: str | None = None
    presence_penalty: float | None = Field(None, ge=-2.0, le=2.0)
    frequency_penalty: float | None = Field(None, ge=-2.0, le=2.0)
    repetition_penalty: float | None = Field(None, gt=0.0, le=100.0)
    min_p: float | None = Field(None, ge=0.0, le=1.0)
    logit_bias: dict[str, float] | None = None

    def output_limit(self) -> int | None:
        return self.max_tokens

    def _unsupported(self) -> str | None:
        """The first field set to a value this server cannot honour, or None."""
        if (self.n or 1) != 1:
            return "n"
        for name in ("presence_penalty", "frequency_penalty", "min_p"):
            if getattr(self, name):
                return name
        if self.repetition_penalty not in (None, 1.0):
            return "repetition_penalty"
        return "logit_bias" if self.logit_bias else None

    def sampling(self, prompt_len: int, max_model_len: int, default_max: int) -> SamplingParams:
        """Engine parameters; ServeError 400 for unsupported or out-of-range values."""
        if (bad := self._unsupported()) is not None:
            if bad == "n":
                raise ServeError(400, "only n=1 is supported", param="n")
            raise ServeError(400, f"{bad} is not supported (leave it unset or at its default)",
                             param=bad)
        limit = self.output_limit()
        room = max_model_len - prompt_len
        if room < 1:
            raise ServeError(400, f"the prompt has {prompt_len} tokens; this model's context "
                             f"window is {max_model_len} tokens", code="context_length_exceeded",
                             param="messages" if isinstance(self, ChatRequest) else "prompt")
        if limit is None:
            limit = min(default_max, room)
        if limit < 1:
            raise ServeError(400, f"max_tokens must be >= 1, got {limit}", param="max_tokens")
        if limit > room:
            raise ServeError(400, f"max_tokens={limit} plus the prompt's {prompt_len} tokens "
                             f"exceed the context window of {max_model_len} tokens",
                             code="context_length_exceeded", param="max_tokens")
        stop = [self.stop] if isinstance(self.stop, str) else list(self.stop or [])
        if len(stop) > MAX_STOP or any(not s for s in stop):
            raise ServeError(400, f"stop must be up to {MAX_STOP} non-empty strings",
                             param="stop")
        try:
            return SamplingParams(max_tokens=limit, temperature=_or(self.temperature, 1.0),
                                  top_k=self.top_k or 0, top_p=_or(self.top_p, 1.0),
                                  seed=self.seed,
                                  stop=tuple(stop), ignore_eos=self.ignore_eos)
        except DopdError as exc:
            raise ServeError(400, str(exc)) from None


def _or(value: float | None, default: float) -> float:
    return default if value is None else value


class CompletionRequest(_Common):
    """``POST /v1/completions``: one prompt (text or token ids)."""

    prompt: str | list[int] | list[str] | list[list[int]]
    max_tokens: int | None = Field(16, ge=I64_MIN, le=U64_MAX)
    echo: bool | None = False
    logprobs: int | None = Field(None, ge=0, le=20)
    best_of: int | None = Field(None, ge=1, le=128)

    def single_prompt(self) -> str | list[int]:
        p = self.prompt
        if self.echo or self.logprobs is not None or (self.best_of or 1) != 1:
            raise ServeError(400, "echo, logprobs and best_of are not supported")
        if isinstance(p, list) and p and isinstance(p[0], str | list):
            if len(p) != 1:
                raise ServeError(400, "only one prompt per request is supported",
                                 param="prompt")
            p = p[0]
        if not p:
            raise ServeError(400, "the prompt is empty", param="prompt")
        return p  # type: ignore[return-value]


class ContentPart(TypedDict):
    """A part of a message's content (text only). TypedDicts, not models: a body of many
    small messages validates several times faster, and the event loop waits for it."""

    type: Literal["text"]
    text: str


class ChatMessage(TypedDict):
    role: Literal["system", "user", "assistant", "developer", "tool"]
    content: NotRequired[str | list[ContentPart] | None]


def message_text(message: ChatMessage) -> str:
    """The content of ``message`` as one string (parts joined, none: empty)."""
    content = message.get("content")
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    return "".join(part["text"] for part in content)


class ChatRequest(_Common):
    """``POST /v1/chat/completions``."""

    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=I64_MIN, le=U64_MAX)
    logprobs: bool | None = False
    top_logprobs: int | None = Field(None, ge=0, le=20)

    def output_limit(self) -> int | None:
        return self.max_completion_tokens if self.max_completion_tokens is not None \
            else self.max_tokens

    def plain_messages(self) -> list[dict[str, str]]:
        if self.logprobs or self.top_logprobs:
            raise ServeError(400, "logprobs are not supported", param="logprobs")
        return [{"role": "system" if m["role"] == "developer" else m["role"],
                 "content": message_text(m)} for m in self.messages]


def new_id(prefix: str) -> str:
    """``prefix-`` and 24 random hex digits."""
    return f"{prefix}-{os.urandom(12).hex()}"


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


def completion_body(rid: str, model: str, text: str, reason: str | None, prompt_tokens: int,
                    completion_tokens: int, token_ids: list[int] | None) -> dict[str, Any]:
    choice: dict[str, Any] = {"index": 0, "text": text, "logprobs": None,
                              "finish_reason": _reason(reason)}
    if token_ids is not None:
        choice["token_ids"] = token_ids
    return {"id": rid, "object": "text_completion", "created": int(time.time()),
            "model": model, "choices": [choice],
            "usage": usage(prompt_tokens, completion_tokens)}


def chat_body(rid: str, model: str, text: str, reason: str | None, prompt_tokens: int,
              completion_tokens: int, token_ids: list[int] | None) -> dict[str, Any]:
    choice: dict[str, Any] = {"index": 0, "message": {"role": "assistant", "content": text},
                              "logprobs": None, "finish_reason": _reason(reason)}
    if token_ids is not None:
        choice["token_ids"] = token_ids
    return {"id": rid, "object": "chat.completion", "created": int(time.time()),
            "model": model, "choices": [choice],
            "usage": usage(prompt_tokens, completion_tokens)}


def completion_chunk(rid: str, model: str, text: str, reason: str | None,
                     token_ids: list[int] | None = None) -> dict[str, Any]:
    choice: dict[str, Any] = {"index": 0, "text": text, "logprobs": None,
                              "finish_reason": _reason(reason)}
    if token_ids is not None:
        choice["token_ids"] = token_ids
    return {"id": rid, "object": "text_completion", "created": int(time.time()),
            "model": model, "choices": [choice]}


def chat_chunk(rid: str, model: str, delta: dict[str, str], reason: str | None,
               token_ids: list[int] | None = None) -> dict[str, Any]:
    choice: dict[str, Any] = {"index": 0, "delta": delta, "logprobs": None,
                              "finish_reason": _reason(reason)}
    if token_ids is not None:
        choice["token_ids"] = token_ids
    return {"id": rid, "object": "chat.completion.chunk", "created": int(time.time()),
            "model": model, "choices": [choice]}


def _reason(reason: str | None) -> str | None:
    """Engine finish reasons as OpenAI's: length or stop."""
    if reason is None:
        return None
    return "length" if reason == "length" else "stop"


class StreamChunks:
    """The server-sent events of one streamed response, as bytes (``data: {json}\n\n``).

    Every chunk of a stream shares its id, object, created time and model, so the JSON up to the
    choice is built once per request; a chunk then costs one string escape. The JSON is the
    same as :func:`completion_chunk` / :func:`chat_chunk` give (``created`` is fixed per stream).
    """

    __slots__ = ("chat", "created", "head", "model", "obj", "rid")

    def __init__(self, rid: str, model: str, chat: bool) -> None:
        self.rid, self.model, self.chat = rid, model, chat
        self.obj = "chat.completion.chunk" if chat else "text_completion"
        self.created = int(time.time())
        self.head = (f'data: {{"id":{json.dumps(rid)},"object":"{self.obj}","created":'
                     f'{self.created},"model":{json.dumps(model)},"choices":[{{"index":0,')

    def _choice(self, body: str, reason: str | None, token_ids: list[int] | None) -> bytes:
        tail = "" if token_ids is None else f',"token_ids":[{",".join(map(str, token_ids))}]'
        finish = "null" if reason is None else f'"{_reason(reason)}"'
        return (f'{self.head}{body},"logprobs":null,"finish_reason":{finish}{tail}}}]}}\n\n'
                .encode())

    def role(self) -> bytes:
        """The chat stream's first chunk: the assistant role with empty content."""
        return self._choice('"delta":{"role":"assistant","content":""}', None, None)

    def delta(self, text: str, token_ids: list[int] | None = None) -> bytes:
        """New text (and its token ids when asked for)."""
        body = (f'"delta":{{"content":{json.dumps(text)}}}' if self.chat
                else f'"text":{json.dumps(text)}')
        return self._choice(body, None, token_ids)

    def final(self, reason: str | None, with_ids: bool = False) -> bytes:
        """The last chunk: no text, the finish reason."""
        return self._choice('"delta":{}' if self.chat else '"text":""', reason,
                            [] if with_ids else None)

    def usage(self, prompt_tokens: int, completion_tokens: int) -> bytes:
        """The usage chunk (``stream_options.include_usage``): no choices."""
        body = {"id": self.rid, "object": self.obj, "created": self.created,
                "model": self.model, "choices": [],
                "usage": usage(prompt_tokens, completion_tokens)}
        return sse(body)


def sse(obj: Any) -> bytes:
    """One server-sent event holding ``obj`` as compact JSON."""
    return b"data: " + json.dumps(obj, separators=(",", ":")).encode() + b"\n\n"
