"""PromptEncoder: short prompts inline, long ones off the event loop (which keeps running), a
character bound before any tokenization, and a bound on waiting jobs (429)."""

from __future__ import annotations

import asyncio
import time

import pytest

from dopd.engine.model import tiny_tokenizer
from dopd.serve.errors import ServeError
from dopd.serve.prompts import INLINE_CHARS, PromptEncoder


def encoder(window: int = 2048, **kw: int) -> PromptEncoder:
    return PromptEncoder(tiny_tokenizer(), lambda: window, **kw)


def test_ids_match_the_tokenizer_inline_and_off_loop() -> None:
    tok = tiny_tokenizer()
    enc = encoder(window=10**6)
    for text in ("h\u00e9llo", "ab \u4e2d" * (INLINE_CHARS // 2)):
        assert asyncio.run(enc.text(text)) == tok.encode(text)
        msgs = [{"role": "user", "content": text}]
        assert asyncio.run(enc.chat(msgs)) == tok.encode_chat(msgs)


def test_prompt_longer_than_any_window_is_refused_before_tokenizing() -> None:
    enc = encoder(window=100)
    enc.tokenizer = None  # type: ignore[assignment]  # any tokenization would raise
    with pytest.raises(ServeError) as err:
        asyncio.run(enc.text("x" * (100 * 13 + 1)))
    assert err.value.status == 400 and err.value.code == "context_length_exceeded"


def test_event_loop_runs_while_a_long_prompt_is_tokenized() -> None:
    enc = encoder(window=10**8)
    enc._chars_per_token = None  # as for a tokenizer without a bound: the prompt is encoded
    text = "hello world " * 100_000  # 1.2 MB: about a second of tokenization here

    async def main() -> tuple[int, float]:
        job = asyncio.create_task(enc.text(text))
        worst, last = 0.0, time.perf_counter()
        while not job.done():
            await asyncio.sleep(0.005)
            now = time.perf_counter()
            worst, last = max(worst, now - last), now
        return len(await job), worst

    n, worst = asyncio.run(main())
    assert n == len(text.encode()) + 1
    assert worst < 0.25, f"the event loop stalled {worst:.2f} s"


def test_too_many_long_prompts_waiting_is_429() -> None:
    enc = encoder(window=10**8, threads=1, max_pending=2)
    enc._chars_per_token = None

    async def main() -> list[object]:
        texts = ["z" * 400_000] * 4
        return await asyncio.gather(*(enc.text(t) for t in texts), return_exceptions=True)

    results = asyncio.run(main())
    refused = [r for r in results if isinstance(r, ServeError)]
    assert len(refused) == 2 and all(r.status == 429 for r in refused)
    assert sum(isinstance(r, list) for r in results) == 2
