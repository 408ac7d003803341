"""The built-in PyTorch model side of the engine: a Llama-family decoder on a paged KV cache.

The runner (engine side) talks to this package through plain data: a list of
:class:`Segment` (block table, cached token count, new token ids) in, logits of each segment's
last token out; KV moves between caches as a :class:`KVPayload`. Heavy dependencies (torch,
safetensors, tokenizers) are imported only by this package.
"""

from dopd.engine.model.batch import Segment
from dopd.engine.model.generate import generate_greedy
from dopd.engine.model.kv_io import KVPayload, export_blocks, export_kv, import_blocks, import_kv
from dopd.engine.model.llama import LlamaModel
from dopd.engine.model.loader import (
    LoadedModel,
    load_checkpoint,
    resolve_dtype,
    save_checkpoint,
)
from dopd.engine.model.model_config import ModelConfig, RopeConfig
from dopd.engine.model.paged_cache import DEFAULT_BLOCK_SIZE, PagedKVCache
from dopd.engine.model.sampler import Sampler, SamplingParams, make_generator
from dopd.engine.model.stopping import FinishReason, StopHit, check_stop, truncate_at_stop
from dopd.engine.model.tiny import (
    TINY_CONFIG,
    TINY_NAME,
    build_tiny,
    load_model,
    tiny_tokenizer,
    write_random_checkpoint,
)
from dopd.engine.model.tokenizer import Tokenizer

__all__ = [
    "DEFAULT_BLOCK_SIZE",
    "TINY_CONFIG",
    "TINY_NAME",
    "FinishReason",
    "KVPayload",
    "LlamaModel",
    "LoadedModel",
    "ModelConfig",
    "PagedKVCache",
    "RopeConfig",
    "Sampler",
    "SamplingParams",
    "Segment",
    "StopHit",
    "Tokenizer",
    "build_tiny",
    "check_stop",
    "export_blocks",
    "export_kv",
    "generate_greedy",
    "import_blocks",
    "import_kv",
    "load_checkpoint",
    "load_model",
    "make_generator",
    "resolve_dtype",
    "save_checkpoint",
    "tiny_tokenizer",
    "truncate_at_stop",
    "write_random_checkpoint",
]
