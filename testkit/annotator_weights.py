"""Annotator weights for tests, in the real file layouts under a MODELS_DIR (no downloads).

Full-size architectures with seeded random weights where the architecture is fixed by
controlnet_aux (HED, M-LSD, NormalBAE, the line-art generators, PiDiNet); the anime line-art
generator narrower than the real one (its layers, fewer filters: netG.pth is ~218 MB); tiny but
real transformers models (DPT-Hybrid, UperNet ConvNeXt) saved with `save_pretrained` exactly like
their Hub repos.
"""

from __future__ import annotations

from pathlib import Path

import torch

from annotators.ade20k import ADE20K_CLASSES, NUM_CLASSES
from annotators.hed import HED_WEIGHTS
from annotators.lineart import LINEART_COARSE_WEIGHTS, LINEART_WEIGHTS, build_generator
from annotators.lineart_anime import LINEART_ANIME_WEIGHTS, build_anime_generator
from annotators.mlsd import MLSD_WEIGHTS
from annotators.normal import build_normal_bae
from annotators.pidinet import DATA_PARALLEL_PREFIX, PIDINET_WEIGHTS, build_pidinet
from settings import DEFAULT_MODEL_IDS

DPT_ID = DEFAULT_MODEL_IDS["depth_estimator"]
ANNOTATORS_ID = DEFAULT_MODEL_IDS["annotators"]
SEGMENTER_ID = DEFAULT_MODEL_IDS["segmenter"]


def save_hed_and_mlsd(folder: Path) -> None:
    """Seeded random `ControlNetHED.pth` and `mlsd_large_512_fp32.pth` (real architectures)."""
    from controlnet_aux.hed import ControlNetHED_Apache2
    from controlnet_aux.mlsd.models.mbv2_mlsd_large import MobileV2_MLSD_Large

    target = folder / ANNOTATORS_ID
    target.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    torch.save(ControlNetHED_Apache2().state_dict(), target / HED_WEIGHTS)
    torch.manual_seed(0)
    torch.save(MobileV2_MLSD_Large().state_dict(), target / MLSD_WEIGHTS)


# Seeds of the line-art and PiDiNet files: realistic and coarse differ, as the real ones do.
LINEART_SEEDS = {LINEART_WEIGHTS: 0, LINEART_COARSE_WEIGHTS: 1}
PIDINET_SEED = 0
# PiDiNet starts its fusing classifier at 0.25 per side output: on random features the fused map
# is then a flat 127. At 100 it spans the sigmoid (every grey level, all three safe levels).
PIDINET_CLASSIFIER_WEIGHT = 100.0


def save_lineart(folder: Path) -> None:
    """Seeded random `sk_model.pth` and `sk_model2.pth`: LineartDetector's `Generator(3, 1, 3)`
    (full size, ~17 MB each), saved as plain state dicts like the real files."""
    target = folder / ANNOTATORS_ID
    target.mkdir(parents=True, exist_ok=True)
    for filename, seed in LINEART_SEEDS.items():
        torch.manual_seed(seed)
        torch.save(build_generator().state_dict(), target / filename)


def save_pidinet(folder: Path) -> None:
    """Seeded random `table5_pidinet.pth` (full size, ~3 MB), laid out like the real training
    checkpoint: {"state_dict": {"module.<name>": tensor}} (DataParallel's prefix)."""
    target = folder / ANNOTATORS_ID
    target.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(PIDINET_SEED)
    network = build_pidinet()
    with torch.no_grad():
        network.classifier.weight.fill_(PIDINET_CLASSIFIER_WEIGHT)
    state = network.state_dict()
    checkpoint = {"state_dict": {DATA_PARALLEL_PREFIX + key: value for key, value in state.items()}}
    torch.save(checkpoint, target / PIDINET_WEIGHTS)


def save_lineart_and_pidinet(folder: Path) -> None:
    save_lineart(folder)
    save_pidinet(folder)


# The anime generator's width in the tests: its real 64 filters make netG.pth ~218 MB (54 M
# parameters); 8 keep every layer and the 8 down-samplings at 0.85 M parameters (~3.4 MB).
ANIME_TEST_WIDTH = 8
LINEART_ANIME_SEED = 0


