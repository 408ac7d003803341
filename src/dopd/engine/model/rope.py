"""Rotary position embeddings: inverse frequencies of each rope type and per-token cos/sin.

The formulas follow transformers' ``modeling_rope_utils`` so logits match it; the rotation is the
"rotate half" convention of HF Llama checkpoints. cos/sin tables are computed in float32 and cast to
the activation dtype, as transformers does.
"""

from __future__ import annotations

import math

import torch

from dopd.engine.model.model_config import ModelConfig, RopeConfig


def base_inv_freq(theta: float, dim: int) -> torch.Tensor:
    """Unscaled inverse frequencies ``theta ** (-2i/dim)``, float32 of length dim/2."""
    return 1.0 / (theta ** (torch.arange(0, dim, 2, dtype=torch.int64).to(torch.float32) / dim))


def inv_freq_and_scale(rope: RopeConfig, dim: int, max_pos: int) -> tuple[torch.Tensor, float]:
    """Inverse frequencies and the cos/sin multiplier (YaRN attention factor, else 1)."""
    inv = base_inv_freq(rope.theta, dim)
    if rope.rope_type in ("default", "dynamic"):
        return inv, 1.0
    if rope.rope_type == "linear":
        return inv / rope.factor, 1.0
    if rope.rope_type == "llama3":
        return _llama3(inv, rope), 1.0
    return _yarn(rope, dim, max_pos)


def _llama3(inv: torch.Tensor, rope: RopeConfig) -> torch.Tensor:
    old_ctx = float(rope.original_max_position_embeddings or 8192)
    low_wavelen = old_ctx / rope.low_freq_factor
    high_wavelen = old_ctx / rope.high_freq_factor
    wavelen = 2 * math.pi / inv
    scaled = torch.where(wavelen > low_wavelen, inv / rope.factor, inv)
    smooth = (old_ctx / wavelen - rope.low_freq_factor) / (
        rope.high_freq_factor - rope.low_freq_factor
    )
    smoothed = (1 - smooth) * scaled / rope.factor + smooth * scaled
    medium = ~(wavelen < high_wavelen) * ~(wavelen > low_wavelen)
    return torch.where(medium, smoothed, scaled)


def _yarn(rope: RopeConfig, dim: int, max_pos: int) -> tuple[torch.Tensor, float]:
    factor = rope.factor
    orig = float(rope.original_max_position_embeddings or max_pos)

    def mscale(scale: float, m: float = 1.0) -> float:
        return 1.0 if scale <= 1 else 0.1 * m * math.log(scale) + 1.0

    if rope.attention_factor is not None:
        attention = rope.attention_factor
    elif rope.mscale and rope.mscale_all_dim:
        attention = mscale(factor, rope.mscale) / mscale(factor, rope.mscale_all_dim)
    else:
        attention = mscale(factor)

    def correction_dim(rotations: float) -> float:
        return (dim * math.log(orig / (rotations * 2 * math.pi))) / (2 * math.log(rope.theta))

    low, high = correction_dim(rope.beta_fast), correction_dim(rope.beta_slow)
    if rope.truncate:
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, dim - 1)
    if low == high:
        high += 0.001
    ramp = torch.clamp((torch.arange(dim // 2, dtype=torch.float32) - low) / (high - low), 0, 1)
    pos_freqs = rope.theta ** (torch.arange(0, dim, 2).to(torch.float32) / dim)
    extrapolation = 1.0 - ramp
    inv = (1.0 / (factor * pos_freqs)) * (1 - extrapolation) + (1.0 / pos_freqs) * extrapolation
    return inv, float(attention)


class RotaryTable:
    """Per-token cos/sin for the rotary embedding of one model, on one device and dtype.

    ``cos_sin(positions, seq_lens)`` returns (cos, sin_signed), each [T, head_dim], such that
    ``rotate(x) = x * cos + x.roll(head_dim // 2, -1) * sin_signed`` equals HF's
    ``x * cos + rotate_half(x) * sin``. ``seq_lens`` (the total length of each token's sequence
    after this step) is only read by dynamic NTK scaling.
    """

    def __init__(self, config: ModelConfig, device: torch.device, dtype: torch.dtype) -> None:
        self.rope = config.rope
        self.dim = config.head_dim
        self.max_pos = config.max_position_embeddings
        self.device = device
        self.dtype = dtype
        inv, self.scale = inv_freq_and_scale(config.rope, self.dim, self.max_pos)
        self.inv_freq = inv.to(device)
        half = self.dim // 2
        self._sign = torch.cat([-torch.ones(half), torch.ones(half)]).to(device=device, dtype=dtype)
        self._cos = torch.empty(0, self.dim, device=device, dtype=dtype)
        self._sin = torch.empty(0, self.dim, device=device, dtype=dtype)

    def _table(self, upto: int) -> None:
        size = max(upto, self.max_pos, 2 * self._cos.shape[0])
        pos = torch.arange(size, device=self.device, dtype=torch.float32)
        freqs = pos[:, None] * self.inv_freq[None, :]
        emb = torch.cat((freqs, freqs), dim=-1)
        self._cos = (emb.cos() * self.scale).to(self.dtype)
        self._sin = (emb.sin() * self.scale).to(self.dtype) * self._sign

    def cos_sin(
        self,
        positions: torch.Tensor,
        seq_lens: torch.Tensor | None = None,
        max_len: int | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """cos and signed sin for int64 ``positions`` [T] (see the class docstring).

        ``max_len`` (> every position), when known, saves reading the positions back from the
        device.
        """
        if self.rope.rope_type == "dynamic":
            return self._dynamic(positions, seq_lens)
        if positions.numel() == 0:
            return self._cos[:0], self._sin[:0]
        top = int(positions.max()) + 1 if max_len is None else max_len
        if top > self._cos.shape[0]:
            self._table(top)
        return self._cos.index_select(0, positions), self._sin.index_select(0, positions)

    def _dynamic(
        self, positions: torch.Tensor, seq_lens: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        lens = (positions + 1) if seq_lens is None else seq_lens
        lens = torch.clamp(lens.to(torch.float32), min=float(self.max_pos))
        factor = self.rope.factor
        base = self.rope.theta * ((factor * lens / self.max_pos) - (factor - 1)) ** (
            self.dim / (self.dim - 2)
        )
        exponents = (
            torch.arange(0, self.dim, 2, dtype=torch.int64, device=self.device).to(torch.float32)
            / self.dim
        )
        inv = 1.0 / (base[:, None] ** exponents[None, :])
        freqs = positions.to(torch.float32)[:, None] * inv
        emb = torch.cat((freqs, freqs), dim=-1)
        return emb.cos().to(self.dtype), emb.sin().to(self.dtype) * self._sign


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin_signed: torch.Tensor) -> torch.Tensor:
    """Rotate ``x`` [T, heads, head_dim] by per-token ``cos``/``sin_signed`` [T, head_dim]."""
    half = x.shape[-1] // 2
    return torch.addcmul(x * cos[:, None, :], x.roll(half, -1), sin_signed[:, None, :])
