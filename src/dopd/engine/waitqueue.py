"""Short-first waiting queue with aging: the prefill queue order of one instance's scheduler.

A :class:`ShortFirstQueue` stands in for the scheduler's FCFS ``deque`` of waiting requests when
``SchedulerConfig.queue_order`` is ``"short-first"`` (the same deque operations, plus
:meth:`ShortFirstQueue.age`). Service order:

1. requests preempted for recompute (``appendleft``), first in, first out;
2. *aged* prompts, in arrival order;
3. the other new prompts, shortest prefill first (arrival order among equal lengths).

Aging (starvation freedom). Say a later arrival *passes* a prompt when it leaves the queue for
prefill first. A new prompt is aged (moved to group 2) as soon as ``max_passes`` later arrivals
have passed it, or, at the next :meth:`age` call, once it has waited ``aging_s`` seconds. Aged
prompts are served before every prompt that is not, in arrival order, so:

- no prompt is passed by more than ``max_passes`` later arrivals (``max_passes = 0`` is FCFS);
- a prompt that has waited ``aging_s`` is passed by no later arrival after the next ``age``.

The bookkeeping is cheap because both aging signals are monotone in arrival order: an older
waiting prompt has waited longer and been passed by at least as many (whoever passes a younger
one passes the older one too). So only the oldest prompt not yet aged is ever tested, and its
pass count is the number of admitted later arrivals, kept in a sorted list pruned as the oldest
changes. Push, pop and removal are O(log n) plus a list shift.
"""

from __future__ import annotations

import sys
from bisect import bisect_left, bisect_right, insort
from collections import deque
from collections.abc import Iterator
from itertools import chain, pairwise

from dopd.engine.sequence import Seq


