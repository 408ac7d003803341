"""Tokenizers: a thin wrapper over the ``tokenizers`` library plus the chat template.

:class:`Tokenizer` reads ``tokenizer.json`` (and ``tokenizer_config.json`` / ``chat_template.jinja``
when present) from a Hugging Face folder and renders chat templates with a sandboxed Jinja
environment as transformers does. :func:`byte_level_tokenizer` builds the byte tokenizer of
``dopd-tiny``: ids 0-255 are the bytes, special tokens follow.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from datetime import datetime
from functools import lru_cache
from pathlib import Path
from typing import Any

import tokenizers
from tokenizers import decoders, models, pre_tokenizers, processors

from dopd.errors import DopdError, require

Message = Mapping[str, Any]


class Tokenizer:
    """Text <-> token ids, special tokens and chat formatting of one model.

    ``bos_token``/``eos_token`` are token strings of the backend vocabulary (or None);
    ``chat_template`` is a Jinja template in the Hugging Face convention (or None).
    """

    def __init__(
        self,
        backend: tokenizers.Tokenizer,
        *,
        bos_token: str | None = None,
        eos_token: str | None = None,
        pad_token: str | None = None,
        chat_template: str | None = None,
    ) -> None:
        self.backend = backend
        self.bos_token = bos_token
        self.eos_token = eos_token
        self.pad_token = pad_token
        self.chat_template = chat_template
        self.bos_id = self._id(bos_token)
        self.eos_id = self._id(eos_token)
        self.pad_id = self._id(pad_token)

    def _id(self, token: str | None) -> int | None:
        if token is None:
            return None
        tid = self.backend.token_to_id(token)
        require(tid is not None, f"special token {token!r} is not in the tokenizer vocabulary")
        return tid

    @classmethod
    def from_folder(cls, folder: str | Path) -> Tokenizer:
        """Load ``tokenizer.json`` and the optional ``tokenizer_config.json`` of an HF folder."""
        folder = Path(folder)
        path = folder / "tokenizer.json"
        require(path.is_file(), f"{folder} has no tokenizer.json")
        try:
            backend = tokenizers.Tokenizer.from_file(str(path))
        except Exception as exc:
            raise DopdError(f"cannot read {path}: {str(exc).splitlines()[0]}") from None
        cfg: dict[str, Any] = {}
        cfg_path = folder / "tokenizer_config.json"
        if cfg_path.is_file():
            try:
                cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
            except json.JSONDecodeError as exc:
                raise DopdError(f"{cfg_path} is not valid JSON: {exc.msg}") from None
        template = _pick_template(cfg.get("chat_template"))
        jinja_path = folder / "chat_template.jinja"
        if template is None and jinja_path.is_file():
            template = jinja_path.read_text(encoding="utf-8")
        return cls(
            backend,
            bos_token=_token_text(cfg.get("bos_token")),
            eos_token=_token_text(cfg.get("eos_token")),
            pad_token=_token_text(cfg.get("pad_token")),
            chat_template=template,
        )

    def save(self, folder: str | Path) -> None:
        """Write ``tokenizer.json`` and ``tokenizer_config.json`` into ``folder``."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        self.backend.save(str(folder / "tokenizer.json"))
        cfg: dict[str, Any] = {
            "tokenizer_class": "PreTrainedTokenizerFast",
            "bos_token": self.bos_token,
            "eos_token": self.eos_token,
            "pad_token": self.pad_token,
            "clean_up_tokenization_spaces": False,
        }
        if self.chat_template is not None:
            cfg["chat_template"] = self.chat_template
        (folder / "tokenizer_config.json").write_text(json.dumps(cfg, indent=2), encoding="utf-8")

    @property
    def vocab_size(self) -> int:
        """Number of ids, added tokens included."""
        return self.backend.get_vocab_size(with_added_tokens=True)

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        """Token ids of ``text``; ``add_special_tokens`` applies the post-processor (e.g. BOS)."""
        return self.backend.encode(text, add_special_tokens=add_special_tokens).ids

    def encode_unlocked(self, text: str, add_special_tokens: bool = True) -> list[int]:
        """:meth:`encode`, releasing the GIL while the backend works (its batch call does), so
        other Python threads run meanwhile; for long texts encoded off the event loop."""
        return self.backend.encode_batch([text], add_special_tokens=add_special_tokens)[0].ids

    def encode_chat_unlocked(self, messages: Sequence[Message]) -> list[int]:
        """:meth:`encode_chat` through :meth:`encode_unlocked`."""
        return self.encode_unlocked(self.apply_chat_template(messages), add_special_tokens=False)

    def max_chars_per_token(self) -> int | None:
        """An upper bound on the characters of text one token can stand for, or None when
        this tokenizer has none that is cheap to know (a normalizer may expand text; an unknown
        token may swallow a whole word). With it, a text longer than ``bound * n`` characters
        has more than ``n`` tokens, known before encoding it."""
        model = self.backend.model
        if self.backend.normalizer is not None or not isinstance(model, models.BPE):
            return None
        if model.unk_token is not None and model.fuse_unk and not model.byte_fallback:
            return None
        return max(map(len, self.backend.get_vocab(with_added_tokens=True)), default=1)

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str:
        """Text of ``ids``; incomplete UTF-8 sequences decode to U+FFFD."""
        return self.backend.decode(list(ids), skip_special_tokens=skip_special_tokens)

    def apply_chat_template(
        self, messages: Sequence[Message], add_generation_prompt: bool = True, **extra: Any
    ) -> str:
        """Render ``messages`` (dicts with ``role`` and ``content``) with the chat template."""
        require(self.chat_template is not None, "this tokenizer has no chat template")
        require(
            all(isinstance(m, Mapping) and "role" in m for m in messages),
            "chat messages must be mappings with a 'role'",
        )
        assert self.chat_template is not None
        try:
            return _compile(self.chat_template).render(
                messages=list(messages),
                add_generation_prompt=add_generation_prompt,
                bos_token=self.bos_token or "",
                eos_token=self.eos_token or "",
                **extra,
            )
        except DopdError:
            raise
        except Exception as exc:
            raise DopdError(f"chat template failed: {_first_line(exc)}") from None

    def encode_chat(
        self, messages: Sequence[Message], add_generation_prompt: bool = True
    ) -> list[int]:
        """Token ids of the rendered chat; special tokens come from the template text only."""
        return self.encode(
            self.apply_chat_template(messages, add_generation_prompt), add_special_tokens=False
        )


