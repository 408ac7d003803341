"""Hardware, model and preset catalogs."""

from __future__ import annotations

import dataclasses

import pytest

from dopd.errors import DopdError
from dopd.perf import (
    GPUS,
    MODELS,
    PRESETS,
    EnginePreset,
    HardwareSpec,
    get_gpu,
    get_model,
    get_preset,
    gpu_names,
    model_names,
)
from dopd.perf.hardware import GiB


def test_gpu_catalog_has_required_entries_and_aliases() -> None:
    for name in ("a100-40gb", "a100-80gb", "a100-sxm-80gb", "h100-sxm", "h100", "h200", "l40s"):
        assert name in GPUS
    assert get_gpu("A100-SXM-80GB") is get_gpu("a100-80gb")
    assert get_gpu(" H100 ") is get_gpu("h100-sxm")
    assert set(gpu_names()) == {"a100-40gb", "a100-80gb", "h100-sxm", "h200", "l40s"}


def test_gpu_figures_are_dense_datasheet_values() -> None:
    a100 = get_gpu("a100-80gb")
    assert a100.flops == pytest.approx(312e12)  # dense; the sparse figure is 624
    assert a100.hbm_Bps == pytest.approx(2039e9)
    assert a100.memory_bytes == 80 * GiB
    assert get_gpu("a100-40gb").hbm_Bps < a100.hbm_Bps
    h100, h200 = get_gpu("h100"), get_gpu("h200")
    assert h100.flops == pytest.approx(989e12)  # dense; 1979 with sparsity
    assert h200.flops == h100.flops and h200.hbm_Bps > h100.hbm_Bps
    assert h200.memory_bytes > h100.memory_bytes
    assert get_gpu("l40s").link_Bps < a100.link_Bps  # PCIe, no NVLink


def test_unknown_gpu_lists_known_names() -> None:
    with pytest.raises(DopdError, match=r"unknown GPU 'v100'.*a100-80gb.*h200"):
        get_gpu("v100")


def test_hardware_spec_rejects_non_positive_figures() -> None:
    with pytest.raises(DopdError, match="hbm_Bps"):
        HardwareSpec("bad", 1e12, 0.0, GiB, 1e9, 1e9)


PUBLISHED_PARAMS = {  # billions, from the model cards / HF safetensors totals
    "llama-2-7b": 6.74, "llama-2-13b": 13.02, "llama-2-70b": 68.98, "llama-3-8b": 8.03,
    "llama-3-70b": 70.55, "qwen2.5-7b": 7.62, "qwen2.5-32b": 32.76, "qwen2.5-72b": 72.71,
    "mistral-7b": 7.24, "opt-13b": 12.85, "opt-66b": 65.7, "opt-175b": 175.0,
}


@pytest.mark.parametrize(("name", "billions"), sorted(PUBLISHED_PARAMS.items()))
def test_parameter_counts_match_published_sizes(name: str, billions: float) -> None:
    assert get_model(name).params / 1e9 == pytest.approx(billions, rel=0.01)


def test_model_catalog_names_and_shapes() -> None:
    assert set(PUBLISHED_PARAMS) <= set(model_names())
    llama3 = get_model("Meta-Llama/Meta-Llama-3-8B")
    assert llama3 is get_model("llama-3-8b")
    assert (llama3.layers, llama3.hidden, llama3.heads, llama3.kv_heads) == (32, 4096, 32, 8)
    assert llama3.head_dim == 128 and llama3.gated_mlp and llama3.max_context == 8192
    opt = get_model("opt-13b")
    assert not opt.gated_mlp and opt.ffn == 4 * opt.hidden and opt.tie_embeddings
    assert get_model("qwen2.5-7b").kv_heads == 4
    assert len(MODELS) > len(model_names())  # aliases registered too


def test_streamed_weights_exclude_the_embedding_gather() -> None:
    llama3 = get_model("llama-3-8b")
    embed = llama3.vocab * llama3.hidden * llama3.dtype_bytes
    assert llama3.streamed_weight_bytes == llama3.weight_bytes - embed
    opt = get_model("opt-13b")  # tied head: the table is read once as the lm_head
    positions = opt.learned_positions * opt.hidden * opt.dtype_bytes
    assert opt.streamed_weight_bytes == opt.weight_bytes - positions


def test_unknown_model_and_bad_shapes_raise() -> None:
    with pytest.raises(DopdError, match="unknown model 'gpt-5'"):
        get_model("gpt-5")
    with pytest.raises(DopdError, match="multiple of kv_heads"):
        dataclasses.replace(get_model("llama-3-8b"), kv_heads=5)
    with pytest.raises(DopdError, match="layers"):
        dataclasses.replace(get_model("llama-3-8b"), layers=0)


def test_presets_registry_and_validation() -> None:
    assert set(PRESETS.names()) == {"legacy2023", "modern", "modern-fit"}
    legacy, modern = get_preset("LEGACY2023"), get_preset("modern")
    assert isinstance(legacy, EnginePreset)
    # the modern engine launches fewer kernels per step and fuses attention
    assert modern.layer_overhead_s < legacy.layer_overhead_s
    assert modern.step_overhead_s < legacy.step_overhead_s
    assert modern.causal_skip and modern.score_bytes == 0
    with pytest.raises(DopdError, match="mfu"):
        dataclasses.replace(modern, mfu=1.5)
    with pytest.raises(DopdError, match="step_overhead_s"):
        dataclasses.replace(modern, step_overhead_s=-1.0)
    with pytest.raises(DopdError, match="unknown preset"):
        get_preset("turbo")
