"""Prompt synthesis for the load generator: text that a server tokenizes to a target length.

A synthesizer turns ``(target tokens, rng)`` into prompt text. Three kinds, chosen by a spec
(:func:`make_synth`):

- ``byte`` / ``byte:special=K``: a byte tokenizer (one ASCII character = one token) that adds
  ``K`` special tokens (default 0). ``dopd-tiny`` is ``byte:special=1`` (its tokenizer prepends
  BOS), so its server reports exactly the target prompt length.
- ``chars:C``: any other server without its tokenizer at hand: ``round(C * n)`` characters of
  English words (C = characters per token, default 4). Approximate.
- ``PATH``: a ``tokenizer.json`` file or a Hugging Face folder holding one, read with the
  ``tokenizers`` library; the text is searched so that it encodes (special tokens included) to
  exactly the target, which succeeds for all but pathological vocabularies (the closest shorter
  text is used otherwise).

Text is cut from a seeded corpus of common English words at a random offset per request, so two
prompts share no leading tokens (no accidental prefix-cache hits) and the same seed gives the same
prompts. ``auto`` picks ``dopd-tiny`` for a model of that name and ``chars:4`` otherwise.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from dopd.errors import DopdError, require
from dopd.workload import Workload

_WORD_TEXT = """the of and to in is was that for it as with be on not he by are this at from his but
    have an they which one you were all her she there would their we him been has when who will
    more no if out so said what up its about into than them can only other new some could time
    these two may then do first any my now such like our over man me even most made after also
    did many before must through back years where much your way well down should because each
    just those people how too little state good very make world still own see men work long get
    here between both life being under never day same another know while last might us great old
    year off come since against go came right used take three place himself around however home
    small found thought went say part once general high upon school every does got united left
    number course war until always away something fact though water less public put think almost
    hand enough far took head yet government system better set told nothing night end why called
    didn find going look asked later point knew city next program business give group toward
    young days let room president side social present given several order national possible rather
    second face per among form important often things looked early white case john become large
    big need four within felt along children saw best church ever least power development light
    thing seemed family interest want members mind country area others done turned although open
    god service problem certain kind different thus began door help means sense whole matter"""

WORDS: tuple[str, ...] = tuple(_WORD_TEXT.split())
"""Common English words: most tokenizers encode each (with its leading space) as one token."""

DEFAULT_CHARS_PER_TOKEN = 4.0
_CORPUS_SPAN = 1 << 20
_CHUNK_WORDS = 1 << 14
_TOKEN_WORD = re.compile(r"^[\u0120\u2581 ]([a-z]{3,12})$")


class PromptSynth(Protocol):
    """Makes prompt text of a target token length; ``spec`` names it in reports."""

    spec: str

    def make(self, tokens: int, rng: np.random.Generator) -> str:
        """Prompt text for ``tokens`` tokens (>= 1) drawn with ``rng``; never empty, so a
        target below the tokenizer's special tokens + 1 gets one token (character) of text."""
        ...


@dataclass
class _Corpus:
    """A seeded, endless run of words whose content at any position never changes.

    :meth:`cut` returns ``chars`` characters from an offset drawn uniformly from the first
    :data:`_CORPUS_SPAN` characters, whatever was cut before.
    """

    words: tuple[str, ...]
    seed: int = 0
    text: str = ""
    chunks: int = 0

    def _extend_to(self, chars: int) -> None:
        parts = [self.text]
        size = len(self.text)
        while size < chars:
            rng = np.random.default_rng([self.seed, self.chunks])
            picks = rng.integers(0, len(self.words), size=_CHUNK_WORDS).tolist()
            part = " ".join(self.words[i] for i in picks) + " "
            parts.append(part)
            size += len(part)
            self.chunks += 1
        self.text = "".join(parts)

    def cut(self, chars: int, rng: np.random.Generator) -> str:
        start = int(rng.integers(0, _CORPUS_SPAN))
        self._extend_to(start + chars)
        return self.text[start : start + chars]


@dataclass
class ByteSynth:
    """One ASCII character per token, plus ``special`` tokens the server's tokenizer adds."""

    special: int = 0
    spec: str = "byte"
    _corpus: _Corpus = field(default_factory=lambda: _Corpus(WORDS))

    def make(self, tokens: int, rng: np.random.Generator) -> str:
        require(tokens >= 1, f"prompt length must be >= 1 token, got {tokens}")
        return self._corpus.cut(max(tokens - self.special, 1), rng)


@dataclass
class CharsSynth:
    """``round(chars_per_token * tokens)`` characters of English words (approximate lengths)."""

    chars_per_token: float = DEFAULT_CHARS_PER_TOKEN
    spec: str = "chars:4"
    _corpus: _Corpus = field(default_factory=lambda: _Corpus(WORDS))

    def make(self, tokens: int, rng: np.random.Generator) -> str:
        require(tokens >= 1, f"prompt length must be >= 1 token, got {tokens}")
        return self._corpus.cut(max(round(self.chars_per_token * tokens), 1), rng)