class ShortFirstQueue:
    """Waiting requests of one scheduler, served as the module docstring describes.

    ``seq.queued_s`` must be set (the caller's clock at intake) before :meth:`append`.
    ``tokens`` and ``attn`` are the sums of ``prefill_len`` and ``prefill_len ** 2`` over the
    queue (every waiting request has ``computed == 0``).
    """

    __slots__ = ("_aged", "_fifo", "_front", "_items", "_keys", "_lens", "_next", "_passed",
                 "_sorted_attn", "_sorted_tokens", "_sqs", "aging_s", "attn", "max_passes",
                 "tokens")

    def __init__(self, aging_s: float, max_passes: int) -> None:
        self.aging_s = aging_s
        self.max_passes = max_passes
        self._front: deque[Seq] = deque()
        self._aged: deque[Seq] = deque()
        # New prompts not aged, sorted by (prefill_len, order); parallel lists.
        self._keys: list[tuple[int, int]] = []
        self._items: list[Seq] = []
        self._lens: list[int] = []
        self._sqs: list[int] = []
        # Arrival order of new prompts; entries whose seq.order < 0 have left the sorted part.
        self._fifo: deque[Seq] = deque()
        # Orders of admitted prompts younger than the oldest one still in the sorted part.
        self._passed: list[int] = []
        self._next = 0
        self.tokens = 0
        self.attn = 0
        self._sorted_tokens = 0
        self._sorted_attn = 0

    # ------------------------------------------------------------------ deque interface
    def __len__(self) -> int:
        return len(self._front) + len(self._aged) + len(self._items)

    def __bool__(self) -> bool:
        return bool(self._front or self._aged or self._items)

    def __iter__(self) -> Iterator[Seq]:
        """In service order (as it stands now)."""
        return chain(self._front, self._aged, self._items)

    def __getitem__(self, index: int) -> Seq:
        """The head (``index`` 0 only); IndexError when empty."""
        if index != 0:
            raise IndexError("only the head of a short-first queue can be read")
        if self._front:
            return self._front[0]
        if self._aged:
            return self._aged[0]
        return self._items[0]

    def append(self, seq: Seq) -> None:
        """Queue a new prompt (ordered by its length)."""
        order = self._next
        self._next = order + 1
        seq.order = order
        n = seq.prefill_len
        key = (n, order)
        i = bisect_right(self._keys, key)
        self._keys.insert(i, key)
        self._items.insert(i, seq)
        self._lens.insert(i, n)
        self._sqs.insert(i, n * n)
        self._fifo.append(seq)
        self._sorted_tokens += n
        self._sorted_attn += n * n
        self.tokens += n
        self.attn += n * n
        if self.max_passes == 0:
            self._check_passes()

    def appendleft(self, seq: Seq) -> None:
        """Queue a preempted request at the very front."""
        seq.order = -1
        self._front.appendleft(seq)
        n = seq.prefill_len
        self.tokens += n
        self.attn += n * n

    def popleft(self) -> Seq:
        """Remove and return the head (it is being admitted); IndexError when empty."""
        if self._front:
            seq = self._front.popleft()
        elif self._aged:
            seq = self._aged.popleft()
        else:
            if not self._items:
                raise IndexError("pop from an empty short-first queue")
            seq = self._items.pop(0)
            del self._keys[0], self._lens[0], self._sqs[0]
            self._drop_sorted(seq)
            self._admitted(seq)
        n = seq.prefill_len
        self.tokens -= n
        self.attn -= n * n
        return seq

    def remove(self, seq: Seq) -> None:
        """Remove a queued request (abort); ValueError if it is not queued."""
        if seq.order >= 0:
            i = bisect_left(self._keys, (seq.prefill_len, seq.order))
            if i == len(self._items) or self._items[i] is not seq:
                raise ValueError("request is not in the queue")
            del self._keys[i], self._items[i], self._lens[i], self._sqs[i]
            self._drop_sorted(seq)
            seq.order = -1
            self._check_passes()
        elif seq in self._aged:
            self._aged.remove(seq)
        else:
            self._front.remove(seq)
        n = seq.prefill_len
        self.tokens -= n
        self.attn -= n * n

    def take(self, seq: Seq) -> None:
        """Remove ``seq``, which left the queue for prefill, as :meth:`popleft` does (later
        arrivals taken before an older prompt pass it), for an observer that learns of
        admissions one at a time and not necessarily in service order (the live front end's
        instance book); ValueError if ``seq`` is not queued."""
        if seq.order >= 0:
            i = bisect_left(self._keys, (seq.prefill_len, seq.order))
            if i == len(self._items) or self._items[i] is not seq:
                raise ValueError("request is not in the queue")
            del self._keys[i], self._items[i], self._lens[i], self._sqs[i]
            self._drop_sorted(seq)
            self._admitted(seq)
        elif seq in self._aged:
            self._aged.remove(seq)
        else:
            self._front.remove(seq)
        n = seq.prefill_len
        self.tokens -= n
        self.attn -= n * n

    # ------------------------------------------------------------------ aging
    def age(self, now: float) -> int:
        """Age every prompt that has waited ``aging_s`` seconds by ``now``; returns how many."""
        fifo = self._fifo
        limit = now - self.aging_s
        promoted = 0
        while True:
            while fifo and fifo[0].order < 0:
                fifo.popleft()
            if not fifo or fifo[0].queued_s > limit:
                break
            self._promote(fifo[0])
            promoted += 1
        if promoted:
            self._check_passes()
        return promoted

    def passes(self) -> int:
        """Later arrivals that passed the oldest prompt not yet aged (0 if there is none)."""
        self._check_passes()
        return len(self._passed)

    def work_ahead(self, prefill_len: int) -> tuple[int, int, int]:
        """(tokens, sum of squared lengths, count) of the queued requests that a new prompt of
        ``prefill_len`` tokens would wait for now: everything preempted or aged, and the new
        prompts not longer than it."""
        k = bisect_right(self._keys, (prefill_len, sys.maxsize))
        items = len(self._items)
        if k * 2 <= items:
            tokens, attn = sum(self._lens[:k]), sum(self._sqs[:k])
        else:
            tokens = self._sorted_tokens - sum(self._lens[k:])
            attn = self._sorted_attn - sum(self._sqs[k:])
        return (tokens + self.tokens - self._sorted_tokens, attn + self.attn - self._sorted_attn,
                k + len(self._front) + len(self._aged))

    # ------------------------------------------------------------------ internals
    def _drop_sorted(self, seq: Seq) -> None:
        n = seq.prefill_len
        self._sorted_tokens -= n
        self._sorted_attn -= n * n

    def _admitted(self, seq: Seq) -> None:
        """``seq`` (just removed from the sorted part) is being prefilled: if an older prompt
        still waits, ``seq`` passed it."""
        fifo = self._fifo
        order = seq.order
        seq.order = -1
        while fifo and fifo[0].order < 0 and fifo[0] is not seq:
            fifo.popleft()
        if fifo and fifo[0] is seq:
            fifo.popleft()
        else:
            insort(self._passed, order)
        self._check_passes()

    def _promote(self, seq: Seq) -> None:
        """Move the oldest prompt of the sorted part (``seq``, at the FIFO head) to the aged."""
        i = bisect_left(self._keys, (seq.prefill_len, seq.order))
        del self._keys[i], self._items[i], self._lens[i], self._sqs[i]
        self._drop_sorted(seq)
        seq.order = -1
        self._fifo.popleft()
        self._aged.append(seq)

    def _check_passes(self) -> None:
        """Prune the pass record to the current oldest prompt and age it while it has been
        passed ``max_passes`` times."""
        fifo, passed = self._fifo, self._passed
        while True:
            while fifo and fifo[0].order < 0:
                fifo.popleft()
            if not fifo:
                passed.clear()
                return
            head = fifo[0]
            if passed and passed[0] < head.order:
                del passed[:bisect_left(passed, head.order)]
            if len(passed) < self.max_passes:
                return
            self._promote(head)

    def check(self) -> None:
        """Assert the invariants (for tests)."""
        keys, items = self._keys, self._items
        assert len(keys) == len(items) == len(self._lens) == len(self._sqs)
        assert all(a < b for a, b in pairwise(keys)), "keys out of order"
        for key, seq, n, sq in zip(keys, items, self._lens, self._sqs, strict=True):
            assert key == (seq.prefill_len, seq.order) and n == seq.prefill_len and sq == n * n
        assert all(s.order < 0 for s in chain(self._front, self._aged))
        live = [s for s in self._fifo if s.order >= 0]
        assert sorted(id(s) for s in live) == sorted(id(s) for s in items), "FIFO lost a prompt"
        assert [s.order for s in live] == sorted(s.order for s in live)
        assert self._sorted_tokens == sum(self._lens) and self._sorted_attn == sum(self._sqs)
        assert self.tokens == sum(s.prefill_len for s in self)
        assert self.attn == sum(s.prefill_len ** 2 for s in self)


def work_ahead(waiting: deque[Seq] | ShortFirstQueue, queued_tokens: int, queued_attn: int,
               in_progress: int, prompt_tokens: int) -> tuple[int, int, int]:
    """(tokens, attention sum, prompts) of an instance's queued prefill work that a new prompt
    of ``prompt_tokens`` tokens would wait for, in the queue order of ``waiting``: all of it
    under FCFS (a deque); under short-first the preempted, the aged and the new prompts not
    longer. ``queued_tokens`` / ``queued_attn`` are the instance's sums over ``waiting`` and
    the ``in_progress`` prompts already prefilling (always ahead). The one queue model of the
    engine's scheduler and of the live front end's instance book."""
    if type(waiting) is deque:
        return queued_tokens, queued_attn, len(waiting) + in_progress
    assert isinstance(waiting, ShortFirstQueue)
    tokens, attn, count = waiting.work_ahead(prompt_tokens)
    return (queued_tokens - waiting.tokens + tokens, queued_attn - waiting.attn + attn,
            count + in_progress)
