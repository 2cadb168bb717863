"""Tiny ZoeDepth, Depth Anything V2 and OneFormer models for tests, saved like their Hub repos.

Each is the real architecture class with the real repo's structural settings (the values below
marked "real" are those of the public conversion scripts and Hub configs) scaled down: fewer
layers, narrower, and a smaller processor input size so that a forward pass on a CPU takes a
fraction of a second. Weights are seeded random, perturbed (`_perturb`) so that the outputs vary
over the image instead of sitting on the initialiser's constants. Files:

- `Intel/zoedepth-nyu-kitti`: config.json, model.safetensors, preprocessor_config.json
  (`ZoeDepthImageProcessor`: reflect padding, keep aspect ratio, multiples of 32, mean = std = 0.5).
- `depth-anything/Depth-Anything-V2-Small-hf`: config.json, model.safetensors,
  preprocessor_config.json (`DPTImageProcessor`: keep aspect ratio, multiples of 14, ImageNet
  mean and std, bicubic).
- `shi-labs/oneformer_{ade20k,coco}_swin_large`: config.json, model.safetensors,
  preprocessor_config.json (`OneFormerImageProcessor` naming `class_info_file` and
  `repo_path: shi-labs/oneformer_demo`, as the Hub's do), and the slow CLIP tokenizer's files
  (vocab.json, merges.txt, tokenizer_config.json, special_tokens_map.json) from a small vocabulary.
- `shi-labs/oneformer_demo`: ade20k_panoptic.json, coco_panoptic.json ({"<id>": {"name",
  "isthing"}} per class, the layout the image processor reads).
"""

from __future__ import annotations

import json
import string
from pathlib import Path

import torch

from annotators.ade20k import ADE20K_CLASSES
from annotators.coco_panoptic import COCO_PANOPTIC_CLASSES
from annotators.oneformer import ADE20K_CLASS_INFO, COCO_CLASS_INFO
from settings import DEFAULT_MODEL_IDS

ZOE_ID = DEFAULT_MODEL_IDS["depth_zoe"]
DEPTH_ANYTHING_ID = DEFAULT_MODEL_IDS["depth_anything"]
ONEFORMER_ADE20K_ID = DEFAULT_MODEL_IDS["segmenter_oneformer_ade20k"]
ONEFORMER_COCO_ID = DEFAULT_MODEL_IDS["segmenter_oneformer_coco"]
CLASS_INFO_ID = DEFAULT_MODEL_IDS["oneformer_class_info"]
# COCO panoptic lists its 80 thing classes first, then the 53 stuff classes.
COCO_THINGS = 80
# Added to every random weight: enough that the tiny outputs vary across the image.
PERTURBATION = 0.1
# Depth Anything's relative head ends in a ReLU: a positive last bias keeps random outputs above
# it, so the map varies instead of being all zeros.
DEPTH_ANYTHING_HEAD_BIAS = 1.0
# OneFormer's query position, class and mask embeddings scaled up: the queries then differ, each
# prefers a class clearly and its mask is sharp, so the semantic map holds several classes
# instead of one everywhere.
ONEFORMER_EMBED_SCALE = 50.0
# The ImageNet mean and std (the OneFormer and Depth Anything processors' real values).
IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]


