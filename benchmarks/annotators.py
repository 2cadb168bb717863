"""CPU latency of every registered annotator at 512x512, on full-size networks with random weights.

    HF_HUB_OFFLINE=1 .venv/bin/python -m benchmarks.annotators [--repeats 3] [--only hed mlsd]
        [--detect-resolution 512]

Builds every network at its real size (HED, M-LSD large, NormalBAE, DPT-Hybrid MiDaS, ZoeDepth
NK, Depth Anything V2 small, UperNet ConvNeXt-small, OneFormer Swin-L ADE20K and COCO, OpenPose,
the realistic, coarse and anime line-art generators, PiDiNet) with random weights (DWPose:
stand-ins, see STAND_INS), in the real file layouts, in a temporary MODELS_DIR (~5 GB, nothing
downloaded): the FLOPs are the real checkpoints'. Then times, per annotator,
`annotator.load(LoadContext(...))` and `make_control_map` on assets/astronaut.png with default
parameters, as the engine calls them: one untimed warm-up call, then --repeats calls. One JSON
line per annotator on stdout, notes (machine, skips) on stderr. Caveat: post-processing that
depends on what the network finds (M-LSD's segments, OpenPose's grouping) may differ with real
weights.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")  # transformers' load/save bars
# controlnet_aux's imports: torch.jit and timm deprecations, timm registry overwrites.
warnings.filterwarnings("ignore", category=FutureWarning)
warnings.filterwarnings("ignore", message="Overwriting .* in registry")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from annotators import ANNOTATORS, Annotator, LoadContext, make_control_map  # noqa: E402
from annotators.hed import HED_WEIGHTS  # noqa: E402
from annotators.mlsd import MLSD_WEIGHTS  # noqa: E402
from annotators.normal import BAE_WEIGHTS, build_normal_bae  # noqa: E402
from annotators.util import output_size  # noqa: E402
from settings import DEFAULT_MODEL_IDS  # noqa: E402
from testkit.paths import ASSETS, PROJECT_ROOT  # noqa: E402

IMAGE_RESOLUTION = 512


def _save(models_dir: Path, filename: str, state: dict) -> None:
    """`state` as MODELS_DIR/lllyasviel/Annotators/<filename>, like the Hub file."""
    path = models_dir / DEFAULT_MODEL_IDS["annotators"] / filename
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, path)


def _caffe_names(model: torch.nn.Module) -> dict:
    """OpenPose body/hand files keep Caffe names: `model0.conv1_1.weight` -> `conv1_1.weight`."""
    return {key.split(".", 1)[1]: value for key, value in model.state_dict().items()}


def save_hed(models_dir: Path) -> None:
    from controlnet_aux.hed import ControlNetHED_Apache2

    _save(models_dir, HED_WEIGHTS, ControlNetHED_Apache2().state_dict())


def save_mlsd(models_dir: Path) -> None:
    from controlnet_aux.mlsd.models.mbv2_mlsd_large import MobileV2_MLSD_Large

    _save(models_dir, MLSD_WEIGHTS, MobileV2_MLSD_Large().state_dict())


def save_normal_bae(models_dir: Path) -> None:  # scannet.pt: {"model": {"module.*": ...}}
    state = build_normal_bae().state_dict()
    _save(models_dir, BAE_WEIGHTS, {"model": {f"module.{k}": v for k, v in state.items()}})


def save_lineart(models_dir: Path) -> None:  # sk_model.pth, sk_model2.pth: Generator(3, 1, 3)
    from annotators.lineart import LINEART_COARSE_WEIGHTS, LINEART_WEIGHTS, build_generator

    for filename in (LINEART_WEIGHTS, LINEART_COARSE_WEIGHTS):
        _save(models_dir, filename, build_generator().state_dict())


def save_lineart_anime(models_dir: Path) -> None:  # netG.pth: UnetGenerator(3, 1, 8, 64), 218 MB
    from annotators.lineart_anime import LINEART_ANIME_WEIGHTS, build_anime_generator

    _save(models_dir, LINEART_ANIME_WEIGHTS, build_anime_generator().state_dict())


def save_pidinet(models_dir: Path) -> None:  # table5_pidinet.pth: {"state_dict": {"module.*"}}
    from annotators.pidinet import DATA_PARALLEL_PREFIX, PIDINET_WEIGHTS, build_pidinet

    state = build_pidinet().state_dict()
    prefixed = {DATA_PARALLEL_PREFIX + key: value for key, value in state.items()}
    _save(models_dir, PIDINET_WEIGHTS, {"state_dict": prefixed})


def save_dwpose_stand_ins(models_dir: Path) -> None:  # yolox_l.onnx, dw-ll_ucoco_384.onnx
    from testkit.dwpose_models import save_dwpose

    save_dwpose(models_dir)


def save_openpose(models_dir: Path) -> None:
    from controlnet_aux.open_pose.face import FaceNet
    from controlnet_aux.open_pose.model import bodypose_model, handpose_model

    from annotators.pose import BODY_WEIGHTS, FACE_WEIGHTS, HAND_WEIGHTS

    _save(models_dir, BODY_WEIGHTS, _caffe_names(bodypose_model()))
    _save(models_dir, HAND_WEIGHTS, _caffe_names(handpose_model()))
    _save(models_dir, FACE_WEIGHTS, FaceNet().state_dict())


def save_dpt_hybrid_midas(models_dir: Path) -> None:
    """Intel/dpt-hybrid-midas's config.json (122.4 M parameters) and preprocessor_config.json."""
    from transformers import BitConfig, DPTConfig, DPTForDepthEstimation, DPTImageProcessor

    backbone = BitConfig(  # ResNet-50 (BiT) stem and first 3 stages: stride 16, 1024 wide
        layer_type="bottleneck", global_padding="same", embedding_dynamic_padding=True,
        embedding_size=64, hidden_sizes=[256, 512, 1024, 2048], depths=[3, 4, 9],
        out_features=["stage1", "stage2", "stage3"],
    )  # fmt: skip
    config = DPTConfig(  # ViT-B/16 on the 24 x 24 BiT map of a 384 x 384 image
        is_hybrid=True, backbone_config=backbone, backbone_featmap_shape=[1, 1024, 24, 24],
        hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072,
        image_size=384, patch_size=16, backbone_out_indices=[2, 5, 8, 11], readout_type="project",
        reassemble_factors=[1, 1, 1, 0.5], neck_hidden_sizes=[256, 512, 768, 768],
        fusion_hidden_size=256, use_batch_norm_in_fusion_residual=False,
    )  # fmt: skip
    folder = models_dir / DEFAULT_MODEL_IDS["depth_estimator"]
    DPTForDepthEstimation(config).save_pretrained(folder)
    DPTImageProcessor(  # the repo's preprocessor_config.json: 384 x 384, [-1, 1]
        size={"height": 384, "width": 384}, keep_aspect_ratio=False, ensure_multiple_of=1,
        resample=2, image_mean=[0.5, 0.5, 0.5], image_std=[0.5, 0.5, 0.5],
    ).save_pretrained(folder)  # fmt: skip


