"""P/D hand-off between two engines: KV transfer, leases, timeouts and the recompute fallback."""

from __future__ import annotations

import pytest
import torch
from engine_helpers import FakeClock, HFPair, build_hf_pair, random_prompt

from dopd.engine.engine_options import EngineOptions
from dopd.engine.kv_handoff import KVHandle
from dopd.engine.llm_engine import LLMEngine
from dopd.engine.model import KVPayload, SamplingParams, build_tiny
from dopd.engine.plan import FinishReason
from dopd.engine.request_state import RequestOutput
from dopd.engine.sequence import SchedulerConfig
from dopd.errors import DopdError
from dopd.kv.in_process import transfer_in_process
from dopd.types import Role

pytest.importorskip("transformers")
pytestmark = pytest.mark.filterwarnings("ignore:.*past_key_values.*:FutureWarning")


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> HFPair:
    torch.set_num_threads(1)
    return build_hf_pair(tmp_path_factory.mktemp("hf-llama-pd"), seed=3)


def greedy(n: int) -> SamplingParams:
    return SamplingParams(max_tokens=n, temperature=0.0, ignore_eos=True)


def engines(loaded_p, loaded_d, clock: FakeClock, *, p_block: int = 16, d_block: int = 16,
            d_blocks: int = 64, lease_s: float = 5.0, timeout_s: float = 2.0):
    prefill = LLMEngine(loaded_p, EngineOptions(role=Role.PREFILL, num_blocks=64,
                                                block_size=p_block, kv_lease_s=lease_s),
                        clock=clock, name="P0")
    decode = LLMEngine(loaded_d, EngineOptions(role=Role.DECODE, num_blocks=d_blocks,
                                               block_size=d_block, kv_timeout_s=timeout_s),
                       clock=clock, name="D0")
    return prefill, decode


def run_prefill(engine: LLMEngine) -> list[RequestOutput]:
    outs: list[RequestOutput] = []
    while engine.has_unfinished():
        outs.extend(engine.step())
    return outs


def drain(engine: LLMEngine, tokens: dict[int, list[int]], clock: FakeClock | None = None,
          reasons: dict[int, FinishReason | None] | None = None) -> None:
    while engine.has_unfinished():
        for out in engine.step():
            tokens.setdefault(out.request_id, []).extend(out.new_token_ids)
            if out.finished and reasons is not None:
                reasons[out.request_id] = out.finish_reason
        if clock is not None:
            clock.advance(0.1)


def test_prefill_on_one_engine_decode_on_another_matches_transformers(pair: HFPair) -> None:
    clock = FakeClock()
    # different block sizes: the KV is re-laid-out on import
    prefill, decode = engines(pair.load(), pair.load(), clock, p_block=16, d_block=8)
    specs = [(9, 10), (33, 7), (20, 14)]
    prompts = [random_prompt(n, seed=50 + i) for i, (n, _) in enumerate(specs)]
    rids = [prefill.add_request(p, greedy(m)) for p, (_, m) in zip(prompts, specs, strict=True)]
    tokens: dict[int, list[int]] = {}
    for out in run_prefill(prefill):
        assert out.kv_handle is not None and not out.finished
        assert out.new_token_ids == (out.kv_handle.first_token,)
        tokens[out.request_id] = list(out.new_token_ids)
        assert transfer_in_process(prefill, decode, out.kv_handle)
    assert prefill.blocks.used_blocks == 0 and not prefill.records
    drain(decode, tokens)
    for rid, p, (_, m) in zip(rids, prompts, specs, strict=True):
        assert tokens[rid] == pair.greedy(p, m)
    st = decode.stats
    assert st.kv_imports == 3 and st.kv_recomputes == 0 and st.prefill_tokens == 0
    assert prefill.stats.kv_exports == 3 and decode.blocks.used_blocks == 0


def test_seeded_sampling_continues_across_the_handoff() -> None:
    loaded = build_tiny()
    params = SamplingParams(max_tokens=12, temperature=0.9, top_p=0.95, seed=21, ignore_eos=True)
    mixed = LLMEngine(loaded, EngineOptions(num_blocks=32)).generate(["split me"], params)[0]
    clock = FakeClock()
    prefill, decode = engines(loaded, build_tiny(), clock)
    prefill.add_request("split me", params)
    (out,) = run_prefill(prefill)
    assert out.kv_handle is not None
    # an eager transfer: the payload travels inside the handle (as bytes, as over a socket)
    payload = KVPayload.from_bytes(prefill.fetch_kv(out.kv_handle).to_bytes())
    assert prefill.release_kv(out.request_id)
    decode.accept_remote(out.kv_handle.with_payload(payload))
    tokens = {out.request_id: list(out.new_token_ids)}
    drain(decode, tokens)
    assert tuple(tokens[out.request_id]) == mixed.token_ids


