"""The attention backend is chosen by measurement, and SDPA is called with diffusers' layout."""

from __future__ import annotations

import types

import pytest
import torch
from torch.nn.attention import SDPBackend

from pipelines.speed import attention as attention_module
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
from testkit.tolerances import assert_within, sum_bound, unit_roundoff

SMALL_PROBE = {"levels": ((64, 8), (16, 16)), "batch": 1, "heads": 2, "context_tokens": 7}
CPU = torch.device("cpu")


@pytest.fixture
def clock(monkeypatch):
    """The timing's clock, moved only by the candidates below: each call costs what it says, so
    which one is faster does not depend on how busy or fast the machine is."""
    now = [0.0]
    monkeypatch.setattr(
        attention_module, "time", types.SimpleNamespace(perf_counter=lambda: now[0])
    )
    return now


def costing(clock, attention, seconds):
    def timed(query, key, value):
        clock[0] += seconds
        return attention(query, key, value)

    return timed


def attention_bound(query, key, value) -> float:
    """How far two float32 evaluations of softmax(q k^T / sqrt(d)) v can differ, to first order
    in u. A score is a sum of d products, each at most max|q| max|k|, scaled by 1 / sqrt(d) (one
    more rounding); errors e in the scores change the softmax weights by factors within
    exp(+-2 max|e|), and the exp, the sum over the key tokens and the division round them again;
    an output is a sum over the key tokens of weights adding up to 1 times values up to max|v|."""
    dim, tokens, u = query.shape[-1], key.shape[1], unit_roundoff(torch.float32)
    products = dim * float(query.abs().max() * key.abs().max())
    score_error = sum_bound(dim, products / dim**0.5) + 2 * u * products / dim**0.5
    weights_error = 2 * score_error + sum_bound(tokens, 1.0) + 8 * u  # relative
    return (weights_error + sum_bound(tokens, 1.0)) * float(value.abs().max())


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
    scale = float(value.abs().max())  # each output is a weighted mean of the values
    bound = attention_bound(query, key, value)
    assert_within(out, expected, bound, "attention:sdpa_vs_naive", scale=scale)


def test_the_measured_fastest_backend_is_chosen(clock):
    fast, slow = costing(clock, sdpa_attention, 0.001), costing(clock, sdpa_attention, 0.021)
    for candidates in (
        {"SDPA flash": fast, XFORMERS: slow},
        {XFORMERS: slow, "SDPA flash": fast},  # order does not matter
    ):
        backend = fastest(candidates, CPU, torch.float32, repeats=3, **SMALL_PROBE)
        assert backend.name == SDPA and backend.kernel == "flash"
        # Four attention calls a pass: 4 ms and 84 ms, exactly.
        assert backend.timings_ms == {"SDPA flash": 4.0, XFORMERS: 84.0}
        assert str(backend).startswith("PyTorch SDPA, flash kernel (fastest when measured on cpu")

    candidates = {"SDPA cuDNN": slow, XFORMERS: fast}
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
    # Left to itself, SDPA runs its flash kernel on these CPU inputs: the same kernel, bit for bit.
    assert torch.equal(flash, sdpa_attention(query, query, query))
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
        assert sdpa_attention(query, query, query).shape == query.shape
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
