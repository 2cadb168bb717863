"""Prompt embeddings: prompts of any length in 75-token chunks (A1111's rule), CLIP skip (diffusers'
clip_skip one less), the negative prompt padded to the same chunks, and the cache per base: the
same prompt again skips the text encoder, exactly."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from errors import InvalidRequestError
from pipelines.engine import Engine
from pipelines.loop import prompt_embeddings

# A negative prompt of one chunk, as the prompt: each is one text encoder call.
REQUEST = {"steps": 2, "image_resolution": 256, "seed": 9, "negative_prompt": "lowres"}


def _encoder_calls(pipe) -> list[int]:
    calls = []
    pipe.text_encoder.register_forward_hook(lambda *args: calls.append(1))
    return calls


def test_the_same_prompt_again_skips_the_text_encoder_and_gives_the_same_images(
    settings, astronaut
):
    engine = Engine(settings, device="cpu")  # its own models: the hook stays off the shared ones
    calls = _encoder_calls(engine.base_pipeline())
    first = engine.generate("canny", astronaut, "a robot", **REQUEST)
    assert len(calls) == 2  # the prompt and the negative prompt
    again = engine.generate("canny", astronaut, "a robot", **{**REQUEST, "strength": 0.9})
    assert len(calls) == 2
    fresh = Engine(settings, device="cpu").generate("canny", astronaut, "a robot", **REQUEST)
    assert np.array_equal(first.images[0], fresh.images[0])
    assert not np.array_equal(again.images[0], first.images[0])  # the strength did change
    engine.generate("canny", astronaut, "a robot", **{**REQUEST, "negative_prompt": "blurry"})
    assert len(calls) == 4  # another negative prompt: both encoded again
    engine.generate("canny", astronaut, "a robot", guidance_scale=1.0, **REQUEST)
    assert len(calls) == 5  # no CFG: the prompt alone


def test_cached_embeddings_equal_diffusers_for_several_images(engine):
    pipe = engine.base_pipeline()
    expected = pipe.encode_prompt(
        "a cat",
        engine.device,
        num_images_per_prompt=3,
        do_classifier_free_guidance=True,
        negative_prompt="a dog",
    )
    for _ in range(2):  # encoded, then from the cache
        got = prompt_embeddings.encode_prompt(pipe, engine.device, "a cat", "a dog", 3)
        for mine, theirs in zip(got, expected, strict=True):
            assert torch.equal(mine, theirs)
            assert not mine.requires_grad


def test_the_cache_is_bounded(engine, monkeypatch):
    monkeypatch.setattr(prompt_embeddings, "PROMPT_CACHE_SIZE", 2)
    pipe = engine.base_pipeline()
    for prompt in ("one", "two", "three"):
        prompt_embeddings.encode_prompt(pipe, engine.device, prompt, None, 1)
    kept = list(pipe.__dict__[prompt_embeddings._CACHE_ATTRIBUTE])
    assert ("one", None, 1) not in kept and kept[-2:] == [("two", None, 1), ("three", None, 1)]


# ---- prompts of any length, CLIP skip ------------------------------------------------------------
def diffusers_ids(tokenizer, text: str) -> list[int]:
    """diffusers' `encode_prompt` tokens: padded to 77 with the pad token, cut at 77."""
    return tokenizer(text, padding="max_length", max_length=77, truncation=True).input_ids


def test_a_prompt_of_one_chunk_has_diffusers_tokens(engine):
    tokenizer = engine.base_pipeline().tokenizer
    for text in ("", "a cat", "x" * 75):
        assert prompt_embeddings.prompt_chunks(tokenizer, text) == [diffusers_ids(tokenizer, text)]


def test_long_prompts_are_cut_into_chunks_of_75_ending_after_a_near_comma(engine):
    tokenizer = engine.base_pipeline().tokenizer  # a token per character, ",</w>" after a word
    start, end = tokenizer.bos_token_id, tokenizer.eos_token_id

    def tokens(text):
        return tokenizer(text, add_special_tokens=False).input_ids

    plain = "x" * 180  # no comma: 75 + 75 + 30
    chunks = prompt_embeddings.prompt_chunks(tokenizer, plain)
    ids = tokens(plain)
    assert chunks == [
        [start, *ids[:75], end],
        [start, *ids[75:150], end],
        [start, *ids[150:], *[end] * 45, end],
    ]
    near = "y" * 60 + ", " + "z" * 40  # the comma is token 61 of 75: 15 back, within 20
    ids = tokens(near)
    comma = ids.index(tokenizer.get_vocab()[prompt_embeddings.COMMA])
    assert comma == 60
    first, second = prompt_embeddings.prompt_chunks(tokenizer, near)
    assert first == [start, *ids[:61], *[end] * 14, end]  # ends after the comma
    assert second[1 : 1 + len(ids) - 61] == ids[61:]
    far = "y" * 50 + ", " + "z" * 50  # the comma is 25 tokens back: a plain cut at 75
    ids = tokens(far)
    assert prompt_embeddings.prompt_chunks(tokenizer, far)[0] == [start, *ids[:75], end]


