"""The default models' real Hub configs build the real architectures under the pinned libraries.

The other tests build tiny models from configs written in code. Here the configs are the Hub
repos' own files, copied into tests/real_configs/ in the Hub layout (`<org>/<name>/...`, like a
MODELS_DIR); where each copy comes from is in tests/real_configs/PROVENANCE.md, with the files no
public source could be found for. Each model is built from its real config at full size on the
meta device (shapes, no memory, no weights), and its parameter names, shapes and counts are
checked against what the app's loader, denoising loop and annotators expect; the meta device also
runs forward passes, so the shapes that flow between the models are checked too.

A config missing from tests/real_configs/ is looked for in a shared `real_configs/` folder (in the
checkout or beside it) where one has been laid out; a model with no config anywhere is skipped,
its reason naming the file.
"""

from __future__ import annotations

import importlib
import inspect
import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from skimage import data

from settings import DEFAULT_MODEL_IDS, OPTIONAL_MODEL_IDS, V10_MODEL_IDS

ROOT = Path(__file__).resolve().parent.parent
REAL_CONFIGS = Path(__file__).resolve().parent / "real_configs"
SHARED_CONFIGS = (ROOT / "shared" / "real_configs", ROOT.parent / "shared" / "real_configs")
BASE_ID = DEFAULT_MODEL_IDS["base"]
CONTROLNET_ROLES = (
    "canny", "mlsd", "scribble", "softedge", "openpose", "seg", "depth", "normal", "normal_midas",
    "tile", "ip2p", "lineart", "lineart_anime", "inpaint", "shuffle",
)  # fmt: skip
# Every ControlNet the app loads: the v1.1 family's and the paper's v1.0 ones.
CONTROLNET_IDS = sorted(
    {DEFAULT_MODEL_IDS[role] for role in CONTROLNET_ROLES} | set(V10_MODEL_IDS.values())
)

# Parameter counts of the real checkpoints (diffusers / transformers count them the same way).
UNET_PARAMETERS = 859_520_964
CONTROLNET_PARAMETERS = 361_279_120
VAE_PARAMETERS = 83_653_863
CLIP_TEXT_PARAMETERS = 123_060_480
TAESD_PARAMETERS = 2_445_063
SAFETY_VISION_PARAMETERS = 303_179_776  # CLIP ViT-L/14's vision tower


def copies(relative: str) -> list[Path]:
    """Every copy of `relative` (a file or folder under `<org>/<name>/`): the committed one, then
    any in a shared real_configs/ folder."""
    roots = (REAL_CONFIGS, *(root for root in SHARED_CONFIGS if root.is_dir()))
    return [root / relative for root in roots if (root / relative).exists()]


def real(relative: str) -> list[Path]:
    """`copies(relative)`, skipping the test when there is none."""
    found = copies(relative)
    if not found:
        pytest.skip(f"{relative} is not in tests/real_configs (see its PROVENANCE.md)")
    return found


def shapes(model: torch.nn.Module) -> dict[str, tuple[int, ...]]:
    return {name: tuple(tensor.shape) for name, tensor in model.state_dict().items()}


def count(model: torch.nn.Module) -> int:
    return sum(parameter.numel() for parameter in model.parameters())


def on_meta(model: torch.nn.Module) -> torch.nn.Module:
    assert {parameter.device.type for parameter in model.parameters()} == {"meta"}
    return model


def build_diffusers(cls: Any, folder: Path) -> Any:
    """`cls` from the config in `folder`, at full size on the meta device: what
    `cls.from_pretrained(folder)` builds before it reads the weights."""
    config = cls.load_config(folder)
    assert config["_class_name"] == cls.__name__, f"{folder} holds a {config['_class_name']}"
    with torch.device("meta"):
        return on_meta(cls.from_config(config).eval())


def build_transformers(model_cls: Any, config_cls: Any, folder: Path) -> Any:
    config = config_cls.from_pretrained(folder)
    with torch.device("meta"):
        return on_meta(model_cls(config).eval())  # as the app runs it (batch norms: eval)


def base_folder(component: str = "") -> Path:
    """The base model's `component` folder (the first copy)."""
    return real(f"{BASE_ID}/{component}".rstrip("/"))[0]


