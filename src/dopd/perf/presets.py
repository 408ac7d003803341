"""Engine presets: the efficiency factors and overheads of the roofline latency model.

The roofline (``dopd.perf.latency``) turns FLOPs and bytes into seconds with hardware peaks; a
preset says how close to those peaks an engine gets and what it adds per step. Two presets:

``legacy2023`` - engines of 2023 without CUDA graphs (DistServe's SwiftTransformer, vLLM <= 0.2),
whose published per-step latency fits on A100-SXM-80GB are in ``perf/data`` (the "anchors").
Its constants were *tuned* to those fits: all seven ``distserve`` fits at once (OPT-13B and
OPT-66B, TP 1-8), no per-model or per-TP terms, by a bounded global search (scipy's
differential evolution) minimising the largest per-fit median relative error over the fits'
profiling grid, then rounded. :func:`dopd.perf.fidelity.fidelity_report` shows what remains
(per-fit medians 2.5-7.5 %, worst point 26 %). What the tuned values say, and how plausible they
are:

- ``mfu`` 0.87: the prefill fits' per-token slopes (OPT-13B tp1: 0.102 ms per token against
  0.082 ms at the dense peak) need cuBLAS at about 85 % of peak on large shapes, as A100s reach.
  ``gemm_pad_tokens`` 8: little extra inefficiency of skinny GEMMs is visible in these fits.
- ``hbm_efficiency`` 0.80: weight streaming at batch 1 (the decode intercepts, e.g. 19.9 ms for
  the 25.7 GB of OPT-13B) at 80 % of the 2039 GB/s peak, typical of GEMV kernels.
- ``kv_read_efficiency`` 0.85: the decode fits' per-context-token slope (OPT-13B tp1: 0.627 us
  per 819 KB) is 64 % of peak bandwidth; the rest of that slope is absorbed by the model's
  per-sequence and overlap terms.
- ``score_bytes`` 6, ``attn_efficiency`` 0.36, ``causal_skip`` False: the prefill fits' quadratic
  terms are several times what causal attention FLOPs at peak explain, consistent with an
  unfused attention that computes the full ``n x (c + n)`` score matrix at modest efficiency and
  moves it through HBM for the softmax. (A fused, causal variant fits nearly as well; the anchors
  do not pin this down.)
- ``overlap_loss`` 0.38: the part of the smaller of GEMM compute and weight streaming not hidden
  under the larger; it gives decode its per-sequence slope below the roofline knee.
- ``allreduce_efficiency`` 0.21, ``allreduce_latency_s`` 12 us, ``allreduce_hop_latency_s`` 4 us:
  NCCL ring all-reduce over NVLink. The low effective bandwidth (63 of 300 GB/s) is what the
  fits' per-token cost growth with TP requires; it also absorbs the lower GEMM efficiency of
  narrower TP shards, which the model does not represent separately.
- ``step_overhead_s`` 2.9 ms, ``layer_overhead_s`` 30 us, ``seq_overhead_s`` 50 us: Python
  scheduling and sampling per step, kernel launches per layer without CUDA graphs, per-sequence
  bookkeeping. ``seq_overhead_s`` sits at the top of the searched range (0-50 us): the fits'
  large-batch decode slopes would take more, which we judged implausible.

``modern`` - current vLLM/SGLang with CUDA graphs, FlashAttention, fused kernels and custom
all-reduce. These constants are *estimates* from public figures, not a fit: GEMM efficiency is a
property of cuBLAS/CUTLASS, which both eras share, so ``mfu`` stays near the tuned legacy value
(0.85; H100s reach only 65-75 % of their dense peak in practice, so this is optimistic there),
and skinny GEMMs get the same small padding; GEMV-like decode streams weights at 80-90 % of HBM
bandwidth (vLLM's single-stream Llama-3-8B on H100 runs at about 6 ms per token against 4.8 ms of
pure weight streaming); FlashAttention-2 forward reaches 50-70 % of peak and skips masked tiles;
paged decode attention reaches about 85 % of bandwidth; vLLM's custom all-reduce takes a few
microseconds per call at small messages; with CUDA graphs the per-layer launch cost nearly
vanishes and the per-step CPU overhead is a fraction of a millisecond (vLLM V1 blog posts).

``modern-fit`` - ``modern`` with the constants that shape the cost outside attention (``mfu``,
``gemm_pad_tokens``, ``hbm_efficiency``, ``overlap_loss``, ``layer_overhead_s`` and the three
all-reduce constants) *fitted* (:func:`dopd.perf.preset_fit.fit_preset`, then rounded to two
digits) to Vidur's measured A100-80GB operator profiles of Llama-3-8B at TP 1, 2, 4 and 8
(``perf/data/vidur_a100``), on every other profiled token count and all-reduce size; the others
are kept aside as a check (:mod:`dopd.perf.profile_fidelity`; ``dopd perf --fidelity`` prints
both). What the fit says: large GEMMs (with the norms, activation and rotary kernels folded in)
run at 67 % of the dense peak, skinny ones as if padded by 62 tokens; batch-1 weight streaming
reaches 77 % of HBM bandwidth; NCCL all-reduce takes about 49 us per call plus 43 % of NVLink
bandwidth; the small per-layer kernels' fixed cost is absorbed by the other terms
(``layer_overhead_s`` 0). ``modern``'s estimates (``mfu`` 0.85, ``hbm_efficiency`` 0.85,
``gemm_pad_tokens`` 8, ``overlap_loss`` 0.15, ``allreduce_efficiency`` 0.70, 5 us + 1 us per
hop, 2 us per layer) were 16-33 % too fast per step. The rest is not visible in the profiles and
stays an estimate from public figures: FlashAttention-2 forward reaches 50-70 % of peak and
skips masked tiles (``attn_efficiency`` 0.55); paged decode attention about 85 % of bandwidth;
with CUDA graphs the per-step CPU overhead is a fraction of a millisecond (vLLM V1 blog posts).
The fit is on A100; the same fractions are applied to other GPUs (H100s reach similar shares of
their dense peak in practice). ``modern`` stays the default until the simulator's results and
the policies' defaults are re-measured on ``modern-fit`` (the control plane's belief can be set
to either; see ``--truth-calibration preset:modern-fit``).
"""

