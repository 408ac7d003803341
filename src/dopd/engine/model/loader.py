"""Loading and saving Hugging Face checkpoints from local folders (no download anywhere).

A checkpoint folder holds ``config.json`` (architecture LlamaForCausalLM, Qwen2ForCausalLM or
MistralForCausalLM), safetensors weights (``model.safetensors`` or shards listed by
``model.safetensors.index.json``) and ``tokenizer.json`` (+ optional ``tokenizer_config.json`` with
the chat template). :func:`load_model` also resolves the built-in model names (``dopd-tiny``).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from dopd.engine.model.llama import LlamaModel
from dopd.engine.model.model_config import ModelConfig
from dopd.engine.model.tokenizer import Tokenizer
from dopd.errors import DopdError, require

_DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "float": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
    "half": torch.float16,
}


@dataclass(frozen=True)
class LoadedModel:
    """A model ready to run: network, tokenizer (None when not loaded) and where it came from."""

    name: str
    model: LlamaModel
    tokenizer: Tokenizer | None
    path: Path | None

    @property
    def config(self) -> ModelConfig:
        return self.model.config


def resolve_dtype(dtype: str | torch.dtype | None, device: str | torch.device) -> torch.dtype:
    """The compute dtype: ``dtype`` if given ("bf16", "float16", torch.float32 ...), else
    float32 on CPU and bfloat16 on CUDA (float16 where the GPU lacks bf16)."""
    dev = torch.device(device)
    if isinstance(dtype, torch.dtype):
        require(dtype in _DTYPES.values(), f"unsupported dtype {dtype}")
        return dtype
    if dtype is None or dtype == "auto":
        if dev.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.float32
    key = str(dtype).lower().removeprefix("torch.")
    require(key in _DTYPES, f"unsupported dtype {dtype!r} (use float32, bfloat16 or float16)")
    return _DTYPES[key]


def read_config(folder: str | Path) -> ModelConfig:
    """Parse ``folder/config.json``; a missing or unsupported config raises DopdError."""
    folder = Path(folder)
    path = folder / "config.json"
    require(folder.is_dir(), f"checkpoint folder {folder} does not exist")
    require(path.is_file(), f"{folder} is not a model checkpoint: config.json is missing")
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise DopdError(f"{path} is not valid JSON: {exc.msg}") from None
    require(isinstance(raw, dict), f"{path} is not a JSON object")
    return ModelConfig.from_hf_dict(raw)


def weight_files(folder: str | Path) -> list[Path]:
    """The safetensors files of a checkpoint (the index's shards, or the single file)."""
    folder = Path(folder)
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
        except (json.JSONDecodeError, KeyError, TypeError):
            raise DopdError(f"{index} is not a valid safetensors index") from None
        files = [folder / name for name in sorted(set(weight_map.values()))]
        missing = [f.name for f in files if not f.is_file()]
        require(
            not missing,
            f"{folder} lacks weight shards listed in its index: {', '.join(missing[:3])}",
        )
        return files
    single = folder / "model.safetensors"
    if single.is_file():
        return [single]
    others = sorted(folder.glob("*.safetensors"))
    if others:
        return others
    if any(folder.glob("*.bin")) or any(folder.glob("*.pt")):
        raise DopdError(f"{folder} has only PyTorch .bin weights; convert them to safetensors")
    raise DopdError(f"{folder} is not a model checkpoint: no safetensors weights")


def read_tensors(files: list[Path]) -> dict[str, torch.Tensor]:
    """All tensors of the safetensors ``files`` on CPU, in their stored dtype."""
    tensors: dict[str, torch.Tensor] = {}
    for file in files:
        try:
            with safe_open(str(file), framework="pt", device="cpu") as handle:
                for key in handle.keys():  # noqa: SIM118 (safe_open is not a mapping)
                    tensors[key] = handle.get_tensor(key)
        except (OSError, ValueError, RuntimeError, SafetensorError) as exc:
            raise DopdError(
                f"cannot read weights {file.name}: {str(exc).splitlines()[0]}"
            ) from None
    return tensors


def load_checkpoint(
    folder: str | Path,
    *,
    device: str | torch.device = "cpu",
    dtype: str | torch.dtype | None = None,
    with_tokenizer: bool = True,
) -> LoadedModel:
    """Load an HF checkpoint folder onto ``device`` in ``dtype`` (see :func:`resolve_dtype`).

    Raises DopdError when the folder is missing, lacks config.json, weights or (with
    ``with_tokenizer``) tokenizer.json, names an unsupported architecture, or a tensor is missing.
    """
    folder = Path(folder)
    config = read_config(folder)
    files = weight_files(folder)
    tokenizer = Tokenizer.from_folder(folder) if with_tokenizer else None
    config = _with_generation_eos(config, folder, tokenizer)
    model = LlamaModel.from_hf_state_dict(
        config, read_tensors(files), device=device, dtype=resolve_dtype(dtype, device)
    )
    return LoadedModel(name=folder.name, model=model, tokenizer=tokenizer, path=folder)


def _with_generation_eos(
    config: ModelConfig, folder: Path, tokenizer: Tokenizer | None
) -> ModelConfig:
    """Add the eos ids of generation_config.json and of the tokenizer to the config's."""
    eos = list(config.eos_token_ids)
    gen_path = folder / "generation_config.json"
    if gen_path.is_file():
        try:
            gen: Any = json.loads(gen_path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise DopdError(f"{gen_path} is not valid JSON: {exc.msg}") from None
        value = gen.get("eos_token_id") if isinstance(gen, dict) else None
        eos.extend(value if isinstance(value, list) else [] if value is None else [value])
    if tokenizer is not None and tokenizer.eos_id is not None:
        eos.append(tokenizer.eos_id)
    merged = tuple(dict.fromkeys(int(e) for e in eos))
    if merged == config.eos_token_ids:
        return config
    return replace(config, eos_token_ids=merged)


def save_checkpoint(
    folder: str | Path,
    config: ModelConfig,
    tensors: Mapping[str, torch.Tensor],
    tokenizer: Tokenizer | None = None,
) -> Path:
    """Write an HF-format folder: config.json, model.safetensors (+ tokenizer files)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(config.to_hf_dict(), indent=2), encoding="utf-8")
    save_file(
        {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()},
        str(folder / "model.safetensors"),
        metadata={"format": "pt"},
    )
    if tokenizer is not None:
        tokenizer.save(folder)
    return folder