@pytest.fixture(scope="module")
def full_size() -> dict[str, torch.nn.Module]:
    """The benchmarks' full-size SD1.5 models (testkit.sd15_full_size, configs written in
    code), on the meta device."""
    from diffusers import AutoencoderKL, ControlNetModel, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from testkit.sd15_full_size import CLIP_TEXT_CONFIG, CONTROLNET_CONFIG, UNET_CONFIG, VAE_CONFIG

    with torch.device("meta"):
        return {
            "unet": UNet2DConditionModel(**UNET_CONFIG),
            "controlnet": ControlNetModel(**CONTROLNET_CONFIG),
            "vae": AutoencoderKL(**VAE_CONFIG),
            "text_encoder": CLIPTextModel(CLIPTextConfig(**CLIP_TEXT_CONFIG)),
        }


@pytest.fixture(scope="module")
def unet():
    from diffusers import UNet2DConditionModel

    return build_diffusers(UNet2DConditionModel, base_folder("unet"))


# ---- the base model's components -------------------------------------------------------------
def test_unet_is_sd15_at_full_size(unet, full_size):
    from diffusers import UNet2DConditionModel

    for folder in real(f"{BASE_ID}/unet"):
        model = build_diffusers(UNet2DConditionModel, folder)
        assert count(model) == UNET_PARAMETERS
        # The benchmarks' full-size UNet (its config written in code) is the real one.
        assert shapes(model) == shapes(full_size["unet"])
        assert model.config.sample_size == 64  # 512 px images: 64 x 64 latents
        assert model.config.cross_attention_dim == 768  # CLIP ViT-L/14's text width
        assert model.config.in_channels == model.config.out_channels == 4


def test_vae_is_sd15_at_full_size(full_size):
    from diffusers import AutoencoderKL

    from pipelines.loop.denoise import decode_latents

    for folder in real(f"{BASE_ID}/vae"):
        vae = build_diffusers(AutoencoderKL, folder)
        assert count(vae) == VAE_PARAMETERS
        assert shapes(vae) == shapes(full_size["vae"])
        assert vae.config.latent_channels == 4
        # decode_latents divides by it: SD1.5's latent scale (the diffusers default when absent).
        assert vae.config.scaling_factor == pytest.approx(0.18215)
        images = decode_latents(vae, torch.empty(1, 4, 64, 48, device="meta"))
        assert images.shape == (1, 3, 512, 384)  # x8, what the loop and the control image assume


def test_text_encoder_is_clip_vit_l_text_at_full_size(unet, full_size):
    from transformers import CLIPTextConfig, CLIPTextModel

    for folder in real(f"{BASE_ID}/text_encoder"):
        encoder = build_transformers(CLIPTextModel, CLIPTextConfig, folder)
        assert count(encoder) == CLIP_TEXT_PARAMETERS
        assert shapes(encoder) == shapes(full_size["text_encoder"])
        config = encoder.config
        assert config.hidden_size == unet.config.cross_attention_dim
        assert config.max_position_embeddings == 77  # the prompt chunk length of the loop
        assert config.vocab_size == 49408
        tokens = torch.zeros(2, 77, dtype=torch.long, device="meta")
        assert encoder(tokens).last_hidden_state.shape == (2, 77, 768)  # the prompt embeddings


def test_scheduler_config_loads_and_every_sampler_accepts_it():
    from diffusers import PNDMScheduler

    from pipelines.loop.schedulers import SCHEDULERS, make_scheduler
    from testkit.tiny_models import SD15_SCHEDULER

    for folder in real(f"{BASE_ID}/scheduler"):
        scheduler = PNDMScheduler.from_pretrained(folder)
        config = dict(scheduler.config)
        # The tiny models' scheduler is SD1.5's: the keys it sets have the real values.
        assert {key: config[key] for key in SD15_SCHEDULER} == SD15_SCHEDULER
        assert config["prediction_type"] == "epsilon"
        for name, (class_name, _) in SCHEDULERS.items():
            sampler = make_scheduler(name, scheduler.config)
            assert type(sampler).__name__ == class_name
            sampler.set_timesteps(20)
            assert 0 < len(sampler.timesteps) <= 40, name  # some samplers take two evaluations
            assert int(sampler.timesteps.max()) < config["num_train_timesteps"]


