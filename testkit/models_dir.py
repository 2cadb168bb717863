"""Whole MODELS_DIR trees of tiny models: the tests' one (every role the app loads), and the
smallest one a generation needs (the base and the canny ControlNet), which the benchmarks'
smoke runs use.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

# A community SD1.5 checkpoint as one original-layout .safetensors file, relative to MODELS_DIR.
COMMUNITY_BASE = "community/tiny-community.safetensors"
COMMUNITY_BASE_MODELS = f"Tiny community={COMMUNITY_BASE}"  # the BASE_MODELS setting for it
# The ControlNet roles tests/golden/ was recorded with, in the order that gave them their seeds
# (1, 2, ...). Roles added later come after them, so the recorded ones keep their weights.
RECORDED_ROLES = (
    "canny", "depth", "mlsd", "normal", "normal_midas", "openpose", "scribble", "seg", "softedge",
)  # fmt: skip
# Roles added after tile, ip2p and line art, seeded after them in this order, so every earlier
# role keeps its weights.
ADDED_ROLES = ("inpaint", "lineart_anime", "shuffle")


# ControlNets whose Hub config has `global_pool_conditions: true` (v1.1's shuffle).
POOLED_ROLES = ("shuffle",)


def pool_conditions(controlnet_dir: Path) -> None:
    """Set `global_pool_conditions` in a saved ControlNet's config.json, as the real one has."""
    config_path = controlnet_dir / "config.json"
    config = json.loads(config_path.read_text())
    config["global_pool_conditions"] = True
    config_path.write_text(json.dumps(config, indent=2))


def controlnet_roles() -> list[str]:
    """Every ControlNet role a condition uses (v1.0 MiDaS normals too), in seed order: the
    recorded roles first, then the others, sorted."""
    from conditions import CONDITIONS

    roles = {condition.controlnet_role for condition in CONDITIONS.values()}
    for condition in CONDITIONS.values():
        roles.update(condition.controlnet_role_by_annotator.values())
    recorded = [role for role in RECORDED_ROLES if role in roles]
    added = [role for role in ADDED_ROLES if role in roles]
    return recorded + sorted(roles - set(RECORDED_ROLES) - set(ADDED_ROLES)) + added


def build_tiny_models(folder: Path) -> Path:
    """Tiny SD1.5, a tiny ControlNet for every role a condition uses (v1.0 MiDaS normals, tile,
    Instruct Pix2Pix, line art, inpaint, anime line art and shuffle too, shuffle's config pooled;
    seeded in `controlnet_roles` order), the v1.0 canny ControlNet, TAESD for previews, an
    LCM-LoRA, a second base as a single-file checkpoint (COMMUNITY_BASE), annotator weights (HED,
    M-LSD, DPT-Hybrid, UperNet, the two line-art generators, PiDiNet, a narrow anime line-art
    generator) and DWPose's two ONNX files with planted outputs (testkit.dwpose_models): the
    tests' MODELS_DIR. NormalBAE and OpenPose weights stay missing (their own tests build them)."""
    from settings import DEFAULT_MODEL_IDS, OPTIONAL_MODEL_IDS, V10_MODEL_IDS
    from testkit.annotator_weights import (
        save_hed_and_mlsd,
        save_lineart_and_pidinet,
        save_lineart_anime,
        save_tiny_dpt_hybrid,
        save_tiny_upernet,
    )
    from testkit.dwpose_models import save_dwpose
    from testkit.ldm_checkpoint import write_ldm_checkpoint
    from testkit.tiny_models import (
        build_models_dir,
        build_random_lcm_lora,
        build_tiny_base,
        build_tiny_controlnet,
        build_tiny_taesd,
    )

    build_models_dir(folder, [DEFAULT_MODEL_IDS[role] for role in controlnet_roles()])
    for role in POOLED_ROLES:  # their real configs set it: the loop pools their residuals
        pool_conditions(folder / DEFAULT_MODEL_IDS[role])
    build_tiny_controlnet(folder / V10_MODEL_IDS["canny"], seed=99)
    build_tiny_taesd(folder / OPTIONAL_MODEL_IDS["preview_decoder"])
    build_random_lcm_lora(
        folder / OPTIONAL_MODEL_IDS["lcm_lora"], folder / DEFAULT_MODEL_IDS["base"]
    )
    with tempfile.TemporaryDirectory() as scratch:
        community = build_tiny_base(Path(scratch) / "community", seed=5)
        write_ldm_checkpoint(community, folder / COMMUNITY_BASE)
    save_hed_and_mlsd(folder)
    save_tiny_dpt_hybrid(folder)
    save_tiny_upernet(folder)
    save_lineart_and_pidinet(folder)
    save_lineart_anime(folder)  # after the others: every earlier file keeps its seeds
    save_dwpose(folder)  # planted outputs, no seeds
    return folder


def build_tiny_canny(folder: Path) -> Path:
    """The tiny base and the canny ControlNet only, under their default ids in `folder`."""
    from settings import DEFAULT_MODEL_IDS
    from testkit.tiny_models import build_models_dir

    return build_models_dir(folder, [DEFAULT_MODEL_IDS["canny"]])
