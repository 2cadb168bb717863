"""Everything the operator can tune, read from the environment in one place.

The request options' defaults live with the options (pipelines/request.py); the operator can
override a few here. The model table maps each role to its Hub id. Every model id can be
overridden with an environment variable
`MODEL_<ROLE>` (e.g. `MODEL_CANNY=my-org/my-canny-controlnet` or a local folder), and
`MODELS_DIR` points at a folder laid out like the Hub (`MODELS_DIR/<org>/<name>/...`) that is
used before the Hub.
Web visitors never choose a model id or path: only this module does.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

PROJECT_ROOT = Path(__file__).resolve().parent

# Role -> Hub id. A role is what the engine asks for; a condition names the role of its ControlNet.
DEFAULT_MODEL_IDS: dict[str, str] = {
    "base": "stable-diffusion-v1-5/stable-diffusion-v1-5",
    "canny": "lllyasviel/control_v11p_sd15_canny",
    "mlsd": "lllyasviel/control_v11p_sd15_mlsd",
    "scribble": "lllyasviel/control_v11p_sd15_scribble",
    "softedge": "lllyasviel/control_v11p_sd15_softedge",
    "openpose": "lllyasviel/control_v11p_sd15_openpose",
    "seg": "lllyasviel/control_v11p_sd15_seg",
    "depth": "lllyasviel/control_v11f1p_sd15_depth",
    "normal": "lllyasviel/control_v11p_sd15_normalbae",
    # v1.0's normal ControlNet, trained on normals derived from MiDaS depth (the paper's model).
    "normal_midas": "lllyasviel/sd-controlnet-normal",
    # Tile: the photo blurred by down-sampling (tile_resample); the model adds detail back.
    "tile": "lllyasviel/control_v11f1e_sd15_tile",
    # Instruct pix2pix: the photo itself is the map and the prompt an instruction.
    "ip2p": "lllyasviel/control_v11e_sd15_ip2p",
    # Line art (the paper's cartoon line drawings): white lines on black. Neither it, ip2p nor
    # tile has a v1.0 model (V10_MODEL_IDS): the v1.0 family runs their v1.1 ones.
    "lineart": "lllyasviel/control_v11p_sd15_lineart",
    # Inpaint: the initial image with the pixels to repaint at -1 (pipelines.loop.img2img's
    # MASKED_IMAGE_ROLES); no v1.0 model either.
    "inpaint": "lllyasviel/control_v11p_sd15_inpaint",
    # Anime line art: white lines on black from anime drawings (trained on an anime base model
    # with CLIP skip 2); no v1.0 model.
    "lineart_anime": "lllyasviel/control_v11p_sd15s2_lineart_anime",
    # Shuffle: the photo's content moved about (content shuffle); the model takes its colours and
    # textures, not its layout. Its config sets global_pool_conditions (pipelines/loop/denoise.py).
    "shuffle": "lllyasviel/control_v11e_sd15_shuffle",
    "annotators": "lllyasviel/Annotators",
    "depth_estimator": "Intel/dpt-hybrid-midas",
    "segmenter": "openmmlab/upernet-convnext-small",
    # ZoeDepth (ControlNet v1.1's default depth annotator) and Depth Anything V2 small.
    "depth_zoe": "Intel/zoedepth-nyu-kitti",
    "depth_anything": "depth-anything/Depth-Anything-V2-Small-hf",
    # OneFormer Swin-L (v1.1's default seg annotators), and the Hub *dataset* repo holding the
    # class lists their image processor reads when it loads.
    "segmenter_oneformer_ade20k": "shi-labs/oneformer_ade20k_swin_large",
    "segmenter_oneformer_coco": "shi-labs/oneformer_coco_swin_large",
    "oneformer_class_info": "shi-labs/oneformer_demo",
    # DWPose's two ONNX models (people detector, whole-body points), run with onnxruntime.
    "dwpose": "yzd-v/DWPose",
}

# Models loaded only when a setting asks for them (not fetched by `download --all`).
OPTIONAL_MODEL_IDS: dict[str, str] = {
    # With SAFETY_CHECKER=1: SD1.5's own checker, in its safety_checker/ and feature_extractor/
    # subfolders (CompVis/stable-diffusion-safety-checker has no model.safetensors on main).
    "safety_checker": "stable-diffusion-v1-5/stable-diffusion-v1-5",
    # TAESD, a tiny VAE decoder for previews while denoising: used when found in MODELS_DIR.
    "preview_decoder": "madebyollin/taesd",
    # LCM-LoRA for SD1.5: the "LCM" sampler's few-step weights (merged into the UNet when used).
    "lcm_lora": "latent-consistency/lcm-lora-sdv1-5",
}

# The paper's own v1.0 ControlNets (lllyasviel/sd-controlnet-*), for the family switch.
V10_MODEL_IDS: dict[str, str] = {
    role: f"lllyasviel/sd-controlnet-{name}"
    for role, name in {
        "canny": "canny",
        "mlsd": "mlsd",
        "softedge": "hed",
        "scribble": "scribble",
        "openpose": "openpose",
        "seg": "seg",
        "depth": "depth",
        "normal": "normal",
    }.items()
}

MAX_SEED = 2**31 - 1  # the reference UI's seed range

# The ControlNet families: v1.1 by default, or the paper's own v1.0 models.
CONTROLNET_VERSIONS = ("v1.1", "v1.0")
DEFAULT_BASE_NAME = "Stable Diffusion 1.5"
# Single files that are pickles can run code when loaded: only .safetensors single files load.
SINGLE_FILE_SUFFIX = ".safetensors"
PICKLE_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin", ".pkl", ".pickle")
# Formats never loaded as a base model (.onnx: only DWPose's two files, by the annotator).
OTHER_WEIGHT_SUFFIXES = (".gguf", ".onnx", ".h5", ".msgpack", ".npz")
FAST_PATH_MODES = ("auto", "on", "off")
# torch.compile modes for the fast path. reduce-overhead: Inductor kernels replayed as CUDA graphs
# (the default: eager SD1.5 is launch-bound). max-autotune: CUDA graphs too, and Inductor times
# Triton / cuBLAS / cuDNN candidates for every matmul and convolution (faster kernels, compiles
# take several times longer). The no-cudagraphs modes spare the graphs' memory pools.
COMPILE_MODES = ("reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs", "default")
# The models' precision on a CPU (CUDA: fp16). auto: bfloat16 where it is measured faster
# (CPUs with AMX or AVX512-BF16), else float32; see pipelines/speed/precision.py.
CPU_PRECISIONS = ("auto", "float32", "bfloat16")


def unsupported_file_message(source: str) -> str:
    suffix = Path(source).suffix.lower()
    if suffix in PICKLE_SUFFIXES:
        return (
            f"The base model `{source}` is a pickle file ({suffix}). Only .safetensors single "
            "files are loaded, because pickle files (.ckpt, .pt, .pth, .bin) can run code when "
            "loaded. Use the model's .safetensors download instead."
        )
    return (
        f"The base model `{source}` is a {suffix or 'extensionless'} file, which cannot be loaded. "
        "A base model is a Hub id, a diffusers folder, or a single-file .safetensors checkpoint."
    )


def check_base_source(source: str) -> str:
    """A base model source from the operator's list (a Hub id, a diffusers folder or a
    .safetensors single file), returned as is; ValueError for a file type that is never loaded,
    so the operator reads it at start."""
    path = Path(source)
    suffix = path.suffix.lower()
    if suffix in PICKLE_SUFFIXES or suffix in OTHER_WEIGHT_SUFFIXES:
        raise ValueError(unsupported_file_message(source))
    if path.is_absolute() and path.is_file() and suffix != SINGLE_FILE_SUFFIX:
        raise ValueError(unsupported_file_message(source))
    return source


def parse_base_models(text: str | None, default_source: str) -> dict[str, str]:
    """Name -> source for the base model list; the first is the default.

    `text` (env BASE_MODELS) lists extra bases, one per line or separated by `;`, each
    `Name=source` or just `source` (named after its last path part). The default base
    (`MODEL_BASE`, or SD1.5) always comes first.
    """
    default_name = (
        DEFAULT_BASE_NAME
        if default_source == DEFAULT_MODEL_IDS["base"]
        else Path(default_source).stem or default_source
    )
    models = {default_name: check_base_source(default_source)}
    for entry in (text or "").replace("\n", ";").split(";"):
        entry = entry.strip()
        if not entry:
            continue
        name, sep, source = entry.partition("=")
        if not sep:
            name, source = Path(entry).stem or entry, entry
        name, source = name.strip(), source.strip()
        if not name or not source:
            raise ValueError(f"BASE_MODELS entry {entry!r} must be `Name=source` or `source`.")
        if name in models and models[name] != source:
            raise ValueError(f"BASE_MODELS names {name!r} twice; give each base its own name.")
        models[name] = check_base_source(source)
    return models


def _env_int(env: Mapping[str, str], name: str, default: int) -> int:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError as error:
        raise ValueError(f"Environment variable {name} must be an integer, got {raw!r}.") from error


def _env_flag(env: Mapping[str, str], name: str, default: bool = False) -> bool:
    raw = (env.get(name) or "").strip().lower()
    if raw == "":
        return default
    if raw in ("0", "false", "no", "off"):
        return False
    if raw in ("1", "true", "yes", "on"):
        return True
    raise ValueError(f"Environment variable {name} must be 1/0 (or true/false), got {raw!r}.")


@dataclass(frozen=True)
class Limits:
    """Hard limits the engine enforces on every request, whatever sliders or API callers send."""

    max_images: int = 12
    min_resolution: int = 256
    max_resolution: int = 768
    # Cap on long side / short side: a 1:10 strip at short side 512 would be 5120 px long.
    max_aspect_ratio: float = 3.0
    min_detect_resolution: int = 128
    max_detect_resolution: int = 1024
    max_steps: int = 100
    min_guidance: float = 0.0
    max_guidance: float = 30.0
    max_strength: float = 2.0
    max_resolution_weighting: float = 3.0
    max_units: int = 3  # ControlNets composed in one generation (the Compose tab)
    # Prompts of any length are read, in 75-token chunks (pipelines/loop/prompt_embeddings.py).
    # This bounds the work of tokenising and encoding what a caller sends.
    max_prompt_chars: int = 10_000
    max_upload_bytes: int = 25 * 1024 * 1024
    # Checked from the header before decoding: 12000 x 12000 (144 MP) is refused.
    max_upload_pixels: int = 50_000_000
    # Outpainting: the most pixels one side may grow by (in the image's own pixels), and the most
    # pixels an outpainted output may have (its short side is the image resolution as always; the
    # long one grows with the canvas).
    max_outpaint: int = 1024
    max_outpaint_pixels: int = 1024 * 1024
    # Upscaling: the most pixels an upscaled image may have (it is repainted in tiles, so this
    # bounds the time and the blend's memory, 16 bytes per pixel, not the GPU's).
    max_upscale_pixels: int = 4096 * 4096
    max_pose_people: int = 20  # people one pose JSON may hold


@dataclass(frozen=True)
class Settings:
    models_dir: Path = PROJECT_ROOT / "models"
    model_ids: Mapping[str, str] = field(
        default_factory=lambda: {**DEFAULT_MODEL_IDS, **OPTIONAL_MODEL_IDS}
    )
    limits: Limits = field(default_factory=Limits)
    # Operator defaults on top of the request's own (pipelines/request.py): option name -> value.
    default_overrides: Mapping[str, Any] = field(default_factory=dict)
    # How many ControlNets stay loaded at once; each SD1.5 ControlNet is ~0.7 GB in fp16.
    controlnet_cache_size: int = 2
    # Annotators with weights (HED, pose, depth, segmentation) loaded at once.
    annotator_cache_size: int = 3
    device: str | None = None  # None: CUDA when available, else CPU
    queue_size: int = 20
    # The base models a visitor may pick from (name -> Hub id, diffusers folder or .safetensors
    # file); the first is the default. Visitors only ever pick a name from this list.
    base_models: Mapping[str, str] = field(
        default_factory=lambda: {DEFAULT_BASE_NAME: DEFAULT_MODEL_IDS["base"]}
    )
    # The paper's v1.0 ControlNets, by role, for the family switch.
    v10_model_ids: Mapping[str, str] = field(default_factory=lambda: dict(V10_MODEL_IDS))
    # Check every image with SD's NSFW safety checker and blacken flagged ones (off by default).
    safety_checker: bool = False
    # fp16 + channels_last + fused QKV + torch.compile with CUDA graphs: auto = on dedicated GPUs.
    fast_path: str = "auto"
    compile_mode: str = "reduce-overhead"  # one of COMPILE_MODES
    # One of CPU_PRECISIONS. Settings built in code keep float32 (the reference numbers); the
    # app's environment default is auto (CPU_PRECISION).
    cpu_precision: str = "float32"
    # For 8 GB cards: model CPU offload and VAE slicing (slower; turns the fast path off).
    low_memory: bool = False
    # Preview images during denoising with TAESD, when its weights are in MODELS_DIR.
    previews: bool = True
    # With the fast path on: compile the default request's shape at start (in the background),
    # so the first visitor does not wait for it.
    warm_up: bool = True
    # The AUTOMATIC1111-compatible API's HTTP basic credentials, (user, password) pairs (as
    # A1111's --api-auth). Empty: no credentials asked; set them before exposing the port.
    api_auth: tuple[tuple[str, str], ...] = ()

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if env is None else env
        model_ids = {**DEFAULT_MODEL_IDS, **OPTIONAL_MODEL_IDS}
        for role in model_ids:
            override = env.get(f"MODEL_{role.upper()}")
            if override:
                model_ids[role] = override
        base_limits = Limits()
        limits = Limits(
            max_images=_env_int(env, "MAX_NUM_IMAGES", base_limits.max_images),
            max_resolution=_env_int(env, "MAX_IMAGE_RESOLUTION", base_limits.max_resolution),
            max_steps=_env_int(env, "MAX_STEPS", base_limits.max_steps),
            max_prompt_chars=_env_int(env, "MAX_PROMPT_CHARS", base_limits.max_prompt_chars),
            max_upload_bytes=_env_int(env, "MAX_UPLOAD_BYTES", base_limits.max_upload_bytes),
            max_upload_pixels=_env_int(env, "MAX_UPLOAD_PIXELS", base_limits.max_upload_pixels),
            max_upscale_pixels=_env_int(env, "MAX_UPSCALE_PIXELS", base_limits.max_upscale_pixels),
        )
        default_overrides = {
            name: min(_env_int(env, variable, 0), maximum)
            for name, variable, maximum in (
                ("num_images", "DEFAULT_NUM_IMAGES", limits.max_images),
                ("image_resolution", "DEFAULT_IMAGE_RESOLUTION", limits.max_resolution),
            )
            if env.get(variable)
        }
        v10_model_ids = dict(V10_MODEL_IDS)
        for role in v10_model_ids:
            override = env.get(f"MODEL_V10_{role.upper()}")
            if override:
                v10_model_ids[role] = override
        fast_path = (env.get("FAST_PATH") or "auto").strip().lower()
        if fast_path not in FAST_PATH_MODES:
            raise ValueError(
                f"Environment variable FAST_PATH must be one of {', '.join(FAST_PATH_MODES)}, "
                f"got {fast_path!r}."
            )
        compile_mode = (env.get("COMPILE_MODE") or COMPILE_MODES[0]).strip().lower()
        if compile_mode not in COMPILE_MODES:
            raise ValueError(
                f"Environment variable COMPILE_MODE must be one of {', '.join(COMPILE_MODES)}, "
                f"got {compile_mode!r}."
            )
        cpu_precision = (env.get("CPU_PRECISION") or "auto").strip().lower()
        if cpu_precision not in CPU_PRECISIONS:
            raise ValueError(
                "Environment variable CPU_PRECISION must be one of "
                f"{', '.join(CPU_PRECISIONS)}, got {cpu_precision!r}."
            )
        return cls(
            models_dir=Path(env.get("MODELS_DIR") or PROJECT_ROOT / "models"),
            model_ids=model_ids,
            limits=limits,
            default_overrides=default_overrides,
            controlnet_cache_size=max(1, _env_int(env, "CONTROLNET_CACHE_SIZE", 2)),
            annotator_cache_size=max(1, _env_int(env, "ANNOTATOR_CACHE_SIZE", 3)),
            device=env.get("DEVICE") or None,
            queue_size=max(1, _env_int(env, "QUEUE_SIZE", 20)),
            base_models=parse_base_models(env.get("BASE_MODELS"), model_ids["base"]),
            api_auth=parse_api_auth(env.get("API_AUTH")),
            v10_model_ids=v10_model_ids,
            safety_checker=_env_flag(env, "SAFETY_CHECKER"),
            fast_path=fast_path,
            compile_mode=compile_mode,
            cpu_precision=cpu_precision,
            low_memory=_env_flag(env, "LOW_MEMORY"),
            previews=_env_flag(env, "PREVIEWS", default=True),
            warm_up=_env_flag(env, "WARM_UP", default=True),
        )


def parse_api_auth(text: str | None) -> tuple[tuple[str, str], ...]:
    """`API_AUTH` ("user:password", several separated by commas, as A1111's --api-auth) as
    (user, password) pairs; unset or empty: none."""
    pairs = []
    for entry in (text or "").split(","):
        if not entry.strip():
            continue
        user, sep, password = entry.strip().partition(":")
        if not sep or not user or not password:
            raise ValueError(
                "Environment variable API_AUTH must be user:password (several separated by "
                f"commas), got an entry without both: {user or entry.strip()!r}."
            )
        pairs.append((user, password))
    return tuple(pairs)