def test_model_index_lists_the_components_the_loader_loads(tmp_path):
    from diffusers import StableDiffusionControlNetPipeline

    from errors import ModelUnavailableError
    from model_sources import load_model, missing_files
    from pipelines.models.base_models import _PIPELINE_KWARGS

    folder = base_folder()
    index = json.loads((folder / "model_index.json").read_text())
    assert index["_class_name"] == "StableDiffusionPipeline"
    components = {
        name for name in index if not name.startswith("_") and isinstance(index[name], list)
    }
    pipeline_modules = set(inspect.signature(StableDiffusionControlNetPipeline).parameters) - {
        "controlnet",  # passed per request, never from the base repo
        "image_encoder",  # optional: IP-Adapter only
        "requires_safety_checker",
    }
    assert components == pipeline_modules
    skipped = {name for name, value in _PIPELINE_KWARGS.items() if value is None}
    assert skipped == {"controlnet", "safety_checker", "feature_extractor"}
    for name in sorted(components - skipped):  # every class the pipeline builds resolves
        library, class_name = index[name]
        assert hasattr(importlib.import_module(library), class_name), (name, library, class_name)

    # The app's loader on a MODELS_DIR holding only the real configs: it names the weights it
    # lacks (the configs are all there) and never starts a half load.
    models_dir = tmp_path / "models"
    shutil.copytree(folder, models_dir / BASE_ID)
    lacking = missing_files(models_dir / BASE_ID, skip=sorted(skipped))
    assert lacking == [
        "text_encoder/model.safetensors",
        "unet/diffusion_pytorch_model.safetensors",
        "vae/diffusion_pytorch_model.safetensors",
    ]
    with pytest.raises(ModelUnavailableError, match="unet/diffusion_pytorch_model.safetensors"):
        load_model(
            StableDiffusionControlNetPipeline.from_pretrained,
            "base",
            BASE_ID,
            models_dir,
            half_precision=False,
            **_PIPELINE_KWARGS,
        )


def _write_byte_level_vocab(folder: Path) -> None:
    """A vocab.json / merges.txt pair with CLIP's 256 byte symbols, their word-final forms and
    the two special tokens (no merges): the real tokenizer_config.json is read beside it."""
    from tokenizers.pre_tokenizers import ByteLevel

    chars = sorted(ByteLevel.alphabet())
    tokens = chars + [char + "</w>" for char in chars] + ["<|startoftext|>", "<|endoftext|>"]
    (folder / "vocab.json").write_text(json.dumps({token: i for i, token in enumerate(tokens)}))
    (folder / "merges.txt").write_text("#version: 0.2\n")


def test_tokenizer_config_loads_without_tokenizer_json(tmp_path):
    from transformers import CLIPTokenizer

    for index, source in enumerate(real(f"{BASE_ID}/tokenizer/tokenizer_config.json")):
        folder = tmp_path / f"tokenizer{index}"
        folder.mkdir()
        shutil.copy(source, folder)
        _write_byte_level_vocab(folder)
        assert not (folder / "tokenizer.json").exists()
        tokenizer = CLIPTokenizer.from_pretrained(folder)
        assert tokenizer.model_max_length == 77
        assert tokenizer.bos_token == "<|startoftext|>"
        assert tokenizer.eos_token == tokenizer.pad_token == tokenizer.unk_token == "<|endoftext|>"
        ids = tokenizer("A Photo", padding="max_length", max_length=77, truncation=True).input_ids
        assert len(ids) == 77
        assert ids[0] == tokenizer.bos_token_id
        assert ids[-1] == tokenizer.eos_token_id == tokenizer.pad_token_id  # padded with EOS
        # do_lower_case: the prompt is lowercased before the byte-level split.
        assert tokenizer.convert_ids_to_tokens(ids[1:3]) == ["a</w>", "p"]


def test_real_tokenizer_files_tokenize_to_the_known_ids():
    from transformers import CLIPTokenizer

    needed = ("vocab.json", "merges.txt", "tokenizer_config.json", "special_tokens_map.json")
    folders = [
        folder
        for folder in copies(f"{BASE_ID}/tokenizer")
        if all((folder / name).is_file() for name in needed)
    ]
    if not folders:
        pytest.skip("SD1.5's tokenizer vocab.json and merges.txt are not kept here (PROVENANCE.md)")
    for folder in folders:
        assert not (folder / "tokenizer.json").exists()
        tokenizer = CLIPTokenizer.from_pretrained(folder)
        assert len(tokenizer) == 49408
        assert tokenizer.model_max_length == 77
        ids = tokenizer("a photo of an astronaut").input_ids
        assert ids == [49406, 320, 1125, 539, 550, 18376, 49407]


