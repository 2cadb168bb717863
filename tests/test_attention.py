"""The attention backend is chosen by measurement, and SDPA is called with diffusers' layout."""

from __future__ import annotations

import time

import pytest
import torch
from torch.nn.attention import SDPBackend

from pipelines.speed.attention import (
    SDPA,
    XFORMERS,
    AttentionBackend,
    fastest,
    prefer_sdpa_kernel,
    probe_attention_backend,
    sdpa_attention,
    sdpa_kernel_attention,
    time_attention,
)

SMALL_PROBE = {"levels": ((64, 8), (16, 16)), "batch": 1, "heads": 2, "context_tokens": 7}
CPU = torch.device("cpu")


def slowed(attention, seconds=0.02):
    def slow(query, key, value):
        time.sleep(seconds)
        return attention(query, key, value)

    return slow


def broken(query, key, value):
    raise RuntimeError("No available kernel. Aborting execution.")


def test_sdpa_attention_takes_batch_tokens_heads_dim_like_xformers():
    generator = torch.Generator().manual_seed(0)
    query, key, value = (torch.randn(2, 16, 3, 8, generator=generator) for _ in range(3))
    key, value = key[:, :5], value[:, :5]  # cross-attention: fewer key tokens than queries
    heads_first = [t.transpose(1, 2) for t in (query, key, value)]  # (B, H, M, K)
    weights = torch.softmax(heads_first[0] @ heads_first[1].transpose(-1, -2) / 8**0.5, dim=-1)
    expected = (weights @ heads_first[2]).transpose(1, 2)
    out = sdpa_attention(query, key, value)
    assert out.shape == query.shape
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)


def test_the_measured_fastest_backend_is_chosen():
    for candidates in (
        {"SDPA flash": sdpa_attention, XFORMERS: slowed(sdpa_attention)},
        {XFORMERS: slowed(sdpa_attention), "SDPA flash": sdpa_attention},  # order does not matter
    ):
        backend = fastest(candidates, CPU, torch.float32, repeats=3, **SMALL_PROBE)
        assert backend.name == SDPA and backend.kernel == "flash"
        assert backend.timings_ms[XFORMERS] > backend.timings_ms["SDPA flash"] > 0
        assert str(backend).startswith("PyTorch SDPA, flash kernel (fastest when measured on cpu")

    candidates = {"SDPA cuDNN": slowed(sdpa_attention), XFORMERS: sdpa_attention}
    backend = fastest(candidates, CPU, torch.float32, repeats=3, **SMALL_PROBE)
    assert backend.name == XFORMERS and backend.kernel is None


def test_a_candidate_that_cannot_run_is_left_out_and_named():
    candidates = {"SDPA cuDNN": broken, "SDPA memory-efficient": sdpa_attention}
    backend = fastest(candidates, CPU, torch.float32, repeats=2, **SMALL_PROBE)
    assert backend.kernel == "memory-efficient" and "SDPA cuDNN" not in backend.timings_ms
    assert "SDPA cuDNN: cannot run here" in backend.reason

    nothing = fastest({"SDPA cuDNN": broken}, CPU, torch.float32, repeats=2, **SMALL_PROBE)
    assert nothing.name == SDPA and nothing.kernel is None and "no candidate" in nothing.reason


def test_timing_covers_self_and_cross_attention_at_every_level():
    calls = []

    def counting(query, key, value):
        calls.append((query.shape[1], key.shape[1], query.shape[3]))
        return sdpa_attention(query, key, value)

    milliseconds = time_attention(counting, CPU, torch.float32, repeats=3, **SMALL_PROBE)
    assert milliseconds > 0
    one_pass = [(64, 64, 8), (64, 7, 8), (16, 16, 16), (16, 7, 16)]
    assert calls == one_pass * (1 + 3)  # the warm-up, then each timed pass


def test_one_sdpa_kernel_alone_raises_where_it_cannot_run():
    query = torch.randn(1, 8, 2, 4)
    # A CPU has a flash kernel of its own, but no cuDNN one: alone, that one cannot run.
    flash = sdpa_kernel_attention("flash")(query, query, query)
    torch.testing.assert_close(flash, sdpa_attention(query, query, query))
    with pytest.raises(RuntimeError, match="No viable backend"):
        sdpa_kernel_attention("cuDNN")(query, query, query)
    backend = fastest(
        {
            "SDPA cuDNN": sdpa_kernel_attention("cuDNN"),
            "SDPA flash": sdpa_kernel_attention("flash"),
        },
        CPU,
        torch.float32,
        repeats=2,
        **SMALL_PROBE,
    )
    assert backend.kernel == "flash" and list(backend.timings_ms) == ["SDPA flash"]


def test_the_preferred_kernel_goes_first_and_nothing_is_disabled():
    before = torch._C._get_sdp_priority_order()
    with prefer_sdpa_kernel("cuDNN"):
        order = torch._C._get_sdp_priority_order()
        assert order[0] == int(SDPBackend.CUDNN_ATTENTION)
        assert order.index(int(SDPBackend.FLASH_ATTENTION)) < order.index(int(SDPBackend.MATH))
        assert torch.backends.cuda.flash_sdp_enabled()
        assert torch.backends.cuda.mem_efficient_sdp_enabled()
        assert torch.backends.cuda.math_sdp_enabled()
        assert torch.backends.cuda.cudnn_sdp_enabled()
        query = torch.randn(1, 8, 2, 4)
        torch.testing.assert_close(sdpa_attention(query, query, query).shape, query.shape)
    assert torch._C._get_sdp_priority_order() == before


def test_kernels_context_only_for_a_chosen_sdpa_kernel():
    before = torch._C._get_sdp_priority_order()
    with AttentionBackend(SDPA, "torch's order").kernels():
        assert torch._C._get_sdp_priority_order() == before
    with AttentionBackend(SDPA, "measured", kernel="memory-efficient").kernels():
        assert torch._C._get_sdp_priority_order()[0] == int(SDPBackend.EFFICIENT_ATTENTION)


def test_nothing_is_measured_on_a_cpu():
    for compiled in (False, True):
        backend = probe_attention_backend(CPU, compiled=compiled)
        assert backend.name == SDPA and backend.kernel is None and not backend.timings_ms
        assert "nothing to measure on cpu" in str(backend)