from __future__ import annotations

from dataclasses import dataclass

from dopd.errors import require
from dopd.registry import Registry


@dataclass(frozen=True, slots=True)
class EnginePreset:
    """Efficiency factors (fractions of hardware peaks) and overheads (seconds) of an engine.

    ``causal_skip``: prefill attention skips fully masked tiles (FlashAttention) instead of
    computing the full ``n x (c + n)`` score matrix. ``score_bytes``: HBM bytes moved per attention
    score element (0 for fused attention). ``overlap_loss`` in [0, 1]: share of the smaller of GEMM
    compute time and weight-streaming time that is not hidden (0 = ideal roofline).
    """

    name: str
    mfu: float
    gemm_pad_tokens: float
    hbm_efficiency: float
    kv_read_efficiency: float
    attn_efficiency: float
    causal_skip: bool
    score_bytes: float
    overlap_loss: float
    allreduce_efficiency: float
    allreduce_latency_s: float
    allreduce_hop_latency_s: float
    step_overhead_s: float
    layer_overhead_s: float
    seq_overhead_s: float
    description: str = ""

    def __post_init__(self) -> None:
        for field_name in ("mfu", "hbm_efficiency", "kv_read_efficiency", "attn_efficiency",
                           "allreduce_efficiency"):
            value = getattr(self, field_name)
            require(0 < value <= 1, f"preset {self.name!r}: {field_name} must be in (0, 1]")
        require(0 <= self.overlap_loss <= 1,
                f"preset {self.name!r}: overlap_loss must be in [0, 1]")
        for field_name in ("gemm_pad_tokens", "score_bytes", "allreduce_latency_s",
                           "allreduce_hop_latency_s", "step_overhead_s", "layer_overhead_s",
                           "seq_overhead_s"):
            require(getattr(self, field_name) >= 0,
                    f"preset {self.name!r}: {field_name} must be >= 0")


PRESETS: Registry[EnginePreset] = Registry("preset")

LEGACY2023 = PRESETS.register("legacy2023", EnginePreset(
    name="legacy2023",
    mfu=0.87,
    gemm_pad_tokens=8.0,
    hbm_efficiency=0.80,
    kv_read_efficiency=0.85,
    attn_efficiency=0.36,
    causal_skip=False,
    score_bytes=6.0,
    overlap_loss=0.38,
    allreduce_efficiency=0.21,
    allreduce_latency_s=12e-6,
    allreduce_hop_latency_s=4e-6,
    step_overhead_s=2.9e-3,
    layer_overhead_s=30e-6,
    seq_overhead_s=50e-6,
    description="2023-era engine without CUDA graphs (tuned to DistServe's A100 fits)",
))

MODERN = PRESETS.register("modern", EnginePreset(
    name="modern",
    mfu=0.85,
    gemm_pad_tokens=8.0,
    hbm_efficiency=0.85,
    kv_read_efficiency=0.85,
    attn_efficiency=0.55,
    causal_skip=True,
    score_bytes=0.0,
    overlap_loss=0.15,
    allreduce_efficiency=0.70,
    allreduce_latency_s=5e-6,
    allreduce_hop_latency_s=1e-6,
    step_overhead_s=0.4e-3,
    layer_overhead_s=2e-6,
    seq_overhead_s=2e-6,
    description="current vLLM/SGLang: CUDA graphs, FlashAttention, fused kernels (estimates)",
))

MODERN_FIT = PRESETS.register("modern-fit", EnginePreset(
    name="modern-fit",
    mfu=0.67,
    gemm_pad_tokens=62.0,
    hbm_efficiency=0.77,
    kv_read_efficiency=0.85,
    attn_efficiency=0.55,
    causal_skip=True,
    score_bytes=0.0,
    overlap_loss=0.21,
    allreduce_efficiency=0.43,
    allreduce_latency_s=49e-6,
    allreduce_hop_latency_s=0.8e-6,
    step_overhead_s=0.4e-3,
    layer_overhead_s=0.0,
    seq_overhead_s=2e-6,
    description="current vLLM/SGLang: CUDA graphs, FlashAttention, fused kernels "
    "(outside attention fitted to Vidur's A100 profiles)",
))


def get_preset(preset: str | EnginePreset) -> EnginePreset:
    """Return the preset named ``preset`` (case-insensitive) or ``preset`` itself."""
    if isinstance(preset, EnginePreset):
        return preset
    return PRESETS.get(preset)