def test_kv_that_never_arrives_is_recomputed_after_the_timeout(pair: HFPair) -> None:
    clock = FakeClock()
    prefill, decode = engines(pair.load(), pair.load(), clock, timeout_s=2.0)
    p = random_prompt(26, seed=70)
    prefill.add_request(p, greedy(9))
    (out,) = run_prefill(prefill)
    handle = out.kv_handle
    assert handle is not None
    decode.accept_remote(handle)  # the transport never delivers
    assert decode.step() == [] and decode.stats.kv_recomputes == 0  # waiting, KV reserved
    assert decode.blocks.used_blocks > 0
    clock.advance(2.5)
    tokens = {out.request_id: list(out.new_token_ids)}
    drain(decode, tokens)
    assert tokens[out.request_id] == pair.greedy(p, 9)
    assert decode.stats.kv_recomputes == 1 and decode.stats.prefill_tokens == len(p) + 1
    # the source's lease runs out on its own; a late fetch fails, late KV is ignored
    clock.advance(10.0)
    prefill.step()
    assert prefill.stats.lease_expiries == 1 and prefill.blocks.used_blocks == 0
    with pytest.raises(DopdError, match="lease"):
        prefill.fetch_kv(handle)
    assert not decode.deliver_kv(handle.request_id, KVPayload(torch.zeros(2, 2, 26, 2, 16)))


def test_expired_lease_makes_the_transfer_fall_back_to_recompute(pair: HFPair) -> None:
    clock = FakeClock()
    prefill, decode = engines(pair.load(), pair.load(), clock, lease_s=1.0)
    p = random_prompt(15, seed=71)
    prefill.add_request(p, greedy(6))
    (out,) = run_prefill(prefill)
    clock.advance(1.5)
    assert out.kv_handle is not None
    assert not transfer_in_process(prefill, decode, out.kv_handle)
    tokens = {out.request_id: list(out.new_token_ids)}
    drain(decode, tokens)
    assert tokens[out.request_id] == pair.greedy(p, 6)
    assert decode.stats.kv_recomputes == 1 and decode.stats.kv_imports == 0


def test_import_waits_for_free_blocks(pair: HFPair) -> None:
    clock = FakeClock()
    # the decode engine holds one request's KV at a time: the second waits for blocks
    prefill, decode = engines(pair.load(), pair.load(), clock, d_block=8, d_blocks=7,
                              timeout_s=1000.0)
    prompts = [random_prompt(30, seed=80), random_prompt(28, seed=81)]
    for p in prompts:
        prefill.add_request(p, greedy(12))
    tokens: dict[int, list[int]] = {}
    for out in run_prefill(prefill):
        tokens[out.request_id] = list(out.new_token_ids)
        assert out.kv_handle is not None
        assert transfer_in_process(prefill, decode, out.kv_handle)
    assert decode.scheduler.num_reserved == 0 and len(decode.pending) == 1
    drain(decode, tokens, clock)
    for rid, p in enumerate(prompts):
        assert tokens[rid] == pair.greedy(p, 12)
    assert decode.stats.kv_imports == 2 and decode.blocks.used_blocks == 0


def test_handles_and_hand_off_errors() -> None:
    clock = FakeClock()
    loaded = build_tiny()
    prefill, decode = engines(loaded, loaded, clock)
    prefill.add_request([1, 2, 3], greedy(4))
    prefill.add_request([4, 5], greedy(1))  # done at its first token: no hand-off
    outs = run_prefill(prefill)
    handle = next(o.kv_handle for o in outs if o.kv_handle is not None)
    done = next(o for o in outs if o.kv_handle is None)
    assert done.finished and done.finish_reason == FinishReason.LENGTH
    with pytest.raises(DopdError, match="not 'D0'"):
        decode.fetch_kv(handle)
    with pytest.raises(DopdError, match="prefill engine hands requests off"):
        prefill.generate(["x"])
    decode.accept_remote(handle)
    with pytest.raises(DopdError, match="already on this engine"):
        decode.accept_remote(handle)
    with pytest.raises(DopdError, match="KV of 2 tokens"):
        decode.deliver_kv(handle.request_id, KVPayload(torch.zeros(4, 2, 2, 4, 32)))
    assert decode.abort(handle.request_id) and not decode.pending
    assert prefill.abort(handle.request_id) and prefill.blocks.used_blocks == 0
    kw = dict(request_id=1, source="P", prompt_ids=(1, 2), first_token=3, num_tokens=2,
              block_ids=(0,), block_size=16, lease_deadline=1.0, params=greedy(4), seed=0,
              max_tokens=4)
    KVHandle(**kw)
    with pytest.raises(DopdError, match="3 KV tokens"):
        KVHandle(**{**kw, "num_tokens": 3})
    with pytest.raises(DopdError, match="cannot hold"):
        KVHandle(**{**kw, "block_size": 1})
    with pytest.raises(DopdError, match="nothing left to decode"):
        KVHandle(**{**kw, "max_tokens": 1})
    prefill.role = Role.MIXED  # a role switch applies from the next step
    assert len(prefill.generate([[1, 2]], greedy(3))[0].token_ids) == 3
    small = LLMEngine(loaded, EngineOptions(role=Role.DECODE, num_blocks=8, max_model_len=3))
    with pytest.raises(DopdError, match="no room to decode"):
        small.accept_remote(KVHandle(**kw))


