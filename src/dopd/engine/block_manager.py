"""Paged KV-cache block manager of one instance.

KV memory is ``num_blocks`` blocks of ``block_size`` tokens with ids ``0..num_blocks-1``. Each
owner (a request id) has a block table: the ordered ids holding its KV. Blocks carry reference
counts so a table can share blocks with another (:meth:`BlockManager.fork`); a block returns to
the free pool when its last reference goes.

Allocation is check-then-commit: every method that takes blocks first checks that enough are
free and changes nothing when they are not (it returns False). Admissions of new work must leave
``watermark_blocks`` free, so running requests can still grow; growth of running requests may use
the last blocks. Anonymous reservations (:meth:`reserve`) hold free blocks back without choosing
ids, for work that will claim them later (the simulator's multi-step decode runs).
"""

from __future__ import annotations

import math

from dopd.errors import require


class BlockManager:
    """Free pool, block tables and reference counts of one instance's KV memory."""

    __slots__ = ("_free", "_reserved", "_shared", "_tables", "block_size", "num_blocks",
                 "watermark_blocks")

    def __init__(self, num_blocks: int, block_size: int = 16, watermark: float = 0.01) -> None:
        """``watermark`` is the fraction of all blocks that admissions must leave free."""
        require(num_blocks >= 1, f"KV cache needs at least one block, got {num_blocks}")
        require(block_size >= 1, f"block size must be >= 1, got {block_size}")
        require(0 <= watermark < 1, f"watermark must be in [0, 1), got {watermark}")
        self.num_blocks = num_blocks
        self.block_size = block_size
        self.watermark_blocks = math.ceil(watermark * num_blocks)
        # A stack: the lowest ids are handed out first.
        self._free: list[int] = list(range(num_blocks - 1, -1, -1))
        self._reserved = 0
        # Extra references beyond the first, only for shared blocks (refcount = 1 + entry).
        self._shared: dict[int, int] = {}
        self._tables: dict[int, list[int]] = {}

    # ----------------------------------------------------------------- queries
    @property
    def free_blocks(self) -> int:
        """Blocks neither allocated nor reserved."""
        return len(self._free) - self._reserved

    @property
    def used_blocks(self) -> int:
        """Blocks allocated to tables (reservations excluded)."""
        return self.num_blocks - len(self._free)

    @property
    def reserved_blocks(self) -> int:
        return self._reserved

    def blocks_for(self, tokens: int) -> int:
        """Blocks needed to hold ``tokens`` tokens."""
        return -(-tokens // self.block_size)

    def held(self, owner: int) -> int:
        """Number of blocks in ``owner``'s table (0 if it has none)."""
        table = self._tables.get(owner)
        return len(table) if table is not None else 0

    def table(self, owner: int) -> list[int]:
        """The live block table of ``owner`` (do not mutate); empty if it has none."""
        return self._tables.get(owner, [])

    def has(self, owner: int) -> bool:
        return owner in self._tables

    def refcount(self, block: int) -> int:
        """References to ``block`` (0 when free)."""
        if block in self._shared:
            return 1 + self._shared[block]
        return 0 if block in set(self._free) else 1

    def can_allocate(self, owner: int, tokens: int, admission: bool = True) -> bool:
        """Whether ``owner``'s table can grow to hold ``tokens`` tokens right now."""
        need = self.blocks_for(tokens) - self.held(owner)
        if need <= 0:
            return True
        floor = self.watermark_blocks if admission else 0
        return len(self._free) - self._reserved - need >= floor

    # ----------------------------------------------------------------- commits
    def allocate(self, owner: int, tokens: int, admission: bool = True) -> bool:
        """Grow ``owner``'s table (created if absent) to hold ``tokens`` tokens.

        Returns False and changes nothing when the blocks are not free (``admission`` also
        keeps the watermark free).
        """
        table = self._tables.get(owner)
        held = len(table) if table is not None else 0
        need = -(-tokens // self.block_size) - held
        if need <= 0:
            if table is None:
                self._tables[owner] = []
            return True
        free = self._free
        floor = self.watermark_blocks if admission else 0
        if len(free) - self._reserved - need < floor:
            return False
        new = free[-need:]
        del free[-need:]
        new.reverse()
        if table is None:
            self._tables[owner] = new
        else:
            table.extend(new)
        return True

    def free(self, owner: int) -> int:
        """Drop ``owner``'s table; returns how many blocks went back to the free pool."""
        table = self._tables.pop(owner, None)
        if not table:
            return 0
        shared = self._shared
        if not shared:
            table.reverse()
            self._free.extend(table)
            return len(table)
        released = 0
        for block in reversed(table):
            extra = shared.get(block)
            if extra is None:
                self._free.append(block)
                released += 1
            elif extra == 1:
                del shared[block]
            else:
                shared[block] = extra - 1
        return released

    def fork(self, source: int, owner: int) -> None:
        """Give ``owner`` (which must have no table) a table sharing all of ``source``'s blocks."""
        require(owner not in self._tables, f"request {owner} already has KV blocks")
        table = self._tables.get(source, [])
        shared = self._shared
        for block in table:
            shared[block] = shared.get(block, 0) + 1
        self._tables[owner] = list(table)

    def reserve(self, blocks: int) -> bool:
        """Hold back ``blocks`` free blocks (no ids chosen); False and no change if not free."""
        if blocks < 0 or len(self._free) - self._reserved < blocks:
            return False
        self._reserved += blocks
        return True

    def claim(self, owner: int, blocks: int) -> None:
        """Append ``blocks`` blocks to ``owner``'s existing table, taken from the reservation
        (the check was :meth:`reserve`)."""
        require(0 < blocks <= self._reserved, f"cannot claim {blocks} of {self._reserved} reserved")
        free = self._free
        new = free[-blocks:]
        del free[-blocks:]
        new.reverse()
        self._tables[owner].extend(new)
        self._reserved -= blocks

    def unreserve(self, blocks: int) -> None:
        """Return ``blocks`` previously reserved blocks to the free pool."""
        require(0 <= blocks <= self._reserved, f"cannot unreserve {blocks} of {self._reserved}")
        self._reserved -= blocks

    # ----------------------------------------------------------------- checks
    def check(self) -> None:
        """Assert the invariants (for tests): every block is free xor referenced, counts match."""
        free = self._free
        assert len(set(free)) == len(free), "a block is free twice"
        assert 0 <= self._reserved <= len(free), "reservation exceeds the free pool"
        counts: dict[int, int] = {}
        for table in self._tables.values():
            for block in table:
                counts[block] = counts.get(block, 0) + 1
        free_set = set(free)
        assert not free_set & counts.keys(), "a block is both free and in a table"
        assert len(free_set) + len(counts) == self.num_blocks, "a block is lost"
        for block, refs in counts.items():
            assert refs == 1 + self._shared.get(block, 0), f"refcount of block {block} is wrong"
        assert self._shared.keys() <= counts.keys(), "a shared count outlives its block"
