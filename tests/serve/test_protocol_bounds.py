"""Every sampling field's range in the protocol layer: out of range is a 400 naming the field,
never a 500; null means the default; unsupported non-default values are refused by name."""

from __future__ import annotations

import json
import math

import pytest

from dopd.serve.completions import parse
from dopd.serve.errors import ServeError
from dopd.serve.protocol import ChatRequest, CompletionRequest

BAD = [
    ("seed", 2**64), ("seed", -(2**63) - 1), ("seed", 10**40), ("top_k", 2**64),
    ("top_k", -(2**63)), ("top_k", -2), ("top_k", 2**31), ("temperature", -0.1),
    ("temperature", 2.5), ("temperature", math.nan), ("temperature", math.inf),
    ("top_p", 0.0), ("top_p", -1e-9), ("top_p", 1.5), ("top_p", math.nan), ("n", 0),
    ("n", 2**70), ("max_tokens", 2**64), ("max_tokens", -(2**64)), ("logprobs", 21),
    ("logprobs", -1), ("best_of", 0), ("presence_penalty", 2.5), ("frequency_penalty", -3.0),
    ("repetition_penalty", 0.0), ("min_p", 1.5), ("min_p", math.nan), ("seed", "x"),
    ("top_k", 1.5), ("stop", 5), ("stream", {"a": 1}),
]
UNSUPPORTED = [("n", 2), ("presence_penalty", 0.5), ("frequency_penalty", -1.0),
               ("repetition_penalty", 1.2), ("min_p", 0.1), ("logit_bias", {"5": 1.0})]


def completion(**fields: object) -> bytes:
    return json.dumps({"model": "m", "prompt": "x", **fields}).encode()


def error_of(raw: bytes, model: type = CompletionRequest) -> ServeError:
    with pytest.raises(ServeError) as err:
        parse(raw, model).sampling(3, 100, 16)
    return err.value


@pytest.mark.parametrize(("name", "value"), BAD)
def test_out_of_range_is_400_naming_the_field(name: str, value: object) -> None:
    err = error_of(completion(**{name: value}))
    assert err.status == 400 and name in err.message


@pytest.mark.parametrize(("name", "value"), UNSUPPORTED)
def test_unsupported_values_are_refused_by_name(name: str, value: object) -> None:
    err = error_of(completion(**{name: value}))
    assert err.status == 400 and err.param == name


def test_extremes_in_range_and_nulls_are_served() -> None:
    for fields in ({"seed": 2**64 - 1, "top_k": 2**31 - 1}, {"seed": -(2**63), "top_k": -1},
                   {"top_p": 1e-46, "temperature": 1e-45}, {"top_p": 5e-324},
                   {"temperature": None, "top_p": None, "top_k": None, "n": None,
                    "presence_penalty": None, "stream": None, "logprobs": None},
                   {"presence_penalty": 0, "frequency_penalty": 0.0, "repetition_penalty": 1,
                    "min_p": 0, "logit_bias": {}}):
        params = parse(completion(**fields), CompletionRequest).sampling(3, 100, 16)
        assert params.max_tokens == 16
    p = parse(completion(temperature=None, top_k=None), CompletionRequest).sampling(3, 100, 16)
    assert (p.temperature, p.top_k, p.top_p) == (1.0, 0, 1.0)


def test_chat_bounds() -> None:
    base = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
    err = error_of(json.dumps({**base, "max_completion_tokens": 2**65}).encode(), ChatRequest)
    assert err.status == 400 and "max_completion_tokens" in err.message
    with pytest.raises(ServeError, match="logprobs"):
        parse(json.dumps({**base, "top_logprobs": 3}).encode(), ChatRequest).plain_messages()
    err = error_of(json.dumps({**base, "top_logprobs": 99}).encode(), ChatRequest)
    assert "top_logprobs" in err.message