class TokenizerSynth:
    """Exact lengths for a ``tokenizers`` tokenizer: searches the cut of the corpus whose
    encoding (special tokens included) has the target length.

    The corpus uses the vocabulary's own whole-word tokens when it has enough of them (so a word
    is one token), else :data:`WORDS`.
    """

    def __init__(self, backend: Any, spec: str) -> None:
        self.backend = backend
        self.spec = spec
        vocab_words = sorted(
            {m.group(1) for tok in backend.get_vocab() if (m := _TOKEN_WORD.match(tok))}
        )
        self._corpus = _Corpus(tuple(vocab_words) if len(vocab_words) >= 200 else WORDS)
        sample = self._corpus.cut(4000, np.random.default_rng(0))
        self._specials = self.count("")
        self._chars_per_token = len(sample) / max(self.count(sample) - self._specials, 1)

    def count(self, text: str) -> int:
        """Tokens of ``text`` as a server encodes a prompt (special tokens included)."""
        return len(self.backend.encode(text, add_special_tokens=True).ids)

    def make(self, tokens: int, rng: np.random.Generator) -> str:
        require(tokens >= 1, f"prompt length must be >= 1 token, got {tokens}")
        body = max(tokens - self._specials, 1)
        tokens = body + self._specials
        guess = max(int(body * self._chars_per_token), 1)
        text = self._corpus.cut(int(guess * 1.2) + 64, rng)
        encoding = self.backend.encode(text, add_special_tokens=False)
        while len(encoding.ids) < body:
            text = text + " " + self._corpus.cut(len(text), rng)
            encoding = self.backend.encode(text, add_special_tokens=False)
        # Cut where the body's last token ends; that prefix nearly always encodes to exactly
        # the target. Otherwise: count(text[:n]) is non-decreasing in n, so bracket the
        # smallest n reaching the target by galloping from that cut, then bisect.
        probe = encoding.offsets[body - 1][1]
        reached = self.count(text[:probe])
        if reached == tokens:
            return text[:probe]
        step = 16
        if reached > tokens:
            hi, lo = probe, max(probe - step, 0)
            while lo > 0 and self.count(text[:lo]) >= tokens:
                hi, step = lo, 2 * step
                lo = max(hi - step, 0)
        else:
            lo, hi = probe, min(probe + step, len(text))
            while self.count(text[:hi]) < tokens:
                lo, step = hi, 2 * step
                hi = min(lo + step, len(text))
        while lo + 1 < hi:
            mid = (lo + hi) // 2
            if self.count(text[:mid]) >= tokens:
                hi = mid
            else:
                lo = mid
        return text[:hi] if self.count(text[:hi]) == tokens else text[:lo]


def make_synth(spec: str, model: str | None = None) -> PromptSynth:
    """The synthesizer ``spec`` names (see the module doc); ``model`` resolves ``auto``.

    Raises :class:`DopdError` for an unknown spec, a bad number or an unreadable tokenizer.
    """
    text = spec.strip()
    if text == "auto":
        text = "dopd-tiny" if model == "dopd-tiny" else f"chars:{DEFAULT_CHARS_PER_TOKEN:g}"
    if text == "dopd-tiny":
        return ByteSynth(special=1, spec="dopd-tiny")
    kind, _, arg = text.partition(":")
    if kind == "byte":
        special = _number(arg.removeprefix("special="), "byte special tokens", 0) if arg else 0
        require(special == int(special) and special >= 0,
                f"byte special tokens must be a whole number >= 0, got {arg!r}")
        return ByteSynth(special=int(special), spec=text)
    if kind == "chars":
        cpt = _number(arg, "chars per token", DEFAULT_CHARS_PER_TOKEN)
        require(cpt > 0 and math.isfinite(cpt), f"chars per token must be > 0, got {arg!r}")
        return CharsSynth(chars_per_token=cpt, spec=text)
    path = Path(text)
    if path.is_dir():
        path = path / "tokenizer.json"
    require(path.is_file(), f"tokenizer {spec!r}: not auto, dopd-tiny, byte, chars:C or an "
            "existing tokenizer.json (or folder with one)")
    import tokenizers

    try:
        backend = tokenizers.Tokenizer.from_file(str(path))
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DopdError(f"cannot read tokenizer {path}: {first}") from None
    return TokenizerSynth(backend, spec=str(path))


def _number(text: str, what: str, default: float) -> float:
    if not text:
        return default
    try:
        return float(text)
    except ValueError:
        raise DopdError(f"{what}: not a number: {text!r}") from None


def synthesize_prompts(synth: PromptSynth, workload: Workload, seed: int) -> list[str]:
    """One prompt per request of ``workload`` at its ``prompt_tokens``; request ``i`` draws from
    ``numpy.random.default_rng([seed, i])``, so prompts do not depend on the other requests."""
    return [
        synth.make(int(n), np.random.default_rng([seed, i]))
        for i, n in enumerate(workload.prompt_tokens.tolist())
    ]