def save_upernet_convnext_small(models_dir: Path) -> None:
    """openmmlab/upernet-convnext-small (81.9 M parameters, auxiliary head included)."""
    from transformers import (
        ConvNextConfig,
        SegformerImageProcessor,
        UperNetConfig,
        UperNetForSemanticSegmentation,
    )

    backbone = ConvNextConfig(
        depths=[3, 3, 27, 3], hidden_sizes=[96, 192, 384, 768], drop_path_rate=0.3,
        out_features=["stage1", "stage2", "stage3", "stage4"],
    )  # fmt: skip
    config = UperNetConfig(
        backbone_config=backbone, hidden_size=512, auxiliary_in_channels=384, num_labels=150
    )
    folder = models_dir / DEFAULT_MODEL_IDS["segmenter"]
    UperNetForSemanticSegmentation(config).save_pretrained(folder)
    SegformerImageProcessor().save_pretrained(folder)  # the repo's: a default one


def save_zoedepth_nk(models_dir: Path) -> None:
    """Intel/zoedepth-nyu-kitti: BEiT-L 384 + two metric bin heads (transformers' conversion)."""
    from transformers import (
        BeitConfig,
        ZoeDepthConfig,
        ZoeDepthForDepthEstimation,
        ZoeDepthImageProcessor,
    )

    backbone = BeitConfig(
        image_size=384, num_hidden_layers=24, hidden_size=1024, intermediate_size=4096,
        num_attention_heads=16, use_relative_position_bias=True, reshape_hidden_states=False,
        out_features=["stage6", "stage12", "stage18", "stage24"],
    )  # fmt: skip
    config = ZoeDepthConfig(
        backbone_config=backbone, neck_hidden_sizes=[256, 512, 1024, 1024],
        bin_centers_type="softplus",
        bin_configurations=[
            {"name": "nyu", "n_bins": 64, "min_depth": 1e-3, "max_depth": 10.0},
            {"name": "kitti", "n_bins": 64, "min_depth": 1e-3, "max_depth": 80.0},
        ],
        num_patch_transformer_layers=4, patch_transformer_hidden_size=128,
        patch_transformer_intermediate_size=1024, patch_transformer_num_attention_heads=4,
    )  # fmt: skip
    folder = models_dir / DEFAULT_MODEL_IDS["depth_zoe"]
    ZoeDepthForDepthEstimation(config).save_pretrained(folder)
    ZoeDepthImageProcessor(  # the repo's: 384 x 512 keeping the aspect, multiples of 32, padded
        size={"height": 384, "width": 512}, keep_aspect_ratio=True, ensure_multiple_of=32,
        do_pad=True, image_mean=[0.5, 0.5, 0.5], image_std=[0.5, 0.5, 0.5],
    ).save_pretrained(folder)  # fmt: skip


