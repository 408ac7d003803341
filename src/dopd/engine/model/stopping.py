"""When a request stops: max tokens, EOS / stop token ids, and stop strings on the decoded tail.

:func:`check_stop` is called after each new token with the request's generated ids so far. Stop
strings are matched on the detokenised tail only (a window of recent tokens), so the cost per step
does not grow with the output length. :func:`truncate_at_stop` cuts the final text before the stop
string (OpenAI semantics: the stop string is not returned).
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass

from dopd.engine.model.sampler import SamplingParams
from dopd.engine.model.tokenizer import Tokenizer
from dopd.engine.plan import FinishReason
from dopd.errors import require


@dataclass(frozen=True, slots=True)
class StopHit:
    """A finished request: the reason (``STOP`` or ``LENGTH`` of the engine's FinishReason) and
    what matched (token id or stop string), if anything."""

    reason: FinishReason
    token_id: int | None = None
    stop_string: str | None = None


def check_stop(
    output_ids: Sequence[int],
    params: SamplingParams,
    eos_token_ids: Collection[int] = (),
    tokenizer: Tokenizer | None = None,
) -> StopHit | None:
    """The stop condition met by the last token of ``output_ids``, or None to continue.

    Order: EOS (unless ``params.ignore_eos``) and ``params.stop_token_ids``, then stop strings,
    then ``max_tokens``. Stop strings need ``tokenizer`` (DopdError otherwise).
    """
    if not output_ids:
        return None
    last = output_ids[-1]
    if (not params.ignore_eos and last in eos_token_ids) or last in params.stop_token_ids:
        return StopHit(FinishReason.STOP, token_id=last)
    if params.stop:
        require(tokenizer is not None, "stop strings need a tokenizer")
        assert tokenizer is not None
        window = max(len(s.encode("utf-8")) for s in params.stop) + 1
        tail = tokenizer.decode(output_ids[-window:])
        for s in params.stop:
            if s in tail:
                return StopHit(FinishReason.STOP, stop_string=s)
    if len(output_ids) >= params.max_tokens:
        return StopHit(FinishReason.LENGTH)
    return None


def truncate_at_stop(text: str, stop: Sequence[str]) -> str:
    """``text`` up to (excluding) the earliest occurrence of any stop string; unchanged if none."""
    cut = min((i for i in (text.find(s) for s in stop) if i >= 0), default=-1)
    return text if cut < 0 else text[:cut]