def _perturb(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in model.parameters():
            noise = torch.randn(parameter.shape, generator=generator) * PERTURBATION
            parameter.add_(noise.to(parameter.dtype))
    return model.eval()


def save_tiny_zoe(folder: Path, seed: int = 0) -> Path:
    """ZoeD-M12-NK scaled down: BEiT with relative position bias, two bin heads (nyu, kitti)."""
    from transformers import (
        BeitConfig,
        ZoeDepthConfig,
        ZoeDepthForDepthEstimation,
        ZoeDepthImageProcessor,
    )

    torch.manual_seed(seed)
    backbone = BeitConfig(  # real: BEiT-L 384, 24 layers of 1024, out at stages 6/12/18/24
        image_size=384,
        num_hidden_layers=4,
        hidden_size=32,
        intermediate_size=37,
        num_attention_heads=2,
        use_relative_position_bias=True,
        reshape_hidden_states=False,
        out_features=["stage1", "stage2", "stage3", "stage4"],
    )
    config = ZoeDepthConfig(
        backbone_config=backbone,
        neck_hidden_sizes=[8, 16, 32, 32],  # real: [256, 512, 1024, 1024]
        fusion_hidden_size=16,
        bottleneck_features=16,
        num_relative_features=8,
        bin_embedding_dim=16,
        num_attractors=[4, 2, 2, 1],
        bin_centers_type="softplus",  # real (ZoeD-NK)
        bin_configurations=[  # real names and depth ranges; 64 bins each in the real one
            {"name": "nyu", "n_bins": 8, "min_depth": 1e-3, "max_depth": 10.0},
            {"name": "kitti", "n_bins": 8, "min_depth": 1e-3, "max_depth": 80.0},
        ],
        # transformers runs 4 patch-transformer layers and a 128-wide classifier whatever the
        # config says: these three are the real values.
        num_patch_transformer_layers=4,
        patch_transformer_hidden_size=128,
        patch_transformer_num_attention_heads=4,
        patch_transformer_intermediate_size=32,  # real: 1024
    )
    target = folder / ZOE_ID
    _perturb(ZoeDepthForDepthEstimation(config), seed).save_pretrained(target)
    ZoeDepthImageProcessor(  # real: 384 x 512; the same 3:4 aspect, smaller
        do_pad=True,
        do_resize=True,
        size={"height": 96, "width": 128},
        keep_aspect_ratio=True,
        ensure_multiple_of=32,
        do_rescale=True,
        do_normalize=True,
        image_mean=[0.5, 0.5, 0.5],
        image_std=[0.5, 0.5, 0.5],
    ).save_pretrained(target)
    return target


def save_tiny_depth_anything(folder: Path, seed: int = 0) -> Path:
    """Depth Anything V2 small scaled down: DINOv2 (patch 14) + DPT head, relative depth."""
    from transformers import (
        DepthAnythingConfig,
        DepthAnythingForDepthEstimation,
        Dinov2Config,
        DPTImageProcessor,
    )

    torch.manual_seed(seed)
    backbone = Dinov2Config(  # real: ViT-S/14 at 518, 12 layers of 384, out at 3/6/9/12
        image_size=518,
        patch_size=14,
        hidden_size=32,
        num_hidden_layers=4,
        num_attention_heads=2,
        mlp_ratio=1,
        out_indices=[1, 2, 3, 4],
        reshape_hidden_states=False,
    )
    config = DepthAnythingConfig(
        backbone_config=backbone,
        reassemble_hidden_size=32,  # real: 384 (the backbone width)
        neck_hidden_sizes=[8, 16, 32, 32],  # real: [48, 96, 192, 384]
        fusion_hidden_size=16,  # real: 64
        head_hidden_size=8,  # real: 32
        depth_estimation_type="relative",  # real
    )
    target = folder / DEPTH_ANYTHING_ID
    model = _perturb(DepthAnythingForDepthEstimation(config), seed)
    with torch.no_grad():
        model.head.conv3.bias.fill_(DEPTH_ANYTHING_HEAD_BIAS)
    model.save_pretrained(target)
    DPTImageProcessor(  # real: 518 x 518
        do_resize=True,
        size={"height": 112, "width": 112},
        keep_aspect_ratio=True,
        ensure_multiple_of=14,
        resample=3,  # bicubic
        do_rescale=True,
        do_normalize=True,
        image_mean=IMAGENET_MEAN,
        image_std=IMAGENET_STD,
        do_pad=False,
    ).save_pretrained(target)
    return target


def save_class_info(folder: Path) -> Path:
    """`shi-labs/oneformer_demo`'s two class lists, {"<id>": {"name", "isthing"}}."""
    target = folder / CLASS_INFO_ID
    target.mkdir(parents=True, exist_ok=True)
    lists = {
        ADE20K_CLASS_INFO: {
            str(i): {"name": n, "isthing": 0} for i, n in enumerate(ADE20K_CLASSES)
        },
        COCO_CLASS_INFO: {
            str(i): {"name": n, "isthing": int(i < COCO_THINGS)}
            for i, n in enumerate(COCO_PANOPTIC_CLASSES)
        },
    }
    for filename, classes in lists.items():
        (target / filename).write_text(json.dumps(classes), encoding="utf-8")
    return target


def save_tiny_clip_tokenizer(target: Path) -> None:
    """A slow CLIP tokenizer's files from a small vocabulary: the two specials, then every
    letter alone and word-final (`a`, `a</w>`), so "the task is semantic" tokenises letter by
    letter with no merges."""
    from transformers import CLIPTokenizer

    target.mkdir(parents=True, exist_ok=True)
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for letter in string.ascii_lowercase:
        vocab.setdefault(letter, len(vocab))
        vocab.setdefault(letter + "</w>", len(vocab))
    (target / "vocab.json").write_text(json.dumps(vocab), encoding="utf-8")
    (target / "merges.txt").write_text("#version: 0.2\n", encoding="utf-8")
    tokenizer = CLIPTokenizer(
        vocab_file=str(target / "vocab.json"), merges_file=str(target / "merges.txt")
    )
    tokenizer.save_pretrained(target)
    # The Hub repos hold the slow tokenizer's files (their conversion saved a CLIPTokenizer);
    # newer transformers also writes tokenizer.json, which they lack.
    (target / "tokenizer.json").unlink(missing_ok=True)
    special = {"bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>"}
    special |= {"unk_token": "<|endoftext|>", "pad_token": "<|endoftext|>"}
    (target / "special_tokens_map.json").write_text(json.dumps(special), encoding="utf-8")


def save_tiny_oneformer(folder: Path, dataset: str = "ade20k", seed: int = 0) -> Path:
    """OneFormer Swin-L scaled down, for `dataset` "ade20k" (150 classes) or "coco" (133)."""
    from transformers import (
        OneFormerConfig,
        OneFormerForUniversalSegmentation,
        OneFormerImageProcessor,
        SwinConfig,
    )

    classes, repo_id, class_info = {
        "ade20k": (ADE20K_CLASSES, ONEFORMER_ADE20K_ID, ADE20K_CLASS_INFO),
        "coco": (COCO_PANOPTIC_CLASSES, ONEFORMER_COCO_ID, COCO_CLASS_INFO),
    }[dataset]
    torch.manual_seed(seed)
    backbone = SwinConfig(  # real: Swin-L 384 (embed 192, depths 2/2/18/2, window 12)
        image_size=384,
        embed_dim=32,
        depths=[1, 1, 1, 1],
        num_heads=[1, 1, 1, 1],
        window_size=4,
        out_features=["stage1", "stage2", "stage3", "stage4"],
    )
    config = OneFormerConfig(
        backbone_config=backbone,
        num_queries=8,  # real: 250 (ADE20K), 150 (COCO)
        conv_dim=32,  # real: 256; GroupNorm's 32 groups need at least 32
        mask_dim=32,
        hidden_dim=32,
        encoder_feedforward_dim=32,
        encoder_layers=1,
        decoder_layers=2,
        num_attention_heads=2,
        dim_feedforward=32,
        query_dec_layers=1,
        text_encoder_width=32,
        text_encoder_num_layers=1,
        text_encoder_proj_layers=1,
        text_encoder_n_ctx=2,
        id2label=dict(enumerate(classes)),
        label2id={name: index for index, name in enumerate(classes)},
    )
    target = folder / repo_id
    model = _perturb(OneFormerForUniversalSegmentation(config), seed)
    transformer = model.model.transformer_module
    decoder = transformer.decoder
    with torch.no_grad():
        # The object queries all start from the one task token; only their (learnt) position
        # embeddings tell them apart.
        transformer.queries_embedder.weight.mul_(ONEFORMER_EMBED_SCALE)
        decoder.class_embed.weight.mul_(ONEFORMER_EMBED_SCALE)
        decoder.mask_embed.layers[-1].layers[0].weight.mul_(ONEFORMER_EMBED_SCALE)
    model.save_pretrained(target)
    class_folder = save_class_info(folder)
    processor = OneFormerImageProcessor(  # real: short side 512 (ADE20K) / 800 (COCO)
        size={"shortest_edge": 64},
        max_size=256,
        image_mean=IMAGENET_MEAN,
        image_std=IMAGENET_STD,
        num_labels=len(classes),
        ignore_index=255,
        class_info_file=class_info,
        repo_path=str(class_folder),
        num_text=len(classes) - 16,  # unused at inference
    )
    processor.save_pretrained(target)
    saved = target / "preprocessor_config.json"
    settings = json.loads(saved.read_text(encoding="utf-8"))
    settings["repo_path"] = CLASS_INFO_ID  # as the Hub's: a repo id, not this machine's folder
    saved.write_text(json.dumps(settings, indent=2), encoding="utf-8")
    save_tiny_clip_tokenizer(target)
    return target
