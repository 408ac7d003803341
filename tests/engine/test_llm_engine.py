"""LLMEngine end to end: parity with transformers under continuous batching, sampling, stops,
streaming, limits and errors, and memory after many requests."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch
from engine_helpers import FakeClock, HFPair, build_hf_pair, random_prompt

from dopd.engine.engine_options import EngineOptions
from dopd.engine.llm_engine import LLMEngine
from dopd.engine.model import LlamaModel, SamplingParams, build_tiny, generate_greedy
from dopd.engine.plan import FinishReason
from dopd.engine.request_state import IncrementalDetokenizer
from dopd.engine.sequence import SchedulerConfig
from dopd.errors import DopdError

pytest.importorskip("transformers")
pytestmark = pytest.mark.filterwarnings("ignore:.*past_key_values.*:FutureWarning")

GREEDY = SamplingParams(max_tokens=16, temperature=0.0, ignore_eos=True)


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> HFPair:
    torch.set_num_threads(1)
    return build_hf_pair(tmp_path_factory.mktemp("hf-llama"))


@pytest.fixture(scope="module")
def tiny_engine() -> LLMEngine:
    return LLMEngine(build_tiny(), EngineOptions(num_blocks=128))


def greedy(n: int) -> SamplingParams:
    return SamplingParams(max_tokens=n, temperature=0.0, ignore_eos=True)


def test_continuous_batching_matches_transformers_token_for_token(pair: HFPair) -> None:
    # a small token budget forces chunked prefills that share steps with running decodes
    opts = EngineOptions(num_blocks=64, block_size=8,
                         scheduler=SchedulerConfig(max_batched_tokens=24, max_num_seqs=8))
    engine = LLMEngine(pair.load(), opts)
    specs = [(5, 12), (40, 6), (17, 20), (3, 9), (61, 14), (29, 3)]  # (prompt, max_tokens)
    prompts = [random_prompt(n, seed=10 + i) for i, (n, _) in enumerate(specs)]
    joins = {0: [0, 1], 3: [2, 3], 7: [4, 5]}  # step -> requests added before it
    rid_of: dict[int, int] = {}
    got: dict[int, list[int]] = {}
    batches: list[set[int]] = []
    mixed_steps = 0
    step = 0
    while step in joins or engine.has_unfinished():
        for i in joins.get(step, []):
            rid_of[i] = engine.add_request(prompts[i], greedy(specs[i][1]))
            got[rid_of[i]] = []
        for out in engine.step():
            got[out.request_id].extend(out.new_token_ids)
        plan = engine.last_plan
        if plan is not None:
            batches.append(set(plan.decode_ids))
            mixed_steps += bool(plan.prefill and plan.decode_ids)
        step += 1
    for i, (_, max_new) in enumerate(specs):
        assert got[rid_of[i]] == pair.greedy(prompts[i], max_new), f"request {i}"
    # joins and leaves: a late request decodes with an early one; batches shrink and grow
    assert any({rid_of[0], rid_of[2]} <= b for b in batches)
    assert any({rid_of[0], rid_of[4]} <= b for b in batches)
    assert any(rid_of[0] in b and rid_of[1] not in b for b in batches[batches.index(
        {rid_of[0], rid_of[1]}):])  # request 1 left while request 0 kept decoding
    assert max(len(b) for b in batches) >= 4 and mixed_steps > 0
    assert engine.stats.prefill_tokens == sum(n for n, _ in specs)
    assert engine.blocks.used_blocks == 0 and not engine.records


def test_preemption_under_memory_pressure_keeps_tokens_exact(pair: HFPair) -> None:
    # 10 blocks of 8 tokens cannot hold four sequences growing to ~45 tokens: some are preempted
    # and recomputed, which must not change a single token
    opts = EngineOptions(num_blocks=14, block_size=8, scheduler=SchedulerConfig(watermark=0.0))
    engine = LLMEngine(pair.load(), opts)
    prompts = [random_prompt(20 + 3 * i, seed=30 + i) for i in range(4)]
    res = engine.generate(prompts, greedy(24))
    assert engine.stats.preemptions > 0
    for p, c in zip(prompts, res, strict=True):
        assert list(c.token_ids) == pair.greedy(p, 24)
    assert engine.blocks.used_blocks == 0


def test_seeded_sampling_is_independent_of_the_batch(tiny_engine: LLMEngine) -> None:
    params = SamplingParams(max_tokens=12, temperature=0.9, top_k=50, top_p=0.9, seed=7,
                            ignore_eos=True)
    alone = tiny_engine.generate(["seeded request"], params)[0].token_ids
    others = [SamplingParams(max_tokens=5 + i, temperature=1.3, seed=i) for i in range(3)]
    batch = tiny_engine.generate(["x", "seeded request", "y z", "w"],
                                 [others[0], params, others[1], others[2]])
    assert batch[1].token_ids == alone
    other_seed = tiny_engine.generate(["seeded request"], SamplingParams(
        max_tokens=12, temperature=0.9, top_k=50, top_p=0.9, seed=8, ignore_eos=True))
    assert other_seed[0].token_ids != alone


def test_unseeded_requests_derive_seeds_from_the_engine_seed() -> None:
    loaded = build_tiny()
    params = SamplingParams(max_tokens=10, temperature=1.0, ignore_eos=True)
    runs = [LLMEngine(loaded, EngineOptions(num_blocks=32, seed=s)).generate(["a", "a"], params)
            for s in (1, 1, 2)]
    assert [c.token_ids for c in runs[0]] == [c.token_ids for c in runs[1]]
    assert runs[0][0].token_ids != runs[0][1].token_ids  # request ids differ
    assert [c.token_ids for c in runs[0]] != [c.token_ids for c in runs[2]]


def test_top_k_one_is_greedy(tiny_engine: LLMEngine) -> None:
    sampled = tiny_engine.generate(["abc"], SamplingParams(max_tokens=10, temperature=2.0,
                                                           top_k=1, seed=3, ignore_eos=True))
    ref = generate_greedy(tiny_engine.model, tiny_engine.tokenizer.encode("abc"), 10)
    assert list(sampled[0].token_ids) == ref


def test_stop_token_and_stop_string(tiny_engine: LLMEngine) -> None:
    base = tiny_engine.generate(["The cat"], greedy(20))[0]
    stop_id = base.token_ids[5]
    first = base.token_ids.index(stop_id)
    res = tiny_engine.generate(["The cat"], SamplingParams(
        max_tokens=20, temperature=0.0, stop_token_ids=(stop_id,)))[0]
    assert res.token_ids == base.token_ids[: first + 1]
    assert res.finish_reason == FinishReason.STOP
    # a stop string: the text is cut before it, generation ends when it appears
    text = tiny_engine.tokenizer.decode(list(base.token_ids))
    stop = text[6:8]
    cut = text.index(stop)
    res = tiny_engine.generate(["The cat"], SamplingParams(max_tokens=20, temperature=0.0,
                                                           stop=(stop,)))[0]
    assert res.finish_reason == FinishReason.STOP
    assert res.text == text[:cut]
    assert len(res.token_ids) < 20


def test_eos_ends_a_request_unless_ignored() -> None:
    loaded = build_tiny()
    base = LLMEngine(loaded, EngineOptions(num_blocks=16)).generate(["hello"], greedy(8))[0]
    eos = base.token_ids[3]  # declare a token the model emits to be its EOS
    model = LlamaModel(dataclasses.replace(loaded.config, eos_token_ids=(eos,)),
                       loaded.model.weights)
    engine = LLMEngine(dataclasses.replace(loaded, model=model), EngineOptions(num_blocks=16))
    res = engine.generate(["hello"], SamplingParams(max_tokens=8, temperature=0.0))[0]
    assert res.token_ids == base.token_ids[: base.token_ids.index(eos) + 1]
    assert res.finish_reason == FinishReason.STOP
    ignore = engine.generate(["hello"], greedy(8))[0]
    assert ignore.token_ids == base.token_ids and ignore.finish_reason == FinishReason.LENGTH


def test_stream_text_equals_generate_text(tiny_engine: LLMEngine) -> None:
    params = SamplingParams(max_tokens=15, temperature=0.8, seed=11)
    whole = tiny_engine.generate(["stream me"], params)[0]
    outs = list(tiny_engine.stream("stream me", params))
    assert [t for o in outs for t in o.new_token_ids] == list(whole.token_ids)
    assert "".join(o.new_text for o in outs) == whole.text
    assert outs[-1].finished and not any(o.finished for o in outs[:-1])


def test_streamed_text_never_contains_the_stop_string(tiny_engine: LLMEngine) -> None:
    base = tiny_engine.generate(["stop strings"], greedy(12))[0]
    stop = base.text[4:7]
    cut = base.text.index(stop)
    outs = list(tiny_engine.stream("stop strings", SamplingParams(
        max_tokens=12, temperature=0.0, stop=(stop,), ignore_eos=True)))
    assert outs[-1].finish_reason == FinishReason.STOP
    joined = ""
    for o in outs:
        joined += o.new_text
        assert stop not in joined  # never sent, not even partly before the end
    assert joined == base.text[:cut]


def test_incremental_detokenizer_never_splits_a_character() -> None:
    tok = build_tiny().tokenizer
    text = "héllo wörld ✓ 𝄞 done"
    detok = IncrementalDetokenizer(tok, tok.encode("prompt"))
    pieces = [detok.add([b]) for b in text.encode("utf-8")]
    assert "".join(pieces) == text
    assert not any("\ufffd" in p for p in pieces)
    assert pieces[text.encode().index("✓".encode()) + 2] == "✓"  # with its third byte
    # invalid bytes come out after a bounded delay, and at the end
    garbage = IncrementalDetokenizer(tok, [])
    assert [garbage.add([0xE2]) != "" for _ in range(8)] == [False] * 7 + [True]
    assert garbage.add([0xE2]) == "" and garbage.add([], flush=True) == "\ufffd"


def test_context_window_clamps_output_and_rejects_long_prompts() -> None:
    engine = LLMEngine(build_tiny(), EngineOptions(num_blocks=64, max_model_len=40))
    res = engine.generate([list(range(1, 31))], greedy(100))[0]
    assert len(res.token_ids) == 10 and res.finish_reason == FinishReason.LENGTH
    with pytest.raises(DopdError, match="longer than the context window"):
        engine.add_request(list(range(1, 41)), greedy(1))
    assert not engine.records and engine.blocks.used_blocks == 0


@pytest.mark.parametrize(
    ("prompt", "params", "message"),
    [
        ([], None, "prompt is empty"),
        ([5, 99999], None, "out of the vocabulary"),
        ([-1], None, "out of the vocabulary"),
    ],
)
def test_bad_requests_raise(tiny_engine: LLMEngine, prompt, params, message: str) -> None:
    with pytest.raises(DopdError, match=message):
        tiny_engine.add_request(prompt, params)


def test_text_and_stop_strings_need_a_tokenizer() -> None:
    loaded = build_tiny()
    engine = LLMEngine(dataclasses.replace(loaded, tokenizer=None), EngineOptions(num_blocks=8))
    with pytest.raises(DopdError, match="need a model with a tokenizer"):
        engine.add_request("text")
    with pytest.raises(DopdError, match="stop strings need a tokenizer"):
        engine.add_request([1, 2], SamplingParams(stop=("x",)))
    res = engine.generate([[1, 2, 3]], greedy(4))[0]
    assert len(res.token_ids) == 4 and res.text == ""


def test_request_needing_more_kv_than_the_engine_has_raises() -> None:
    engine = LLMEngine(build_tiny(), EngineOptions(num_blocks=4, block_size=4))
    with pytest.raises(DopdError, match="more KV"):
        engine.add_request(list(range(1, 12)), greedy(10))
    engine.add_request([1, 2], greedy(3), request_id=7)
    with pytest.raises(DopdError, match="already on this engine"):
        engine.add_request([1, 2], greedy(3), request_id=7)


def test_bad_checkpoints_raise(tmp_path: Path) -> None:
    with pytest.raises(DopdError, match="not a model checkpoint"):
        LLMEngine.from_pretrained(tmp_path)
    folder = tmp_path / "gpt2"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"architectures": ["GPT2LMHeadModel"]}))
    with pytest.raises(DopdError, match="unsupported architecture"):
        LLMEngine.from_pretrained(folder)
    with pytest.raises(DopdError, match="unknown model"):
        LLMEngine.from_pretrained(tmp_path / "missing")
    with pytest.raises(DopdError, match="kv_cache_mb"):
        EngineOptions(kv_cache_mb=0)


def test_abort_frees_kv_mid_run() -> None:
    engine = LLMEngine(build_tiny(), EngineOptions(num_blocks=64))
    a = engine.add_request("first request", greedy(30))
    b = engine.add_request("second", greedy(5))
    for _ in range(3):
        engine.step()
    assert engine.abort(a) and not engine.abort(a)
    outs = [o for o in engine.iter_outputs()]
    assert {o.request_id for o in outs} == {b}
    assert engine.blocks.used_blocks == 0


def test_threads_option_and_kv_sizing() -> None:
    before = torch.get_num_threads()
    engine = LLMEngine(build_tiny(), EngineOptions(threads=1, kv_cache_mb=4, block_size=16))
    assert torch.get_num_threads() == 1
    torch.set_num_threads(before)
    assert engine.cache.num_blocks * engine.cache.bytes_per_block <= 4 * 2**20
    assert engine.cache.num_blocks == engine.blocks.num_blocks > 0


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096


def test_many_requests_leave_no_blocks_and_bounded_memory() -> None:
    clock = FakeClock()
    opts = EngineOptions(num_blocks=96, block_size=8,
                         scheduler=SchedulerConfig(max_batched_tokens=64, max_num_seqs=16))
    engine = LLMEngine(build_tiny(), opts, clock=clock)
    gen = torch.Generator().manual_seed(5)

    def wave(n: int) -> None:
        for i in range(n):
            length = int(torch.randint(1, 40, (1,), generator=gen))
            out = int(torch.randint(1, 24, (1,), generator=gen))
            engine.add_request(random_prompt(length, seed=i),
                               SamplingParams(max_tokens=out, temperature=1.0, seed=i))
            if i % 3 == 0:
                engine.step()
        for _ in engine.iter_outputs():
            clock.advance(0.01)

    wave(40)  # warm-up: allocator pools, staging buffers, tokenizer caches
    start = rss_bytes()
    for _ in range(4):
        wave(60)
    grown = rss_bytes() - start
    assert engine.blocks.used_blocks == 0 and engine.blocks.free_blocks == 96
    assert not engine.records and engine.scheduler.is_idle
    engine.scheduler.check()
    print(f"RSS growth over 240 requests: {grown / 2**20:.1f} MiB")
    assert grown < 32 * 2**20, f"RSS grew by {grown / 2**20:.1f} MiB"
