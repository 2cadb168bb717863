"""Prompt embeddings: prompts of any length in 75-token chunks, CLIP skip, and a cache per base.

CLIP reads 77 tokens. Longer prompts follow the AUTOMATIC1111 web UI's rule (modules/
sd_hijack_clip.py, `tokenize_line`; the rule is followed, no code is taken from it): the prompt's
tokens are cut into chunks of 75, a chunk that fills up within 20 tokens after a comma ending
there instead (the rest moving to the next chunk), each chunk padded with end tokens and framed by
a start and an end token, encoded on its own, and the chunks' embeddings concatenated: (1, 77 k,
D). The UNet's and the ControlNets' cross-attention take any number of tokens. The negative prompt
and the prompt are padded to the same number of chunks with the embedding of an empty chunk (the
web UI's "pad prompt/negative prompt to be same length"), so both CFG branches stay one batch.

CLIP skip n (1-4, the web UI's "Clip skip"): the embeddings are the text encoder's hidden states
n - 1 layers before the last, through its final layer norm; 1 is the last layer. A prompt of one
chunk at CLIP skip 1 has exactly diffusers' `encode_prompt` tokens and embeddings, and CLIP skip n
equals diffusers' `clip_skip=n - 1` (tests/test_prompt_embeddings.py).

Embeddings are kept per base pipeline: a prompt run again (another seed, another strength, the
common way to explore) skips CLIP's text encoder and gets exactly the same embeddings. The cache
lives on the pipeline object, so it goes with it when the base is switched or freed.
"""

from __future__ import annotations

from collections import OrderedDict

import torch

PROMPT_CACHE_SIZE = 32  # (prompt, negative prompt) pairs per base; each is ~0.2 MB in fp16
_CACHE_ATTRIBUTE = "_prompt_embeds_cache"
_EMPTY_ATTRIBUTE = "_empty_chunk_embeds"
CHUNK_TOKENS = 75  # a chunk's prompt tokens, between its start and end tokens
COMMA_BACKTRACK = 20  # a full chunk ends after a comma at most this many tokens back
COMMA = ",</w>"  # CLIP's token for a comma that ends a word


def prompt_chunks(tokenizer, text: str) -> list[list[int]]:
    """The token ids of `text`'s chunks, each [start] + 75 tokens (padded with end tokens) +
    [end]: 77. An empty text is one chunk of padding."""
    tokens = tokenizer(text, add_special_tokens=False, truncation=False, verbose=False).input_ids
    comma = tokenizer.get_vocab().get(COMMA)
    chunks: list[list[int]] = []
    chunk: list[int] = []
    last_comma = -1
    for token in tokens:
        if token == comma:
            last_comma = len(chunk)
        elif len(chunk) == CHUNK_TOKENS and -1 != last_comma >= len(chunk) - COMMA_BACKTRACK:
            chunks.append(chunk[: last_comma + 1])  # end after the comma
            chunk, last_comma = chunk[last_comma + 1 :], -1
        if len(chunk) == CHUNK_TOKENS:
            chunks.append(chunk)
            chunk, last_comma = [], -1
        chunk.append(token)
    if chunk or not chunks:
        chunks.append(chunk)
    end = tokenizer.eos_token_id
    return [
        [tokenizer.bos_token_id, *chunk, *[end] * (CHUNK_TOKENS - len(chunk)), end]
        for chunk in chunks
    ]


def _encode_chunks(pipe, device, chunks: list[list[int]], clip_skip: int) -> torch.Tensor:
    """(1, 77 k, D): each chunk through the text encoder, at the layer CLIP skip picks."""
    encoder = pipe.text_encoder
    ids = torch.tensor(chunks, device=device)
    if clip_skip == 1:
        embeds = encoder(ids)[0]
    else:
        hidden = encoder(ids, output_hidden_states=True).hidden_states[-clip_skip]
        # transformers 5 puts the final layer norm on the model itself, 4 on its text_model.
        embeds = getattr(encoder, "text_model", encoder).final_layer_norm(hidden)
    dtype = encoder.dtype if encoder is not None else pipe.unet.dtype
    return embeds.to(dtype=dtype, device=device).reshape(1, -1, embeds.shape[-1])


def _pad_to(embeds: torch.Tensor, chunks: int, empty: torch.Tensor) -> torch.Tensor:
    """`embeds` (1, 77 k, D) with empty chunks after it up to `chunks` chunks."""
    missing = chunks - embeds.shape[1] // empty.shape[1]
    return torch.cat([embeds, *[empty] * missing], dim=1) if missing > 0 else embeds


def _encode(pipe, device, prompt: str, negative_prompt: str | None, clip_skip: int):
    tokenizer = pipe.tokenizer
    prompt_ids = prompt_chunks(tokenizer, prompt)
    embeds = _encode_chunks(pipe, device, prompt_ids, clip_skip)
    if negative_prompt is None:
        return embeds, None
    negative_ids = prompt_chunks(tokenizer, negative_prompt)
    negative = _encode_chunks(pipe, device, negative_ids, clip_skip)
    chunks = max(len(prompt_ids), len(negative_ids))
    if len(prompt_ids) != len(negative_ids):
        empty = _empty_chunk(pipe, device, clip_skip)
        embeds, negative = _pad_to(embeds, chunks, empty), _pad_to(negative, chunks, empty)
    return embeds, negative


def _empty_chunk(pipe, device, clip_skip: int) -> torch.Tensor:
    """The embedding of an empty chunk, the padding: encoded once per base and CLIP skip."""
    empty: dict = pipe.__dict__.setdefault(_EMPTY_ATTRIBUTE, {})
    if clip_skip not in empty:
        empty[clip_skip] = _encode_chunks(
            pipe, device, prompt_chunks(pipe.tokenizer, ""), clip_skip
        )
    return empty[clip_skip]


def encode_prompt(
    pipe,
    device: torch.device,
    prompt: str,
    negative_prompt: str | None,
    num_images: int,
    clip_skip: int = 1,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(prompt embeds, negative embeds or None), each (num_images, 77 k, D) for prompts of k
    chunks; `negative_prompt` None means no classifier-free guidance."""
    cache: OrderedDict = pipe.__dict__.setdefault(_CACHE_ATTRIBUTE, OrderedDict())
    key = (prompt, negative_prompt, clip_skip)
    if key in cache:
        cache.move_to_end(key)
    else:
        with torch.no_grad():
            cache[key] = _encode(pipe, device, prompt, negative_prompt, clip_skip)
        while len(cache) > PROMPT_CACHE_SIZE:
            cache.popitem(last=False)
    embeds, negative = cache[key]
    # diffusers repeats each prompt's embeddings num_images_per_prompt times: the same values.
    negative = None if negative is None else negative.repeat(num_images, 1, 1)
    return embeds.repeat(num_images, 1, 1), negative
