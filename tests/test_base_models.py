"""Base models from a Hub id (MODELS_DIR mirror), a diffusers folder, or a single .safetensors file.

The single file is written from the tiny base in the original (LDM / A1111) layout, loaded back
offline with the tiny base's configs, and must give back exactly the same weights.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from diffusers import StableDiffusionControlNetPipeline, StableDiffusionPipeline
from safetensors import safe_open

from errors import ModelUnavailableError
from pipelines.models.base_models import base_source_kind, check_base_source, load_base_pipeline
from testkit.ldm_checkpoint import write_ldm_checkpoint
from testkit.tiny_models import BASE_ID, build_tiny_base

COMPONENTS = ("unet", "vae", "text_encoder")
CHECKPOINT = "community/tiny-sd15.safetensors"


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory) -> Path:
    """MODELS_DIR with the tiny default base and a single-file copy of it under community/."""
    models_dir = tmp_path_factory.mktemp("base_models")
    build_tiny_base(models_dir / BASE_ID)
    write_ldm_checkpoint(models_dir / BASE_ID, models_dir / CHECKPOINT)
    return models_dir


@pytest.fixture(scope="module")
def original(models_dir) -> StableDiffusionPipeline:
    return StableDiffusionPipeline.from_pretrained(
        models_dir / BASE_ID, safety_checker=None, use_safetensors=True, local_files_only=True
    )


def load(source: str, models_dir: Path, dtype: torch.dtype = torch.float32):
    return load_base_pipeline(
        source, role_label="base", models_dir=models_dir, config_source=BASE_ID, dtype=dtype
    )


def assert_base_pipeline(pipe, dtype: torch.dtype) -> None:
    assert isinstance(pipe, StableDiffusionControlNetPipeline)
    assert pipe.controlnet is None and pipe.safety_checker is None
    for name in COMPONENTS:
        assert getattr(pipe, name).device.type == "cpu"
        assert getattr(pipe, name).dtype == dtype


def same_weights(pipe, other) -> bool:
    for name in COMPONENTS:
        mine, theirs = getattr(pipe, name).state_dict(), getattr(other, name).state_dict()
        assert mine.keys() == theirs.keys(), name
        if not all(torch.equal(mine[key], theirs[key]) for key in mine):
            return False
    return True


def test_checkpoint_is_in_the_original_layout(models_dir):
    with safe_open(models_dir / CHECKPOINT, framework="pt") as checkpoint:
        keys = list(checkpoint.keys())
    prefixes = ("model.diffusion_model.", "first_stage_model.", "cond_stage_model.transformer.")
    assert all(key.startswith(prefixes) for key in keys)
    assert not [key for key in keys if any(p in key for p in ("down_blocks", "up_blocks", "mid_"))]
    for key in (
        "model.diffusion_model.input_blocks.3.0.op.weight",  # the first downsampler
        "model.diffusion_model.output_blocks.2.2.conv.weight",  # upsampler after attention
        "first_stage_model.decoder.up.3.block.1.conv1.weight",  # decoder numbered bottom-up
        "first_stage_model.encoder.mid.attn_1.q.weight",
        "cond_stage_model.transformer.text_model.embeddings.position_embedding.weight",
    ):
        assert key in keys


def test_single_file_loads_offline_with_the_same_weights(models_dir, original):
    pipe = load(CHECKPOINT, models_dir)
    assert_base_pipeline(pipe, torch.float32)
    assert same_weights(pipe, original)
    absolute = load(str(models_dir / CHECKPOINT), models_dir)
    assert same_weights(absolute, original)


def test_single_file_loads_in_the_requested_dtype(models_dir):
    assert_base_pipeline(load(CHECKPOINT, models_dir, torch.bfloat16), torch.bfloat16)


def test_hub_id_and_a_different_folder_load(models_dir, original, tmp_path):
    mirrored = load(BASE_ID, models_dir)
    assert_base_pipeline(mirrored, torch.float32)
    assert same_weights(mirrored, original)

    folder = build_tiny_base(tmp_path / "another-base", seed=1)
    assert base_source_kind(str(folder), models_dir) == "folder"
    other = load(str(folder), models_dir)
    assert_base_pipeline(other, torch.float32)
    assert not same_weights(other, original)


def test_source_kinds(models_dir):
    assert base_source_kind(BASE_ID, models_dir) == "hub"
    assert base_source_kind("someone/model-v1.5", models_dir) == "hub"
    assert base_source_kind(CHECKPOINT, models_dir) == "single_file"
    assert base_source_kind(str(models_dir / CHECKPOINT), models_dir) == "single_file"
    assert base_source_kind("/nowhere/model.SafeTensors", models_dir) == "single_file"


@pytest.mark.parametrize("name", ["model.ckpt", "model.pt", "model.pth", "model.bin"])
def test_pickle_single_files_are_refused(models_dir, name):
    (models_dir / name).write_bytes(b"not read")
    for source in (name, str(models_dir / name)):
        with pytest.raises(ValueError, match=r"Only \.safetensors single files.*can run code"):
            check_base_source(source)
        with pytest.raises(ValueError, match=r"Only \.safetensors single files.*can run code"):
            load(source, models_dir)


@pytest.mark.parametrize("name", ["model.gguf", "model.yaml"])
def test_other_files_are_refused(models_dir, name):
    (models_dir / name).write_bytes(b"not read")
    with pytest.raises(ValueError, match="cannot be loaded"):
        base_source_kind(name, models_dir)
    with pytest.raises(ValueError, match="cannot be loaded"):
        check_base_source(str(models_dir / name))


def test_missing_single_file_names_it(models_dir):
    with pytest.raises(ModelUnavailableError, match=r"missing/model\.safetensors does not exist"):
        load("missing/model.safetensors", models_dir)


def test_missing_folder_names_it(models_dir, tmp_path):
    with pytest.raises(ModelUnavailableError, match="no-such-folder does not exist"):
        load(str(tmp_path / "no-such-folder"), models_dir)


def test_missing_config_source_is_explained(models_dir):
    with pytest.raises(ModelUnavailableError, match="nobody/nothing") as raised:
        load_base_pipeline(
            CHECKPOINT,
            role_label="base",
            models_dir=models_dir,
            config_source="nobody/nothing",
            dtype=torch.float32,
        )
    assert "tiny-sd15.safetensors" in str(raised.value)
    assert "HF_HUB_OFFLINE is set" in str(raised.value)