@pytest.mark.parametrize("clip_skip", [2, 3])
def test_clip_skip_n_reads_the_prompt_as_if_the_last_n_minus_1_layers_were_gone(engine, clip_skip):
    """The reference is built independently: a copy of the text encoder without its last
    layers, whose own output (through its final layer norm) is diffusers' prompt embedding."""
    pipe = engine.base_pipeline()
    layers = pipe.text_encoder.config.num_hidden_layers
    assert clip_skip <= layers + 1  # 3 on the tiny encoder's 2 layers: the token embeddings
    shortened = copy.deepcopy(pipe.text_encoder)
    kept = shortened.get_encoder().layers[: layers - (clip_skip - 1)]
    shortened.get_encoder().layers = torch.nn.ModuleList(kept)
    reference = copy.copy(pipe)
    reference.text_encoder = shortened
    theirs = reference.encode_prompt("a cat", engine.device, 1, True, negative_prompt="a dog")
    mine = prompt_embeddings.encode_prompt(pipe, engine.device, "a cat", "a dog", 1, clip_skip)
    for a, b in zip(mine, theirs, strict=True):
        assert torch.equal(a, b)
    last = prompt_embeddings.encode_prompt(pipe, engine.device, "a cat", "a dog", 1)
    assert not torch.equal(last[0], mine[0])


def test_the_shorter_prompt_is_padded_with_empty_chunks(engine):
    pipe = engine.base_pipeline()
    long_text = "a red house " * 20  # 9 tokens each (CLIP drops the spaces): 180, 3 chunks
    embeds, negative = prompt_embeddings.encode_prompt(pipe, engine.device, long_text, "dog", 2)
    assert embeds.shape[:2] == negative.shape[:2] == (2, 3 * 77)
    alone, _ = prompt_embeddings.encode_prompt(pipe, engine.device, "dog", None, 1)
    empty, _ = prompt_embeddings.encode_prompt(pipe, engine.device, "", None, 1)
    assert torch.equal(negative[:1, :77], alone)  # its own chunk first ...
    for chunk in range(1, 3):  # ... then empty ones
        assert torch.equal(negative[:1, 77 * chunk : 77 * (chunk + 1)], empty)
    shorter, longer = prompt_embeddings.encode_prompt(pipe, engine.device, "dog", long_text, 1)
    assert shorter.shape == longer.shape == (1, 3 * 77, embeds.shape[-1])  # either way round


def test_clip_skip_steers_the_images_and_is_recorded_only_when_not_one(engine, astronaut):
    from png_info import restore_values

    one = engine.generate("canny", astronaut, "a robot", **REQUEST)
    two = engine.generate("canny", astronaut, "a robot", clip_skip=2, **REQUEST)
    assert not np.array_equal(one.images[0], two.images[0])
    assert "clip_skip" not in one.parameters[0] and two.parameters[0]["clip_skip"] == 2
    assert restore_values(two.parameters[0])["clip_skip"] == 2
    assert restore_values(one.parameters[0])["clip_skip"] == 1
    with pytest.raises(InvalidRequestError, match="`clip_skip` must be between 1 and 4"):
        engine.generate("canny", astronaut, "a robot", clip_skip=5, **REQUEST)


def test_the_anime_line_art_condition_starts_at_clip_skip_2(engine, astronaut):
    from pipelines.request import GenerationRequest
    from png_info import a1111_infotext

    anime = GenerationRequest.build(engine.settings, "lineart_anime", astronaut, "1girl")
    assert anime.clip_skip == 2  # as its model was trained
    one = GenerationRequest.build(engine.settings, "lineart_anime", astronaut, "x", clip_skip=1)
    assert one.clip_skip == 1  # the person's choice wins
    assert GenerationRequest.build(engine.settings, "canny", astronaut, "x").clip_skip == 1
    result = engine.generate("lineart_anime", astronaut, "1girl", annotator="none", **REQUEST)
    assert result.parameters[0]["clip_skip"] == 2
    assert "Clip skip: 2" in a1111_infotext(result.parameters[0])
