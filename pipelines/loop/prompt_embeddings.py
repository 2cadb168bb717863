"""Text embeddings kept per base pipeline: a prompt run again (another seed, another strength, the
common way to explore) skips CLIP's text encoder, and gets exactly the same embeddings.

The cache lives on the pipeline object, so it goes with it when the base is switched or freed.
"""

from __future__ import annotations

from collections import OrderedDict

import torch

PROMPT_CACHE_SIZE = 32  # (prompt, negative prompt) pairs per base; each is ~0.2 MB in fp16
_CACHE_ATTRIBUTE = "_prompt_embeds_cache"


def encode_prompt(
    pipe, device: torch.device, prompt: str, negative_prompt: str | None, num_images: int
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(prompt embeds, negative embeds or None), each (num_images, 77, D), as diffusers'
    `encode_prompt` gives them; `negative_prompt` None means no classifier-free guidance."""
    cache: OrderedDict = pipe.__dict__.setdefault(_CACHE_ATTRIBUTE, OrderedDict())
    key = (prompt, negative_prompt)
    if key in cache:
        cache.move_to_end(key)
    else:
        with torch.no_grad():  # diffusers' encode_prompt does not turn autograd off itself
            cache[key] = pipe.encode_prompt(
                prompt,
                device,
                num_images_per_prompt=1,
                do_classifier_free_guidance=negative_prompt is not None,
                negative_prompt=negative_prompt,
            )
        while len(cache) > PROMPT_CACHE_SIZE:
            cache.popitem(last=False)
    embeds, negative = cache[key]
    # diffusers repeats each prompt's embeddings num_images_per_prompt times: the same values.
    negative = None if negative is None else negative.repeat(num_images, 1, 1)
    return embeds.repeat(num_images, 1, 1), negative
