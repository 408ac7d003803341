"""Token sampling: greedy, temperature, top-k and top-p, with one random generator per request.

Every sampled row draws exactly one uniform number from its own request's ``torch.Generator``
(on CPU) and picks the token by inverse CDF, so a request's tokens depend on its seed and logits
only, never on which other requests share the batch. Filtering and the CDF are vectorised over the
batch.

Every valid parameter gives a token of the vocabulary, however extreme: logits are shifted by
their row maximum before the temperature divides them (so a temperature of 1e-45 is argmax with
ties sampled, not inf - inf), the temperature is floored at the smallest normal float32, non-finite
logits are made finite, and the top-1 token always survives top-k and top-p (``top_p`` of 1e-46
keeps exactly that token).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from dopd.errors import require

_TINY = torch.finfo(torch.float32).tiny


@dataclass(frozen=True, slots=True)
class SamplingParams:
    """How one request picks tokens and when it stops.

    ``temperature`` 0 means greedy. ``top_k`` <= 0 and ``top_p`` = 1 disable those filters (top-k
    is applied first, then top-p on the renormalised distribution, as in transformers). ``seed``
    seeds the request's generator (see :func:`make_generator`). Generation stops after
    ``max_tokens`` tokens, on an EOS token (unless ``ignore_eos``), on a token of
    ``stop_token_ids``, or when the text ends with one of the ``stop`` strings.
    """

    max_tokens: int = 16
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    seed: int | None = None
    stop_token_ids: tuple[int, ...] = ()
    stop: tuple[str, ...] = ()
    ignore_eos: bool = False

    def __post_init__(self) -> None:
        require(
            isinstance(self.max_tokens, int) and self.max_tokens >= 1,
            f"max_tokens must be an int >= 1, got {self.max_tokens!r}",
        )
        require(
            math.isfinite(self.temperature) and self.temperature >= 0,
            f"temperature must be >= 0, got {self.temperature}",
        )
        require(isinstance(self.top_k, int), f"top_k must be an int, got {self.top_k!r}")
        require(0 < self.top_p <= 1, f"top_p must be in (0, 1], got {self.top_p}")
        require(
            all(isinstance(s, str) and s for s in self.stop),
            "stop strings must be non-empty strings",
        )
        require(
            all(isinstance(t, int) and t >= 0 for t in self.stop_token_ids),
            "stop token ids must be ints >= 0",
        )

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


def make_generator(seed: int) -> torch.Generator:
    """A CPU generator for one request; the same seed gives the same draws on every device."""
    require(isinstance(seed, int), f"seed must be an int, got {seed!r}")
    return torch.Generator(device="cpu").manual_seed(seed & 0xFFFF_FFFF_FFFF_FFFF)


class Sampler:
    """Picks one token per row of a logits batch (stateless; per-request state is the generator)."""

    def sample(
        self,
        logits: torch.Tensor,
        params: Sequence[SamplingParams],
        generators: Sequence[torch.Generator | None],
    ) -> list[int]:
        """Token ids for ``logits`` [B, vocab], one per row.

        ``generators[i]`` is request i's generator (advanced by one draw when row i is sampled);
        it may be None only for greedy rows. Raises DopdError on mismatched lengths or a missing
        generator.
        """
        require(logits.dim() == 2, f"logits must be [batch, vocab], got {tuple(logits.shape)}")
        batch, vocab = logits.shape
        require(
            len(params) == batch and len(generators) == batch,
            f"{batch} logits rows but {len(params)} params and {len(generators)} generators",
        )
        tokens = logits.argmax(dim=-1)
        rows = [i for i, p in enumerate(params) if not p.greedy]
        if not rows:
            return tokens.tolist()
        draws = []
        for i in rows:
            gen = generators[i]
            require(gen is not None, f"row {i} samples (temperature > 0) but has no generator")
            draws.append(float(torch.rand(1, generator=gen)))
        device = logits.device
        index = torch.tensor(rows, dtype=torch.int64, device=device)
        temps = torch.tensor(
            [params[i].temperature for i in rows], dtype=torch.float32, device=device
        ).clamp_(min=_TINY)
        x = _finite(logits.index_select(0, index).float())
        x = (x - x.amax(dim=-1, keepdim=True)) / temps[:, None]
        u = torch.tensor(draws, dtype=torch.float32, device=device)
        top_k = [params[i].top_k if 0 < params[i].top_k < vocab else vocab for i in rows]
        top_p = [params[i].top_p for i in rows]
        # filtered rows pick in sorted order, the others in vocabulary order: each row's token
        # must not depend on whether a filtered request shares its batch
        filtered = [j for j in range(len(rows)) if top_k[j] < vocab or top_p[j] < 1.0]
        if not filtered:
            picked = _inverse_cdf(torch.softmax(x, dim=-1), u)
        elif len(filtered) == len(rows):
            picked = _sample_filtered(x, u, top_k, top_p)
        else:
            plain = [j for j in range(len(rows)) if top_k[j] == vocab and top_p[j] >= 1.0]
            fi = torch.tensor(filtered, dtype=torch.int64, device=device)
            pl = torch.tensor(plain, dtype=torch.int64, device=device)
            picked = torch.empty(len(rows), dtype=torch.int64, device=device)
            picked[fi] = _sample_filtered(x.index_select(0, fi), u.index_select(0, fi),
                                          [top_k[j] for j in filtered],
                                          [top_p[j] for j in filtered])
            picked[pl] = _inverse_cdf(torch.softmax(x.index_select(0, pl), dim=-1),
                                      u.index_select(0, pl))
        tokens[index] = picked
        return tokens.tolist()


def _inverse_cdf(probs: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """Per row, the i with cdf[i-1] <= u * total < cdf[i] (zero-probability entries never win)."""
    cdf = probs.cumsum(dim=-1)
    target = (u * cdf[:, -1])[:, None]
    pick = torch.searchsorted(cdf, target, right=True).squeeze(1)
    return pick.clamp_(max=probs.shape[-1] - 1)


def _sample_filtered(
    x: torch.Tensor, u: torch.Tensor, top_k: list[int], top_p: list[float]
) -> torch.Tensor:
    device = x.device
    sorted_logits, order = x.sort(dim=-1, descending=True)
    rank = torch.arange(x.shape[-1], device=device)
    k = torch.tensor(top_k, device=device)
    sorted_logits = sorted_logits.masked_fill(rank[None, :] >= k[:, None], float("-inf"))
    probs = torch.softmax(sorted_logits, dim=-1)
    p = torch.tensor(top_p, dtype=torch.float32, device=device)
    before = probs.cumsum(dim=-1) - probs
    # the top token stays whatever p is (a p below float32's range rounds to 0)
    probs = probs.masked_fill((before >= p[:, None]) & (rank[None, :] > 0), 0.0)
    kept = ((probs > 0).sum(dim=-1) - 1).clamp_(min=0)
    pick = torch.minimum(_inverse_cdf(probs, u), kept)
    return order.gather(1, pick[:, None]).squeeze(1)


def _finite(x: torch.Tensor) -> torch.Tensor:
    """``x`` with NaN and -inf as the lowest finite float, +inf as the highest."""
    big = torch.finfo(x.dtype).max
    return torch.nan_to_num(x, nan=-big, posinf=big, neginf=-big)
