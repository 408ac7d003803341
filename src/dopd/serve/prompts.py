"""Prompts to token ids for the front end without stalling its event loop (:class:`PromptEncoder`).

A short prompt is encoded inline (a thread hop would cost more than the encoding). A long one is
encoded in a small thread pool by the tokenizer's GIL-releasing call, so other requests go on
meanwhile; at most ``max_pending`` such jobs wait or run at once, beyond which the request gets a
429 with ``Retry-After``. Before any encoding, a prompt whose characters already prove it longer
than the context window is refused (when the tokenizer gives a characters-per-token bound, see
:meth:`~dopd.engine.model.Tokenizer.max_chars_per_token`), so an oversized prompt costs no
tokenization at all.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from dopd.engine.model import Tokenizer
from dopd.errors import DopdError
from dopd.serve.errors import ServeError

INLINE_CHARS = 4096
"""Prompts up to this many characters (chat: message characters) are encoded inline."""
MESSAGE_CHARS = 32
"""What a chat message counts for besides its content (its share of the template's text)."""


class PromptEncoder:
    """Encodes completion prompts and chat messages for a server whose context window is
    ``max_model_len()`` tokens (asked lazily: it is known once the workers are up)."""

    def __init__(self, tokenizer: Tokenizer, max_model_len: Callable[[], int], *,
                 threads: int = 2, max_pending: int = 16) -> None:
        self.tokenizer = tokenizer
        self.max_model_len = max_model_len
        self.max_pending = max_pending
        self.pending = 0
        self._pool = ThreadPoolExecutor(threads, thread_name_prefix="dopd-tokenize")
        self._chars_per_token = tokenizer.max_chars_per_token()

    async def text(self, prompt: str) -> list[int]:
        """Token ids of a completion prompt (special tokens added); ServeError 400 when it
        cannot fit the context window, 429 when too many long prompts are being encoded."""
        self._check_chars(len(prompt), "prompt")
        if len(prompt) <= INLINE_CHARS:
            return self.tokenizer.encode(prompt)
        return await self._off_loop(self.tokenizer.encode_unlocked, prompt)

    async def chat(self, messages: Sequence[Mapping[str, Any]]) -> list[int]:
        """Token ids of the rendered chat; errors as :meth:`text` (a template failure is 400)."""
        # the template adds text per message: many empty messages are a long render too
        size = sum(len(m["content"]) + MESSAGE_CHARS for m in messages)
        try:
            if size <= INLINE_CHARS:
                return self.tokenizer.encode_chat(messages)
            return await self._off_loop(self._chat_checked, messages)
        except DopdError as exc:
            raise ServeError(400, str(exc), param="messages") from None

    def _chat_checked(self, messages: Sequence[Mapping[str, Any]]) -> list[int]:
        text = self.tokenizer.apply_chat_template(messages)
        self._check_chars(len(text), "messages")
        return self.tokenizer.encode_unlocked(text, add_special_tokens=False)

    def _check_chars(self, chars: int, param: str) -> None:
        if self._chars_per_token is None:
            return
        window = self.max_model_len()
        if chars > self._chars_per_token * window:
            raise ServeError(400, f"the prompt has {chars} characters, more than the "
                             f"{window} tokens of this model's context window can hold",
                             code="context_length_exceeded", param=param)

    async def _off_loop(self, fn: Callable[[Any], list[int]], arg: Any) -> list[int]:
        if self.pending >= self.max_pending:
            raise ServeError(429, f"{self.pending} long prompts are being tokenized; retry "
                             "shortly", code="tokenizer_busy")
        self.pending += 1
        try:
            return await asyncio.get_running_loop().run_in_executor(self._pool, fn, arg)
        finally:
            self.pending -= 1
