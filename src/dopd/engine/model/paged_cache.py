"""The paged KV cache: per layer one pool of fixed-size blocks for K and one for V.

Block ``b`` of layer ``l`` holds ``block_size`` consecutive tokens of one sequence:
``k(l)[b]`` / ``v(l)[b]`` are [block_size, num_kv_heads, head_dim]. Which blocks a sequence owns is
the block manager's business (engine side); this class only stores the tensors. All pools live in
one tensor [num_layers, 2, num_blocks, block_size, num_kv_heads, head_dim] so a sequence's KV can be
read out or written in one indexing operation.
"""

from __future__ import annotations

import torch

from dopd.engine.model.model_config import ModelConfig
from dopd.errors import require

DEFAULT_BLOCK_SIZE = 16


class PagedKVCache:
    """K and V block pools of every layer, on one device and dtype: zero-initialised, or with
    ``zeroed=False`` reserved but not written (the operating system maps a CPU page when it is
    first written, so unused blocks cost no memory; the content of a block is unspecified until
    written)."""

    def __init__(
        self,
        num_layers: int,
        num_blocks: int,
        num_kv_heads: int,
        head_dim: int,
        *,
        block_size: int = DEFAULT_BLOCK_SIZE,
        dtype: torch.dtype = torch.float32,
        device: str | torch.device = "cpu",
        zeroed: bool = True,
    ) -> None:
        for name, value in (
            ("num_layers", num_layers),
            ("num_blocks", num_blocks),
            ("num_kv_heads", num_kv_heads),
            ("head_dim", head_dim),
            ("block_size", block_size),
        ):
            require(
                isinstance(value, int) and value > 0,
                f"KV cache {name} must be a positive int, got {value!r}",
            )
        self.num_layers = num_layers
        self.num_blocks = num_blocks
        self.block_size = block_size
        self.num_kv_heads = num_kv_heads
        self.head_dim = head_dim
        self.dtype = dtype
        self.device = torch.device(device)
        self.version = 0
        self.data = (torch.zeros if zeroed else torch.empty)(
            num_layers,
            2,
            num_blocks,
            block_size,
            num_kv_heads,
            head_dim,
            dtype=dtype,
            device=self.device,
        )

    @classmethod
    def for_model(
        cls,
        config: ModelConfig,
        num_blocks: int,
        *,
        block_size: int = DEFAULT_BLOCK_SIZE,
        dtype: torch.dtype = torch.float32,
        device: str | torch.device = "cpu",
        zeroed: bool = True,
    ) -> PagedKVCache:
        """A cache shaped for ``config`` (its layers, KV heads and head size)."""
        return cls(
            config.num_layers,
            num_blocks,
            config.num_kv_heads,
            config.head_dim,
            block_size=block_size,
            dtype=dtype,
            device=device,
            zeroed=zeroed,
        )

    def k(self, layer: int) -> torch.Tensor:
        """Layer ``layer``'s K pool [num_blocks, block_size, num_kv_heads, head_dim] (a view)."""
        return self.data[layer, 0]

    def v(self, layer: int) -> torch.Tensor:
        """Layer ``layer``'s V pool [num_blocks, block_size, num_kv_heads, head_dim] (a view)."""
        return self.data[layer, 1]

    def mark_written(self) -> None:
        """Record a write to ``data`` made outside a model forward (KV import, tests ...).

        Models keep derived copies of the KV of running decodes; they are dropped when the
        version changes.
        """
        self.version += 1

    @property
    def bytes_per_block(self) -> int:
        """Bytes of K and V of one block over all layers."""
        return (
            2
            * self.num_layers
            * self.block_size
            * self.num_kv_heads
            * self.head_dim
            * self.data.element_size()
        )

    def blocks_for(self, num_tokens: int) -> int:
        """Number of blocks that hold ``num_tokens`` tokens."""
        return -(-num_tokens // self.block_size)

    def slots(self, block_table: list[int] | tuple[int, ...], num_tokens: int) -> torch.Tensor:
        """Flat slot (block * block_size + offset) of a sequence's first ``num_tokens`` tokens.

        Raises DopdError when the table is too short or names a block outside the pool.
        """
        need = self.blocks_for(num_tokens)
        require(num_tokens >= 0, f"token count must be >= 0, got {num_tokens}")
        require(
            len(block_table) >= need,
            f"block table of {len(block_table)} blocks cannot hold {num_tokens} tokens",
        )
        blocks = torch.tensor(list(block_table[:need]), dtype=torch.int64)
        if need:
            require(
                int(blocks.min()) >= 0 and int(blocks.max()) < self.num_blocks,
                f"block id out of range [0, {self.num_blocks})",
            )
        pos = torch.arange(num_tokens, dtype=torch.int64)
        return (blocks[pos // self.block_size] * self.block_size + pos % self.block_size).to(
            self.device
        )

    def flat(self) -> torch.Tensor:
        """All pools viewed as [num_layers, 2, num_blocks * block_size, num_kv_heads, head_dim]."""
        return self.data.view(
            self.num_layers, 2, self.num_blocks * self.block_size, self.num_kv_heads, self.head_dim
        )