def _first_line(exc: Exception) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _token_text(value: Any) -> str | None:
    if isinstance(value, Mapping):
        value = value.get("content")
    return value if isinstance(value, str) else None


def _pick_template(value: Any) -> str | None:
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        named = {t.get("name"): t.get("template") for t in value if isinstance(t, Mapping)}
        chosen = named.get("default")
        return chosen if isinstance(chosen, str) else None
    return None


def _raise_exception(message: str) -> None:
    raise DopdError(f"chat template: {message}")


@lru_cache(maxsize=16)
def _compile(template: str) -> Any:
    from jinja2.ext import loopcontrols
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    env = ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols]
    )
    env.filters["tojson"] = lambda x, indent=None, ensure_ascii=False: json.dumps(
        x, indent=indent, ensure_ascii=ensure_ascii
    )
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    try:
        return env.from_string(template)
    except Exception as exc:
        raise DopdError(f"chat template does not compile: {str(exc).splitlines()[0]}") from None


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible map from the 256 byte values to printable characters."""
    printable = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1),
    ]
    chars = list(printable)
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + extra)
            extra += 1
    return {b: chr(c) for b, c in zip(printable, chars, strict=True)}


def byte_level_tokenizer(
    special_tokens: Sequence[str], bos_token: str | None = None
) -> tokenizers.Tokenizer:
    """A ``tokenizers`` tokenizer whose ids 0-255 are the bytes of UTF-8 text.

    ``special_tokens`` get ids 256, 257, ... in order. With ``bos_token`` (one of them) encoding
    with special tokens prepends it.
    """
    mapping = bytes_to_unicode()
    vocab = {mapping[b]: b for b in range(256)}
    tok = tokenizers.Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(list(special_tokens))
    if bos_token is not None:
        bos_id = tok.token_to_id(bos_token)
        require(bos_id is not None, f"bos token {bos_token!r} is not among the special tokens")
        tok.post_processor = processors.TemplateProcessing(
            single=f"{bos_token} $A",
            pair=f"{bos_token} $A {bos_token} $B",
            special_tokens=[(bos_token, bos_id)],
        )
    return tok