def test_safety_checker_and_its_processor_at_full_size(tmp_path):
    from diffusers.pipelines.stable_diffusion.safety_checker import StableDiffusionSafetyChecker
    from transformers import CLIPConfig, CLIPImageProcessor

    from model_sources import missing_files
    from pipelines.models.safety import MODEL_SUBFOLDER, PROCESSOR_SUBFOLDER, subfolders

    model_id = OPTIONAL_MODEL_IDS["safety_checker"]
    for folder in real(f"{model_id}/safety_checker"):
        checker = build_transformers(StableDiffusionSafetyChecker, CLIPConfig, folder)
        vision = checker.config.vision_config
        assert count(checker.vision_model) == SAFETY_VISION_PARAMETERS
        assert tuple(checker.visual_projection.weight.shape) == (768, 1024)
        assert tuple(checker.concept_embeds.shape) == (17, 768)  # 17 concepts, 3 special-care
        assert tuple(checker.special_care_embeds.shape) == (3, 768)
        patches = (vision.image_size // vision.patch_size) ** 2
        embeddings = checker.vision_model.embeddings.position_embedding.weight
        assert tuple(embeddings.shape) == (patches + 1, 1024)
    for folder in real(f"{model_id}/feature_extractor"):
        processor = CLIPImageProcessor.from_pretrained(folder)
        pixels = processor(images=[data.astronaut(), data.coffee()], return_tensors="pt")
        # What the checker's vision tower takes: its own 224 px input.
        assert tuple(pixels.pixel_values.shape) == (2, 3, vision.image_size, vision.image_size)

    # The checker reads SD1.5's subfolders; with the real configs in place only its weights lack.
    models_dir = tmp_path / "models"
    for name in (MODEL_SUBFOLDER, PROCESSOR_SUBFOLDER):
        shutil.copytree(real(f"{model_id}/{name}")[0], models_dir / model_id / name)
    assert subfolders(model_id, models_dir) == (MODEL_SUBFOLDER, PROCESSOR_SUBFOLDER)
    source = models_dir / model_id
    assert missing_files(source, subfolder=PROCESSOR_SUBFOLDER) == []
    assert missing_files(source, subfolder=MODEL_SUBFOLDER) == ["safety_checker/model.safetensors"]


# ---- ControlNets ------------------------------------------------------------------------------
@pytest.mark.parametrize("model_id", CONTROLNET_IDS)
def test_controlnet_mirrors_the_unet_encoder(model_id, unet, full_size):
    """Each default ControlNet (v1.1 and v1.0) is SD1.5's encoder copy: the residuals it gives are
    the shapes the loop adds to the real UNet's skips, for a control image 8x the latents."""
    from diffusers import ControlNetModel

    from pipelines.loop.control import SD15_CONNECTION_SIZES_512
    from pipelines.loop.denoise import residual_shapes

    for folder in real(model_id):
        controlnet = build_diffusers(ControlNetModel, folder)
        config = controlnet.config
        assert count(controlnet) == CONTROLNET_PARAMETERS
        assert shapes(controlnet) == shapes(full_size["controlnet"])
        assert config.controlnet_conditioning_channel_order == "rgb"  # the app feeds RGB maps
        assert config.conditioning_channels == 3
        assert list(config.conditioning_embedding_out_channels) == [16, 32, 96, 256]
        for key in ("block_out_channels", "layers_per_block", "cross_attention_dim"):
            assert config[key] == unet.config[key], key

        sample_shape = (2, 4, 64, 64)
        down_shapes, middle_shape = residual_shapes(unet.config, sample_shape)
        assert residual_shapes(config, sample_shape) == (down_shapes, middle_shape)
        assert [size for _, size, _ in down_shapes] + [middle_shape[1]] == list(
            SD15_CONNECTION_SIZES_512
        )
        # Its zero convolutions keep the widths of the UNet skips they are added to.
        zero_convs = [tuple(conv.weight.shape[:2]) for conv in controlnet.controlnet_down_blocks]
        assert zero_convs == [(channels, channels) for channels, _, _ in down_shapes]
        sample = torch.empty(*sample_shape, device="meta")
        down, middle = controlnet(
            sample,
            torch.tensor([500, 500], device="meta"),
            encoder_hidden_states=torch.empty(2, 77, 768, device="meta"),
            controlnet_cond=torch.empty(2, 3, 512, 512, device="meta"),
            return_dict=False,
        )
        assert [tuple(residual.shape[1:]) for residual in down] == down_shapes
        assert tuple(middle.shape[1:]) == middle_shape
        noise = unet(
            sample,
            torch.tensor([500, 500], device="meta"),
            encoder_hidden_states=torch.empty(2, 77, 768, device="meta"),
            down_block_additional_residuals=down,
            mid_block_additional_residual=middle,
            return_dict=False,
        )[0]
        assert noise.shape == sample_shape


def test_the_ids_checked_are_every_controlnet_the_app_loads():
    """The parametrised list above holds what the model store asks for in both families."""
    from types import SimpleNamespace

    from conditions import CONDITIONS
    from pipelines.models.store import ModelStore
    from settings import CONTROLNET_VERSIONS, Settings

    store = SimpleNamespace(settings=Settings())
    roles = {condition.controlnet_role for condition in CONDITIONS.values()}
    roles |= {
        role
        for condition in CONDITIONS.values()
        for role in condition.controlnet_role_by_annotator.values()
    }
    assert roles == set(CONTROLNET_ROLES)
    asked = {
        ModelStore.controlnet_id(store, role, version)
        for role in CONTROLNET_ROLES
        for version in CONTROLNET_VERSIONS
    }
    assert asked == set(CONTROLNET_IDS)


# ---- the preview decoder ---------------------------------------------------------------------
def test_taesd_decodes_the_base_latents_at_full_size():
    from diffusers import AutoencoderKL, AutoencoderTiny

    from pipelines.loop.denoise import decode_latents

    vae = build_diffusers(AutoencoderKL, base_folder("vae"))
    for folder in real(OPTIONAL_MODEL_IDS["preview_decoder"]):
        taesd = build_diffusers(AutoencoderTiny, folder)
        assert count(taesd) == TAESD_PARAMETERS
        assert taesd.config.latent_channels == vae.config.latent_channels
        # TAESD reads the latents as the loop holds them (scaled): decode_latents divides by 1.
        assert taesd.config.scaling_factor == 1.0
        preview = decode_latents(taesd, torch.empty(1, 4, 64, 48, device="meta"))
        assert preview.shape == decode_latents(vae, torch.empty(1, 4, 64, 48, device="meta")).shape


# ---- annotator models ------------------------------------------------------------------------
def test_dpt_hybrid_builds_with_its_bit_backbone_and_gives_the_annotators_depth():
    from transformers import DPTConfig, DPTForDepthEstimation, DPTImageProcessor

    from annotators.depth import NET_MULTIPLE, _accept_any_square, round_to_multiple

    for folder in real(DEFAULT_MODEL_IDS["depth_estimator"]):
        model = build_transformers(DPTForDepthEstimation, DPTConfig, folder)
        config = model.config
        assert config.is_hybrid
        assert config.backbone_config.model_type == "bit"
        assert type(model.dpt.embeddings).__name__ == "DPTViTHybridEmbeddings"
        pixels = torch.empty(1, 3, config.image_size, config.image_size, device="meta")
        depth = model(pixel_values=pixels).predicted_depth
        assert depth.shape == (1, config.image_size, config.image_size)
        # The annotator runs it at the detect resolution (any multiple of 32), not only at 384.
        assert _accept_any_square(model)
        side = round_to_multiple(512, NET_MULTIPLE)
        depth = model(pixel_values=torch.empty(1, 3, side, side, device="meta")).predicted_depth
        assert depth.shape == (1, side, side)
        processor = DPTImageProcessor.from_pretrained(folder)
        inputs = processor(
            images=data.astronaut(),
            do_resize=True,
            size={"height": side, "width": side},
            keep_aspect_ratio=False,
            return_tensors="pt",
        )
        assert tuple(inputs.pixel_values.shape) == (1, 3, side, side)


def test_upernet_convnext_small_has_the_150_ade20k_classes_of_the_palette():
    from transformers import AutoImageProcessor, UperNetConfig, UperNetForSemanticSegmentation

    from annotators.ade20k import ADE20K_CLASSES, NUM_CLASSES

    for folder in real(DEFAULT_MODEL_IDS["segmenter"]):
        model = build_transformers(UperNetForSemanticSegmentation, UperNetConfig, folder)
        config = model.config
        assert config.num_labels == len(config.id2label) == NUM_CLASSES == len(ADE20K_CLASSES)
        assert config.backbone_config.model_type == "convnext"
        assert list(config.backbone_config.depths) == [3, 3, 27, 3]
        assert list(config.backbone_config.hidden_sizes) == [96, 192, 384, 768]
        logits = model(pixel_values=torch.empty(1, 3, 512, 384, device="meta")).logits
        assert logits.shape == (1, NUM_CLASSES, 512, 384)  # upsampled to the input, as seg reads
        processor = AutoImageProcessor.from_pretrained(folder)
        image = np.ascontiguousarray(data.astronaut()[:, :384])
        pixels = processor(images=image, do_resize=False, return_tensors="pt").pixel_values
        assert tuple(pixels.shape) == (1, 3, 512, 384)
