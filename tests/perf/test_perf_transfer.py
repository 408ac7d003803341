"""KV transfer time model."""

from __future__ import annotations

import pytest

from dopd.errors import DopdError
from dopd.perf import KVTransferModel, get_gpu, kv_bytes_per_token


def test_transfer_time_is_latency_plus_bytes_over_shared_bandwidth() -> None:
    link = KVTransferModel(base_latency_s=1e-3, bandwidth_Bps=10e9)
    assert link.transfer_time(0) == pytest.approx(1e-3)
    assert link.transfer_time(10e9) == pytest.approx(1.001)
    assert link.transfer_time(10e9, concurrent=4) == pytest.approx(4.001)
    assert link.transfer_time(2e9) < link.transfer_time(4e9)


def test_from_hardware_uses_nic_or_nvlink_per_gpu_of_the_instance() -> None:
    a100 = get_gpu("a100-80gb")
    nic = KVTransferModel.from_hardware("a100-80gb")
    assert nic.bandwidth_Bps == pytest.approx(0.8 * a100.nic_Bps)
    assert KVTransferModel.from_hardware("a100-80gb", tp=4).bandwidth_Bps == pytest.approx(
        4 * nic.bandwidth_Bps)
    nvlink = KVTransferModel.from_hardware("a100-80gb", link="NVLink", efficiency=1.0)
    assert nvlink.bandwidth_Bps == pytest.approx(a100.link_Bps)
    assert nvlink.base_latency_s < nic.base_latency_s
    # a 2k-token Llama-3-8B prompt moves 256 MiB: about 13 ms over one HDR NIC
    prompt = 2048 * kv_bytes_per_token("llama-3-8b")
    assert nic.transfer_time(prompt) == pytest.approx(1e-3 + prompt / 20e9)
    assert KVTransferModel.from_hardware("h100", base_latency_s=0.0).transfer_time(prompt) < \
        nic.transfer_time(prompt)


def test_bad_transfer_inputs_raise() -> None:
    with pytest.raises(DopdError, match="bandwidth"):
        KVTransferModel(1e-3, 0.0)
    with pytest.raises(DopdError, match="base latency"):
        KVTransferModel(-1.0, 1e9)
    link = KVTransferModel(0.0, 1e9)
    with pytest.raises(DopdError, match="bad transfer"):
        link.transfer_time(-5)
    with pytest.raises(DopdError, match="bad transfer"):
        link.transfer_time(5, concurrent=0)
    with pytest.raises(DopdError, match="unknown KV link 'pcie'"):
        KVTransferModel.from_hardware("h100", link="pcie")