def save_depth_anything_v2_small(models_dir: Path) -> None:
    """depth-anything/Depth-Anything-V2-Small-hf: DINOv2 ViT-S/14 + DPT head (24.8 M)."""
    from transformers import (
        DepthAnythingConfig,
        DepthAnythingForDepthEstimation,
        Dinov2Config,
        DPTImageProcessor,
    )

    backbone = Dinov2Config(
        image_size=518, patch_size=14, hidden_size=384, num_hidden_layers=12,
        num_attention_heads=6, out_indices=[3, 6, 9, 12], reshape_hidden_states=False,
    )  # fmt: skip
    config = DepthAnythingConfig(
        backbone_config=backbone, reassemble_hidden_size=384,
        neck_hidden_sizes=[48, 96, 192, 384], fusion_hidden_size=64, head_hidden_size=32,
    )  # fmt: skip
    folder = models_dir / DEFAULT_MODEL_IDS["depth_anything"]
    DepthAnythingForDepthEstimation(config).save_pretrained(folder)
    DPTImageProcessor(  # the repo's: 518 keeping the aspect, multiples of 14, ImageNet, bicubic
        size={"height": 518, "width": 518}, keep_aspect_ratio=True, ensure_multiple_of=14,
        resample=3, image_mean=[0.485, 0.456, 0.406], image_std=[0.229, 0.224, 0.225],
    ).save_pretrained(folder)  # fmt: skip


def _save_oneformer_swin_large(models_dir: Path, dataset: str) -> None:
    """shi-labs/oneformer_<dataset>_swin_large: Swin-L 384 backbone, the repo's processor."""
    from transformers import (
        OneFormerConfig,
        OneFormerForUniversalSegmentation,
        OneFormerImageProcessor,
        SwinConfig,
    )

    from annotators.ade20k import ADE20K_CLASSES
    from annotators.coco_panoptic import COCO_PANOPTIC_CLASSES
    from testkit.transformers_annotators import save_class_info, save_tiny_clip_tokenizer

    # The test sizes of the detectron2 configs v1.1 runs: its ADE20K Swin-L yaml's 640 / 2560;
    # the COCO one sets none, so detectron2's default 800 / 1333.
    classes, queries, short_side, long_side = {
        "ade20k": (ADE20K_CLASSES, 250, 640, 2560),
        "coco": (COCO_PANOPTIC_CLASSES, 150, 800, 1333),
    }[dataset]
    backbone = SwinConfig(
        image_size=384, embed_dim=192, depths=[2, 2, 18, 2], num_heads=[6, 12, 24, 48],
        window_size=12, out_features=["stage1", "stage2", "stage3", "stage4"],
    )  # fmt: skip
    config = OneFormerConfig(
        backbone_config=backbone, num_queries=queries, id2label=dict(enumerate(classes)),
        label2id={name: index for index, name in enumerate(classes)},
    )  # fmt: skip
    folder = models_dir / DEFAULT_MODEL_IDS[f"segmenter_oneformer_{dataset}"]
    OneFormerForUniversalSegmentation(config).save_pretrained(folder)
    class_folder = save_class_info(models_dir)
    OneFormerImageProcessor(
        size={"shortest_edge": short_side}, max_size=long_side, num_labels=len(classes),
        image_mean=[0.485, 0.456, 0.406], image_std=[0.229, 0.224, 0.225], ignore_index=255,
        class_info_file=f"{dataset}_panoptic.json", repo_path=str(class_folder),
    ).save_pretrained(folder)  # fmt: skip
    save_tiny_clip_tokenizer(folder)  # it only encodes "the task is semantic": size is moot


def save_oneformer_ade20k(models_dir: Path) -> None:
    _save_oneformer_swin_large(models_dir, "ade20k")


def save_oneformer_coco(models_dir: Path) -> None:
    _save_oneformer_swin_large(models_dir, "coco")