def save_lineart_anime(folder: Path) -> None:
    """Seeded random `netG.pth`: LineartAnimeDetector's `UnetGenerator(3, 1, 8)` at
    ANIME_TEST_WIDTH, keyed with DataParallel's `module.` prefix (which LineartAnimeDetector
    strips: the Anime2Sketch training checkpoint's layout)."""
    target = folder / ANNOTATORS_ID
    target.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(LINEART_ANIME_SEED)
    state = build_anime_generator(width=ANIME_TEST_WIDTH).state_dict()
    torch.save(
        {DATA_PARALLEL_PREFIX + key: value for key, value in state.items()},
        target / LINEART_ANIME_WEIGHTS,
    )


def save_tiny_dpt_hybrid(folder: Path) -> Path:
    """A DPT-Hybrid shaped like `Intel/dpt-hybrid-midas`, ~0.1 M parameters, saved like the repo."""
    from transformers import BitConfig, DPTConfig, DPTForDepthEstimation, DPTImageProcessor

    torch.manual_seed(0)
    backbone = BitConfig(  # the hybrid's ResNet (BiT) stem and 3 stages, scaled down
        embedding_size=16,
        hidden_sizes=[16, 32, 64, 128],
        depths=[1, 1, 1],
        layer_type="bottleneck",
        global_padding="same",
        embedding_dynamic_padding=True,
        num_groups=2,  # GroupNorm groups; the real 32 needs wider stages
        out_features=["stage1", "stage2", "stage3"],
    )
    config = DPTConfig(
        is_hybrid=True,
        backbone_config=backbone,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=37,
        image_size=384,  # the real repo's: 24 x 24 position embeddings
        backbone_out_indices=[0, 1, 0, 1],  # the hybrid uses only the last two (ViT layers)
        neck_hidden_sizes=[16, 32, 32, 32],  # BiT stage 1, 2 widths, then the ViT's
        fusion_hidden_size=16,
        backbone_featmap_shape=[1, 64, 24, 24],  # BiT stage 3 width
    )
    model = DPTForDepthEstimation(config).eval()
    with torch.no_grad():  # lift the last bias over the final ReLU so the depth is not all 0
        model.head.head[4].bias.fill_(1e-4)
    target = folder / DPT_ID
    model.save_pretrained(target)  # transformers 5 writes model.safetensors only
    DPTImageProcessor(  # the repo's preprocessor_config.json: 384 x 384, [-1, 1]
        do_resize=True,
        size={"height": 384, "width": 384},
        keep_aspect_ratio=False,
        ensure_multiple_of=1,
        resample=2,
        do_rescale=True,
        rescale_factor=1 / 255,
        do_normalize=True,
        image_mean=[0.5, 0.5, 0.5],
        image_std=[0.5, 0.5, 0.5],
    ).save_pretrained(target)
    assert (target / "model.safetensors").is_file()
    return target


def save_random_normal_bae(folder: Path) -> Path:
    """Random NNET weights as `scannet.pt`, keyed like the real file: {"model": {"module.*"}}."""
    torch.manual_seed(0)
    state = build_normal_bae().state_dict()
    target = folder / ANNOTATORS_ID / "scannet.pt"
    target.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"model": {f"module.{key}": value for key, value in state.items()}}, target)
    return target


def tiny_upernet(seed: int = 0):
    import torch
    from transformers import ConvNextConfig, UperNetConfig, UperNetForSemanticSegmentation

    torch.manual_seed(seed)
    backbone = ConvNextConfig(  # the real small: depths (3, 3, 27, 3), sizes (96, ..., 768)
        depths=[1, 1, 1, 1],
        hidden_sizes=[8, 16, 24, 32],
        out_features=["stage1", "stage2", "stage3", "stage4"],
    )
    config = UperNetConfig(
        backbone_config=backbone,
        hidden_size=16,  # real: 512
        auxiliary_in_channels=24,  # the auxiliary head reads stage 3, like the real one (384)
        auxiliary_channels=8,
        num_labels=NUM_CLASSES,
        id2label=dict(enumerate(ADE20K_CLASSES)),
        label2id={name: index for index, name in enumerate(ADE20K_CLASSES)},
    )
    return UperNetForSemanticSegmentation(config).eval()


def save_upernet_processor(folder: Path) -> None:
    from transformers import SegformerImageProcessor

    # The Hub repo's preprocessor_config.json is a default SegformerImageProcessor (the
    # conversion script saves `SegformerImageProcessor()`): 512x512, ImageNet mean and std.
    SegformerImageProcessor().save_pretrained(folder)


def save_tiny_upernet(folder: Path) -> Path:
    target = folder / SEGMENTER_ID
    tiny_upernet().save_pretrained(target, safe_serialization=True)
    save_upernet_processor(target)
    return target
