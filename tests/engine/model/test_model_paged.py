"""The paged forward's contract: input validation, and decode staging never changing results."""

from __future__ import annotations

import random

import pytest
import torch

from dopd.engine.model import (
    LlamaModel,
    ModelConfig,
    PagedKVCache,
    Segment,
    export_kv,
    import_kv,
)
from dopd.engine.model.tiny import random_hf_state_dict
from dopd.errors import DopdError

CONFIG = ModelConfig(
    architecture="LlamaForCausalLM",
    vocab_size=97,
    hidden_size=48,
    intermediate_size=80,
    num_layers=2,
    num_heads=6,
    num_kv_heads=2,
    head_dim=8,
    max_position_embeddings=512,
)


def make(staging: bool) -> LlamaModel:
    weights = random_hf_state_dict(CONFIG, seed=3, std=0.1)
    return LlamaModel.from_hf_state_dict(CONFIG, weights, decode_staging=staging)


@pytest.fixture(scope="module")
def models() -> tuple[LlamaModel, LlamaModel]:
    return make(True), make(False)


def test_invalid_segments_raise_before_writing(models: tuple[LlamaModel, LlamaModel]) -> None:
    model = models[1]
    cache = model.make_cache(4, block_size=4)
    cases = [
        ([], "at least one segment"),
        ([Segment([0], 0, [])], "no new tokens"),
        ([Segment([0], -1, [1])], "negative num_cached"),
        ([Segment([0], 3, [1, 2])], "cannot hold 5 tokens"),
        ([Segment([0, 4], 2, [1, 2, 3])], "block id 4 out of range"),
        ([Segment([0], 0, [1, 97])], "token id out of range"),
    ]
    for segments, message in cases:
        with pytest.raises(DopdError, match=message):
            model.forward(segments, cache)
    assert cache.data.abs().sum() == 0
    with pytest.raises(DopdError, match="does not match the model"):
        model.forward([Segment([0], 0, [1])], PagedKVCache(3, 4, 2, 8))
    with pytest.raises(DopdError, match=r"KV cache is torch\.bfloat16"):
        model.forward([Segment([0], 0, [1])], PagedKVCache(2, 4, 2, 8, dtype=torch.bfloat16))


def test_staging_matches_plain_gather_over_a_random_schedule(
    models: tuple[LlamaModel, LlamaModel],
) -> None:
    staged, plain = models
    rng = random.Random(5)
    bs = 4
    caches = (staged.make_cache(80, bs), plain.make_cache(80, bs))
    free = list(range(80))
    rng.shuffle(free)
    seqs: dict[int, dict] = {}
    next_id = 0
    hits, rebuilds = staged.staging.hits, staged.staging.rebuilds
    for _ in range(60):
        # joins and leaves change the decode batch now and then; otherwise it runs steadily
        if len(seqs) < 5 and rng.random() < 0.15:
            n = rng.randint(3, 30)
            seqs[next_id] = {"ids": [rng.randrange(97) for _ in range(n)], "done": 0, "table": []}
            next_id += 1
        if seqs and rng.random() < 0.05:
            sid = rng.choice(list(seqs))
            free.extend(seqs.pop(sid)["table"])
        segments = []
        for s in seqs.values():
            chunk = s["ids"][s["done"] : s["done"] + rng.randint(2, 9)] or [rng.randrange(97)]
            if chunk and s["done"] >= len(s["ids"]):
                s["ids"].append(chunk[0])
            need = -(-(s["done"] + len(chunk)) // bs)
            while len(s["table"]) < need:
                s["table"].append(free.pop())
            segments.append(Segment(list(s["table"]), s["done"], chunk))
            s["done"] += len(chunk)
        if not segments:
            continue
        got = staged.forward(segments, caches[0])
        ref = plain.forward(segments, caches[1])
        assert (got - ref).abs().max().item() < 1e-5
    assert torch.allclose(caches[0].data, caches[1].data, atol=1e-6)
    assert staged.staging.hits - hits > 20
    assert staged.staging.rebuilds - rebuilds > 2


def test_staging_is_dropped_when_blocks_are_reused_or_imported(
    models: tuple[LlamaModel, LlamaModel],
) -> None:
    staged, plain = models
    caches = (staged.make_cache(6, 8), plain.make_cache(6, 8))

    def both(segments: list[Segment]) -> None:
        got, ref = staged.forward(segments, caches[0]), plain.forward(segments, caches[1])
        assert (got - ref).abs().max().item() < 1e-5

    table = [3, 1, 4]
    both([Segment(table, 0, list(range(10)))])
    both([Segment(table, 10, [11])])
    both([Segment(table, 11, [12])])
    # the sequence ends; another one gets the same blocks and reaches the same length
    both([Segment(table, 0, list(range(40, 52)))])
    both([Segment(table, 12, [13])])
    both([Segment(table, 13, [14])])
    # its KV is overwritten from elsewhere (a migration) between two decode steps
    donor = make(False)
    donor_cache = donor.make_cache(4, 4)
    donor.forward([Segment([0, 1, 2, 3], 0, list(range(60, 74)))], donor_cache)
    payload = export_kv(donor_cache, [0, 1, 2, 3], 14)
    for cache in caches:
        import_kv(cache, table, payload)
    both([Segment(table, 14, [15])])


def test_decode_group_with_unequal_lengths_and_block_growth(
    models: tuple[LlamaModel, LlamaModel],
) -> None:
    staged, plain = models
    caches = (staged.make_cache(12, 2), plain.make_cache(12, 2))
    tables = [[0], [5], [9]]
    lengths = [1, 2, 2]
    for table, n in zip(tables, lengths, strict=True):
        for model, cache in zip(models, caches, strict=True):
            model.forward([Segment(table, 0, list(range(1, n + 1)))], cache)
    free = [1, 2, 3, 4, 6, 7, 8, 10, 11]
    for step in range(6):
        segs = []
        for i, table in enumerate(tables):
            if lengths[i] + 1 > len(table) * 2:
                table.append(free.pop(0))
            segs.append(Segment(list(table), lengths[i], [(7 * step + i) % 97]))
            lengths[i] += 1
        got, ref = staged.forward(segs, caches[0]), plain.forward(segs, caches[1])
        assert (got - ref).abs().max().item() < 1e-5


@pytest.mark.parametrize("lengths", [(9, 9, 9), (9, 3, 14)])
def test_prefill_batch_equals_separate_prefills(
    models: tuple[LlamaModel, LlamaModel], lengths: tuple[int, ...]
) -> None:
    model = models[1]
    rng = random.Random(sum(lengths))
    prompts = [[rng.randrange(97) for _ in range(n)] for n in lengths]
    tables = [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 10, 11]]
    batch_cache = model.make_cache(12, 4)
    batched = model.forward(
        [Segment(t, 0, p) for t, p in zip(tables, prompts, strict=True)], batch_cache
    )
    ref_cache = model.make_cache(12, 4)
    separate = torch.cat(
        [model.forward([Segment(t, 0, p)], ref_cache) for t, p in zip(tables, prompts, strict=True)]
    )
    assert (batched - separate).abs().max().item() < 1e-5
    assert torch.allclose(batch_cache.data, ref_cache.data, atol=1e-6)