# Annotator -> what builds the files its load() reads. Classical annotators need none.
WEIGHTS = {
    "hed": save_hed, "hed_safe": save_hed, "fake_scribble": save_hed, "mlsd": save_mlsd,
    "depth_midas": save_dpt_hybrid_midas, "normal_midas": save_dpt_hybrid_midas,
    "normal_bae": save_normal_bae, "seg_upernet": save_upernet_convnext_small,
    "openpose": save_openpose, "mediapipe_pose": None,  # its models ship in the mediapipe wheel
    "pidinet": save_pidinet, "pidinet_safe": save_pidinet,
    "depth_zoe": save_zoedepth_nk, "depth_anything_v2": save_depth_anything_v2_small,
    "seg_oneformer_ade20k": save_oneformer_ade20k, "seg_oneformer_coco": save_oneformer_coco,
    "lineart": save_lineart, "lineart_coarse": save_lineart, "lineart_anime": save_lineart_anime,
    "dw_openpose": save_dwpose_stand_ins, "dw_openpose_full": save_dwpose_stand_ins,
}  # fmt: skip
# DWPose's networks exist only as the released ONNX files: their stand-ins (testkit.dwpose_models)
# have the real inputs and outputs but no layers, so these rows time the letterbox, decoding,
# NMS, crops, SimCC decoding and drawing around the networks, not the networks themselves.
STAND_INS = frozenset({"dw_openpose", "dw_openpose_full"})


def note(message: str) -> None:
    print(f"[annotators benchmark] {message}", file=sys.stderr, flush=True)


def measure(
    annotator: Annotator,
    context: LoadContext,
    image: np.ndarray,
    detect_resolution: int | None,
    repeats: int,
) -> dict:
    """Load time, then `repeats` timed calls after an untimed warm-up, as the engine calls."""
    started = time.perf_counter()
    detector = annotator.load(context)
    load_seconds = time.perf_counter() - started
    if getattr(detector, "notice", None):  # e.g. a fallback to another backend
        note(f"{annotator.name}: {detector.notice}")
    params = annotator.check_params({})  # the defaults
    times = []
    for _ in range(repeats + 1):  # the first call warms up: lazy imports, allocator, caches
        started = time.perf_counter()
        make_control_map(annotator, detector, image, IMAGE_RESOLUTION, detect_resolution, params)
        times.append(time.perf_counter() - started)
    return {
        "load_seconds": round(load_seconds, 3),
        "first_call_seconds": round(times[0], 3),
        "seconds_median": round(statistics.median(times[1:]), 5),
        "seconds_min": round(min(times[1:]), 5),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--only", nargs="+", metavar="NAME", choices=list(ANNOTATORS))
    parser.add_argument("--detect-resolution", type=int, help="default: each annotator's own")
    args = parser.parse_args()
    if args.repeats < 1:
        parser.error("--repeats must be at least 1")

    if not {"openpose", "mediapipe_pose"} & ANNOTATORS.keys():
        pose_module = PROJECT_ROOT / "annotators" / "pose.py"
        where = "is not registered" if pose_module.exists() else "is absent"
        note(f"annotators/pose.py {where} in ANNOTATORS: pose annotators skipped")
    # An annotator with weights missing from WEIGHTS fails to load (offline) and is reported.
    names = args.only or list(ANNOTATORS)
    note(
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch "
        f"{torch.__version__} with {torch.get_num_threads()} threads, load average "
        f"{os.getloadavg()[0]:.2f}"
    )

    image = np.asarray(Image.open(ASSETS / "astronaut.png").convert("RGB"))
    output_side = min(output_size(image.shape[0], image.shape[1], IMAGE_RESOLUTION))
    failed = []
    with tempfile.TemporaryDirectory() as folder:
        models_dir, started = Path(folder), time.perf_counter()
        torch.manual_seed(0)
        for save in dict.fromkeys(WEIGHTS[n] for n in names if WEIGHTS.get(n)):
            save(models_dir)
        note(f"built the random weights in {time.perf_counter() - started:.1f} s")
        context = LoadContext(models_dir, dict(DEFAULT_MODEL_IDS), device="cpu")
        for name in names:
            annotator = ANNOTATORS[name]
            detect_resolution = None  # classical ones run at the output size
            if annotator.default_detect_resolution is not None:
                detect_resolution = args.detect_resolution or annotator.default_detect_resolution
            try:
                timings = measure(annotator, context, image, detect_resolution, args.repeats)
            except Exception as error:  # noqa: BLE001 (report it and time the others)
                note(f"{name}: failed ({type(error).__name__}: {error})")
                failed.append(name)
                continue
            finally:
                gc.collect()  # the detector goes before the next one loads
            record = {
                "benchmark": "annotator_cpu",
                "annotator": name,
                "detect_resolution": detect_resolution or output_side,
                "image_resolution": IMAGE_RESOLUTION,
                **timings,
                "repeats": args.repeats,
                "weights": (
                    "planted stand-ins (no network)"
                    if name in STAND_INS
                    else "full-size random"
                    if WEIGHTS.get(name)
                    else "none"
                ),
            }
            print(json.dumps(record), flush=True)
    note(f"done; load average {os.getloadavg()[0]:.2f}")
    if failed:
        sys.exit(f"failed: {', '.join(failed)}")


if __name__ == "__main__":
    main()