def test_mixed_engine_decodes_remote_and_local_requests_together(pair: HFPair) -> None:
    clock = FakeClock()
    prefill = LLMEngine(pair.load(), EngineOptions(role=Role.PREFILL, num_blocks=32),
                        clock=clock, name="P")
    mixed = LLMEngine(pair.load(), EngineOptions(
        num_blocks=64, scheduler=SchedulerConfig(max_batched_tokens=32)), clock=clock, name="M")
    remote_p, local_p = random_prompt(18, seed=90), random_prompt(44, seed=91)
    local = mixed.add_request(local_p, greedy(10))
    prefill.add_request(remote_p, greedy(10), request_id=100)
    (out,) = run_prefill(prefill)
    assert out.kv_handle is not None
    mixed.step()  # the local prompt's first chunk
    assert transfer_in_process(prefill, mixed, out.kv_handle)
    tokens = {100: list(out.new_token_ids)}
    drain(mixed, tokens)
    assert tokens[100] == pair.greedy(remote_p, 10)
    assert tokens[local] == pair.greedy(local_p, 10)
    assert mixed.stats.max_decode_batch == 2


def test_request_states_are_set_as_the_request_moves() -> None:
    """WAITING -> PREFILLING (a chunk ran) -> TRANSFERRING (prefilled, KV leased; accepted,
    KV awaited) -> DECODING (imported) -> FINISHED, on both engines of a hand-off."""
    from dopd.engine.sequence import SchedulerConfig
    from dopd.types import RequestState

    clock = FakeClock()
    loaded = build_tiny()
    sched = SchedulerConfig(max_batched_tokens=16, chunked_prefill=True)
    prefill = LLMEngine(loaded, EngineOptions(role=Role.PREFILL, num_blocks=64, scheduler=sched),
                        clock=clock, name="P0")
    decode = LLMEngine(build_tiny(), EngineOptions(role=Role.DECODE, num_blocks=64),
                       clock=clock, name="D0")
    rid = prefill.add_request(list(range(1, 41)), greedy(4))
    assert prefill.request_state(rid) == RequestState.WAITING
    assert prefill.step() == []  # the first 16 of 40 prompt tokens
    assert prefill.request_state(rid) == RequestState.PREFILLING
    outs = run_prefill(prefill)
    assert [o.state for o in outs] == [RequestState.TRANSFERRING]
    assert prefill.request_state(rid) == RequestState.TRANSFERRING  # held under its lease
    handle = outs[0].kv_handle
    assert handle is not None
    decode.accept_remote(handle)
    assert decode.request_state(rid) == RequestState.TRANSFERRING  # its KV is awaited
    decode.deliver_kv(rid, prefill.fetch_kv(handle))
    prefill.release_kv(rid)
    assert decode.request_state(rid) == RequestState.DECODING
    assert prefill.request_state(rid) is None
    states = []
    while decode.has_unfinished():
        states += [o.state for o in decode.step()]
    assert states[:-1] == [RequestState.DECODING] * (len(states) - 1)
    assert states[-1] == RequestState.FINISHED


def test_a_recomputed_request_keeps_its_state_order() -> None:
    """KV that never comes: the decode engine prefills the prompt itself, and the request's
    state never goes back (TRANSFERRING, then DECODING)."""
    from dopd.types import RequestState

    clock = FakeClock()
    prefill, decode = engines(build_tiny(), build_tiny(), clock, timeout_s=1.0)
    rid = prefill.add_request([5, 6, 7, 8], greedy(3))
    (out,) = run_prefill(prefill)
    assert out.kv_handle is not None
    decode.accept_remote(out.kv_handle)
    clock.advance(2.0)  # past the KV timeout: recompute
    states = []
    while decode.has_unfinished():
        states += [o.state for o in decode.step()]
        assert decode.request_state(rid) in (None, RequestState.TRANSFERRING,
                                             RequestState.DECODING)
    assert decode.stats.kv_recomputes == 1 and states[-1] == RequestState.FINISHED
    assert states == sorted(states)
