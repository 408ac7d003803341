"""Loading checkpoints from local folders: layouts, dtypes, tokenizer files and bad input."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from hf_pairs import build_pair

from dopd.engine.model import (
    TINY_CONFIG,
    Segment,
    build_tiny,
    load_checkpoint,
    load_model,
    resolve_dtype,
    save_checkpoint,
    write_random_checkpoint,
)
from dopd.engine.model.model_config import ModelConfig
from dopd.engine.model.tiny import random_hf_state_dict
from dopd.errors import DopdError


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_random_checkpoint(tmp_path_factory.mktemp("tiny") / "dopd-tiny")


def copy_folder(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def edit_config(folder: Path, **changes: object) -> None:
    path = folder / "config.json"
    raw = json.loads(path.read_text())
    raw.update(changes)
    path.write_text(json.dumps(raw))


def test_written_tiny_loads_with_same_weights_as_builtin(tiny_folder: Path) -> None:
    loaded = load_checkpoint(tiny_folder)
    builtin = build_tiny()
    assert loaded.config.num_layers == TINY_CONFIG.num_layers
    assert loaded.config.eos_token_ids == (257,)
    ours, ref = loaded.model.hf_state_dict(), builtin.model.hf_state_dict()
    assert ours.keys() == ref.keys()
    assert all(torch.equal(ours[k], ref[k]) for k in ours)
    cache_a, cache_b = loaded.model.make_cache(2), builtin.model.make_cache(2)
    seg = [Segment([0, 1], 0, [256, 72, 105])]
    a, b = loaded.model.forward(seg, cache_a), builtin.model.forward(seg, cache_b)
    assert (a - b).abs().max().item() < 1e-5
    assert loaded.tokenizer is not None and loaded.tokenizer.chat_template is not None


def test_load_model_resolves_builtin_name_and_folder(tiny_folder: Path) -> None:
    assert load_model("dopd-tiny").name == "dopd-tiny"
    assert load_model("DOPD-Tiny").path is None
    assert load_model(tiny_folder).path == tiny_folder
    with pytest.raises(DopdError, match="unknown model 'nope'"):
        load_model("nope")


def test_sharded_checkpoint_with_index_loads(tmp_path: Path) -> None:
    pair = build_pair("qwen2-tied-window", tmp_path / "full")
    sharded = tmp_path / "sharded"
    pair.hf.save_pretrained(sharded, max_shard_size="40KB")
    shutil.copy(tmp_path / "full" / "tokenizer.json", sharded / "tokenizer.json")
    assert (sharded / "model.safetensors.index.json").is_file()
    assert len(list(sharded.glob("*.safetensors"))) > 1
    model = load_checkpoint(sharded).model
    ids = list(range(40, 70))
    ours = model.forward([Segment([1, 0], 0, ids)], model.make_cache(2))[0]
    assert (ours - pair.hf_last_logits(ids)).abs().max().item() < 1e-4


def test_dtype_selection(tiny_folder: Path) -> None:
    assert resolve_dtype(None, "cpu") == torch.float32
    assert resolve_dtype("auto", "cpu") == torch.float32
    assert resolve_dtype("bf16", "cpu") == torch.bfloat16
    assert resolve_dtype("torch.float16", "cpu") == torch.float16
    assert resolve_dtype(torch.bfloat16, "cpu") == torch.bfloat16
    with pytest.raises(DopdError, match="unsupported dtype 'int8'"):
        resolve_dtype("int8", "cpu")
    half = load_checkpoint(tiny_folder, dtype="bfloat16").model
    full = load_checkpoint(tiny_folder).model
    assert half.dtype == torch.bfloat16 and half.make_cache(1).dtype == torch.bfloat16
    seg = [Segment([0], 0, [256, 1, 2, 3, 4, 5])]
    lo, hi = half.forward(seg, half.make_cache(1)), full.forward(seg, full.make_cache(1))
    assert lo.dtype == torch.float32
    assert (lo - hi).abs().max().item() < 0.05 * hi.abs().max().item()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_default_dtype_is_half_precision(tiny_folder: Path) -> None:
    model = load_checkpoint(tiny_folder, device="cuda").model
    assert model.dtype in (torch.bfloat16, torch.float16)
    assert model.staging is None
    logits = model.forward([Segment([0], 0, [256, 65, 66])], model.make_cache(1))
    assert logits.device.type == "cuda"


def test_missing_folder_and_missing_config(tmp_path: Path) -> None:
    with pytest.raises(DopdError, match="does not exist"):
        load_checkpoint(tmp_path / "absent")
    (tmp_path / "model.safetensors").write_bytes(b"")
    with pytest.raises(DopdError, match=r"not a model checkpoint: config.json is missing"):
        load_checkpoint(tmp_path)


def test_unsupported_architecture(tiny_folder: Path, tmp_path: Path) -> None:
    folder = copy_folder(tiny_folder, tmp_path / "gpt2")
    edit_config(folder, architectures=["GPT2LMHeadModel"], model_type="gpt2")
    with pytest.raises(DopdError, match="unsupported architecture GPT2LMHeadModel"):
        load_checkpoint(folder)


def test_missing_weights_tokenizer_and_tensor(tiny_folder: Path, tmp_path: Path) -> None:
    folder = copy_folder(tiny_folder, tmp_path / "broken")
    (folder / "tokenizer.json").unlink()
    with pytest.raises(DopdError, match=r"has no tokenizer\.json"):
        load_checkpoint(folder)
    assert load_checkpoint(folder, with_tokenizer=False).tokenizer is None
    (folder / "model.safetensors").rename(folder / "pytorch_model.bin")
    with pytest.raises(DopdError, match=r"only PyTorch \.bin weights"):
        load_checkpoint(folder, with_tokenizer=False)
    (folder / "pytorch_model.bin").unlink()
    with pytest.raises(DopdError, match="no safetensors weights"):
        load_checkpoint(folder, with_tokenizer=False)
    (folder / "model.safetensors").write_bytes(b"garbage")
    with pytest.raises(DopdError, match=r"cannot read weights model\.safetensors"):
        load_checkpoint(folder, with_tokenizer=False)
    tensors = random_hf_state_dict(TINY_CONFIG)
    del tensors["model.layers.2.mlp.up_proj.weight"]
    save_checkpoint(folder, TINY_CONFIG, tensors)
    with pytest.raises(DopdError, match=r"lacks tensor model\.layers\.2\.mlp\.up_proj\.weight"):
        load_checkpoint(folder, with_tokenizer=False)


def test_bad_config_values(tiny_folder: Path, tmp_path: Path) -> None:
    folder = copy_folder(tiny_folder, tmp_path / "bad")
    edit_config(folder, num_key_value_heads=3)
    with pytest.raises(DopdError, match="not a multiple of"):
        load_checkpoint(folder)
    edit_config(folder, num_key_value_heads=4, hidden_act="gelu")
    with pytest.raises(DopdError, match="unsupported hidden_act"):
        load_checkpoint(folder)
    edit_config(folder, hidden_act="silu", rope_parameters={"rope_type": "longrope"})
    with pytest.raises(DopdError, match="unsupported rope type 'longrope'"):
        load_checkpoint(folder)
    (folder / "config.json").write_text("{not json")
    with pytest.raises(DopdError, match="not valid JSON"):
        load_checkpoint(folder)


def test_config_round_trip_and_legacy_rope_layout() -> None:
    assert ModelConfig.from_hf_dict(TINY_CONFIG.to_hf_dict()) == TINY_CONFIG
    assert TINY_CONFIG.kv_bytes_per_token(4) == 2 * 4 * 4 * 32 * 4
    legacy = {
        **TINY_CONFIG.to_hf_dict(),
        "rope_theta": 500000.0,
        "rope_scaling": {"type": "linear", "factor": 4.0},
    }
    del legacy["rope_parameters"]
    parsed = ModelConfig.from_hf_dict(legacy)
    assert parsed.rope.rope_type == "linear"
    assert parsed.rope.factor == 4.0 and parsed.rope.theta == 500000.0


def test_generation_config_eos_and_chat_template_file(tiny_folder: Path, tmp_path: Path) -> None:
    folder = copy_folder(tiny_folder, tmp_path / "chat")
    (folder / "generation_config.json").write_text(json.dumps({"eos_token_id": [257, 261]}))
    cfg = json.loads((folder / "tokenizer_config.json").read_text())
    del cfg["chat_template"]
    (folder / "tokenizer_config.json").write_text(json.dumps(cfg))
    (folder / "chat_template.jinja").write_text(
        "{% for m in messages %}[{{ m['content'] }}]{% endfor %}"
    )
    loaded = load_checkpoint(folder)
    assert loaded.config.eos_token_ids == (257, 261)
    assert loaded.tokenizer is not None
    assert loaded.tokenizer.apply_chat_template([{"role": "user", "content": "hi"}]) == "[hi]"
