"""The attention backend is chosen by measurement, and SDPA is called with diffusers' layout."""

from __future__ import annotations

import time

import torch

from pipelines.attention import (
    SDPA,
    XFORMERS,
    fastest,
    probe_attention_backend,
    sdpa_attention,
    time_attention,
)

SMALL_PROBE = {"query_shape": (1, 64, 2, 8), "key_tokens": (64, 7), "repeats": 3}


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


def slowed(attention, seconds=0.004):
    def slow(query, key, value):
        time.sleep(seconds)
        return attention(query, key, value)

    return slow


def test_the_measured_fastest_backend_is_chosen():
    cpu = torch.device("cpu")
    for candidates in (
        {SDPA: sdpa_attention, XFORMERS: slowed(sdpa_attention)},
        {XFORMERS: slowed(sdpa_attention), SDPA: sdpa_attention},  # order does not matter
    ):
        backend = fastest(candidates, cpu, torch.float32, **SMALL_PROBE)
        assert backend.name == SDPA
        assert backend.timings_ms[XFORMERS] > backend.timings_ms[SDPA] > 0
        assert "fastest when measured on cpu" in str(backend) and "xformers" in str(backend)

    candidates = {SDPA: slowed(sdpa_attention), XFORMERS: sdpa_attention}
    assert fastest(candidates, cpu, torch.float32, **SMALL_PROBE).name == XFORMERS


def test_timing_covers_every_probe_attention():
    calls = []

    def counting(query, key, value):
        calls.append(key.shape[1])
        return sdpa_attention(query, key, value)

    milliseconds = time_attention(counting, torch.device("cpu"), torch.float32, **SMALL_PROBE)
    assert milliseconds > 0
    assert calls == [64, 7] * (1 + SMALL_PROBE["repeats"])  # warm-up, then each timed pass


def test_no_xformers_on_cpu_and_none_under_compile():
    assert probe_attention_backend(torch.device("cpu")).name == SDPA
    compiled = probe_attention_backend(torch.device("cpu"), compiled=True)
    assert compiled.name == SDPA and "compiled" in str(compiled) and not compiled.timings_ms
