"""`python -m cli download` from a fake Hub mirror: only the needed files, in the layout the app
loads, nothing twice; and the Hub path asks `snapshot_download` for exactly those files."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import download
from conditions import CONDITIONS
from settings import DEFAULT_MODEL_IDS, OPTIONAL_MODEL_IDS, V10_MODEL_IDS, Settings
from testkit.tiny_models import BASE_ID, build_tiny_base, build_tiny_controlnet

PROJECT_ROOT = Path(__file__).resolve().parent.parent
CANNY_ID = DEFAULT_MODEL_IDS["canny"]
# Every ControlNet role a tab runs (v1.0 MiDaS normals, tile and Instruct Pix2Pix too).
CONTROLNET_ROLES = sorted(
    {
        condition.controlnet_role_for(annotator)
        for condition in CONDITIONS.values()
        for annotator in condition.annotators
    }
)
CONTROLNET_IDS = sorted(
    {DEFAULT_MODEL_IDS[role] for role in CONTROLNET_ROLES} | set(V10_MODEL_IDS.values())
)
ANNOTATOR_FILES = [
    "ControlNetHED.pth",
    "body_pose_model.pth",
    "facenet.pth",
    "hand_pose_model.pth",
    "mlsd_large_512_fp32.pth",
    "netG.pth",
    "scannet.pt",
    "sk_model.pth",
    "sk_model2.pth",
    "table5_pidinet.pth",
]
BASE_FILES = [
    "model_index.json",
    "scheduler/scheduler_config.json",
    "text_encoder/config.json",
    "text_encoder/model.safetensors",
    "tokenizer/merges.txt",
    "tokenizer/tokenizer.json",
    "tokenizer/tokenizer_config.json",
    "tokenizer/vocab.json",
    "unet/config.json",
    "unet/diffusion_pytorch_model.safetensors",
    "vae/config.json",
    "vae/diffusion_pytorch_model.safetensors",
]
# Every repo of the default (v1.1) family and what must arrive from it.
EXPECTED = {
    BASE_ID: BASE_FILES,
    **{
        DEFAULT_MODEL_IDS[role]: ["config.json", "diffusion_pytorch_model.safetensors"]
        for role in CONTROLNET_ROLES
    },
    "lllyasviel/Annotators": ANNOTATOR_FILES,
    "Intel/dpt-hybrid-midas": ["config.json", "preprocessor_config.json", "pytorch_model.bin"],
    "openmmlab/upernet-convnext-small": [
        "config.json",
        "model.safetensors",
        "preprocessor_config.json",
    ],
    **dict.fromkeys(
        (DEFAULT_MODEL_IDS["depth_zoe"], DEFAULT_MODEL_IDS["depth_anything"]),
        ["config.json", "model.safetensors", "preprocessor_config.json"],
    ),
    **dict.fromkeys(
        (
            DEFAULT_MODEL_IDS["segmenter_oneformer_ade20k"],
            DEFAULT_MODEL_IDS["segmenter_oneformer_coco"],
        ),
        [
            "config.json",
            "merges.txt",
            "model.safetensors",
            "preprocessor_config.json",
            "special_tokens_map.json",
            "tokenizer_config.json",
            "vocab.json",
        ],
    ),
    DEFAULT_MODEL_IDS["oneformer_class_info"]: ["ade20k_panoptic.json", "coco_panoptic.json"],
    "yzd-v/DWPose": ["dw-ll_ucoco_384.onnx", "yolox_l.onnx"],
}
# The Hub listings of the newer annotator repos (main), with what the download leaves behind:
# README and .gitattributes everywhere, OneFormer's original detectron2 checkpoints and pickled
# weights beside the safetensors, and the demo dataset's images and other class lists.
ZOE_LISTING = [".gitattributes", "README.md", "config.json", "model.safetensors"]
ZOE_LISTING += ["preprocessor_config.json"]
ONEFORMER_LISTING = {
    DEFAULT_MODEL_IDS["segmenter_oneformer_ade20k"]: "250_16_swin_l_oneformer_ade20k_160k.pth",
    DEFAULT_MODEL_IDS["segmenter_oneformer_coco"]: "150_16_swin_l_oneformer_coco_100ep.pth",
}
ONEFORMER_FILES = [".gitattributes", "README.md", "config.json", "merges.txt"]
ONEFORMER_FILES += ["model.safetensors", "preprocessor_config.json", "pytorch_model.bin"]
ONEFORMER_FILES += ["special_tokens_map.json", "tokenizer_config.json", "vocab.json"]
CLASS_INFO_LISTING = [".gitattributes", "ade20k.jpeg", "ade20k_panoptic.json"]
CLASS_INFO_LISTING += ["cityscapes.png", "cityscapes_panoptic.json", "coco.jpeg"]
CLASS_INFO_LISTING += ["coco_panoptic.json"]


def dummy(path: Path, size: int = 16) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x" * size)


def files_under(folder: Path) -> list[str]:
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())


@pytest.fixture(scope="module")
def mirror(tmp_path_factory) -> Path:
    """A fake Hub: tiny real base and ControlNets, dummy annotator weights, and files the
    download must leave behind (checkpoints, fp16 / EMA variants, pickles, safety checker)."""
    hub = tmp_path_factory.mktemp("hub")
    base = build_tiny_base(hub / BASE_ID)
    for unwanted in (
        "v1-5-pruned.ckpt",
        "v1-5-pruned-emaonly.safetensors",
        "README.md",
        "safety_checker/config.json",
        "safety_checker/model.safetensors",
        "feature_extractor/preprocessor_config.json",
        "text_encoder/pytorch_model.bin",
        "unet/diffusion_pytorch_model.bin",
        "unet/diffusion_pytorch_model.fp16.safetensors",
        "unet/diffusion_pytorch_model.non_ema.safetensors",
        "vae/diffusion_pytorch_model.fp16.safetensors",
    ):
        dummy(base / unwanted)
    canny = build_tiny_controlnet(hub / CANNY_ID)
    for unwanted in (
        "diffusion_pytorch_model.bin",
        "diffusion_pytorch_model.fp16.safetensors",
        "images/input.png",
    ):
        dummy(canny / unwanted)
    for repo_id in CONTROLNET_IDS:
        if repo_id != CANNY_ID:
            shutil.copytree(canny, hub / repo_id)
    annotators = hub / "lllyasviel/Annotators"
    for size, name in enumerate(ANNOTATOR_FILES, start=10):
        dummy(annotators / name, size)
    dummy(annotators / "ZoeD_M12_N.pt", 2_000_000)  # an unrelated big one
    dummy(annotators / "ControlNetHED.pth.bak")
    for repo_id in ("Intel/dpt-hybrid-midas", "openmmlab/upernet-convnext-small"):
        for name in ("config.json", "preprocessor_config.json", "pytorch_model.bin", "README.md"):
            dummy(hub / repo_id / name)
    dummy(hub / "openmmlab/upernet-convnext-small/model.safetensors")  # preferred over the .bin
    for role in ("depth_zoe", "depth_anything"):
        for name in ZOE_LISTING:
            dummy(hub / DEFAULT_MODEL_IDS[role] / name)
    for repo_id, checkpoint in ONEFORMER_LISTING.items():
        for name in (*ONEFORMER_FILES, checkpoint):
            dummy(hub / repo_id / name)
    for name in CLASS_INFO_LISTING:
        dummy(hub / DEFAULT_MODEL_IDS["oneformer_class_info"] / name)
    for name in ("yolox_l.onnx", "dw-ll_ucoco_384.onnx", "dw-ll_ucoco_384.pth", "README.md"):
        dummy(hub / "yzd-v/DWPose" / name)  # the .pth: the PyTorch checkpoint, not read
    return hub


def run_download(*args: str | Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "cli", "download", *map(str, args)],
        cwd=PROJECT_ROOT,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_download_all_fetches_exactly_what_the_app_loads(mirror, tmp_path, astronaut):
    out = tmp_path / "models"
    first = run_download("--all", "--source", mirror, "--models-dir", out)
    assert first.returncode == 0, first.stderr
    assert files_under(out) == sorted(
        f"{repo_id}/{name}" for repo_id, names in EXPECTED.items() for name in names
    )
    assert "lllyasviel/Annotators: fetched 10 file(s), 145 B; 0 present" in first.stdout
    assert "unet/diffusion_pytorch_model.safetensors" in first.stdout
    assert f"into {out}." in first.stdout.splitlines()[-1]

    second = run_download("--all", "--source", mirror, "--models-dir", out)
    assert second.returncode == 0, second.stderr
    assert "fetched 0 file(s)" in second.stdout
    assert second.stdout.splitlines()[-1] == f"Nothing to fetch: every file is already in {out}."

    from pipelines.engine import Engine

    result = Engine(Settings(models_dir=out), device="cpu").generate(
        "canny", astronaut, "a house", steps=2, image_resolution=256, seed=1
    )
    assert [image.shape for image in result.images] == [(256, 256, 3)]


def test_selected_roles_the_v10_family_and_a_changed_file(mirror, tmp_path):
    lines: list[str] = []
    failures = download.download(
        ["canny", "annotators"], tmp_path, family="v10", source=mirror, echo=lines.append
    )
    assert failures == []
    v10_canny = V10_MODEL_IDS["canny"]
    assert files_under(tmp_path) == sorted(
        [f"{v10_canny}/config.json", f"{v10_canny}/diffusion_pytorch_model.safetensors"]
        + [f"lllyasviel/Annotators/{name}" for name in ANNOTATOR_FILES]
    )
    dummy(tmp_path / "lllyasviel/Annotators/facenet.pth", 3)  # e.g. an interrupted copy
    lines.clear()
    download.download(["annotators"], tmp_path, source=mirror, echo=lines.append)
    assert lines[:2] == [
        "lllyasviel/Annotators: fetched 1 file(s), 12 B; 9 present",
        "  facenet.pth (12 B)",
    ]


def test_a_repo_missing_from_the_source_is_reported_and_the_rest_fetched(tmp_path):
    source = tmp_path / "hub"
    dummy(source / "lllyasviel/Annotators/scannet.pt")
    result = run_download("canny", "annotators", "--source", source, "--models-dir", tmp_path / "m")
    assert result.returncode == 1
    assert f"`{CANNY_ID}` is not in the source folder" in result.stderr
    assert files_under(tmp_path / "m") == ["lllyasviel/Annotators/scannet.pt"]
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["canny"], "HF_HUB_OFFLINE is set"),
        ([], "Name the roles to fetch, or --all"),
        (["sketch", "--source", "."], "Unknown role 'sketch'"),
    ],
)
def test_download_refusals(tmp_path, args, message):
    result = run_download(*args, "--models-dir", tmp_path)
    assert result.returncode == 2
    assert message in result.stderr
    assert "Traceback" not in result.stderr


def test_hub_downloads_ask_snapshot_download_for_the_missing_files_only(monkeypatch, tmp_path):
    import huggingface_hub

    listing = {
        "config.json": 5,
        "diffusion_pytorch_model.safetensors": 9,
        "diffusion_pytorch_model.fp16.safetensors": 4,
        "diffusion_pytorch_model.bin": 9,
        "README.md": 1,
    }
    dummy(tmp_path / CANNY_ID / "config.json", 5)  # already here
    calls = []
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setattr(download, "hub_listing", lambda repo_id: listing)

    def fake_snapshot(*args, **kwargs):
        calls.append((args, kwargs))
        for name in kwargs["allow_patterns"]:  # what the Hub would write
            dummy(kwargs["local_dir"] / name, listing[name])

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot)
    assert download.download(["canny"], tmp_path, echo=lambda line: None) == []
    assert calls == [
        (
            (CANNY_ID,),
            {
                "local_dir": tmp_path / CANNY_ID,
                "allow_patterns": ["diffusion_pytorch_model.safetensors"],
            },
        )
    ]
    # A transfer that ends without the weights is a failure, not a model.
    (tmp_path / CANNY_ID / "diffusion_pytorch_model.safetensors").unlink()
    monkeypatch.setattr(huggingface_hub, "snapshot_download", lambda *args, **kwargs: None)
    failures = download.download(["canny"], tmp_path, echo=lambda line: None)
    assert len(failures) == 1 and "diffusion_pytorch_model.safetensors" in failures[0]
    assert "incomplete" in failures[0]


def test_rules_keep_the_needed_files_of_real_repo_listings():
    sd15 = [
        "model_index.json",
        "v1-5-pruned-emaonly.safetensors",
        "v1-5-pruned.ckpt",
        "feature_extractor/preprocessor_config.json",
        "safety_checker/config.json",
        "safety_checker/model.fp16.safetensors",
        "safety_checker/model.safetensors",
        "scheduler/scheduler_config.json",
        "text_encoder/config.json",
        "text_encoder/model.fp16.safetensors",
        "text_encoder/model.safetensors",
        "text_encoder/pytorch_model.bin",
        "tokenizer/merges.txt",
        "tokenizer/special_tokens_map.json",
        "tokenizer/tokenizer_config.json",
        "tokenizer/vocab.json",
        "unet/config.json",
        "unet/diffusion_pytorch_model.fp16.safetensors",
        "unet/diffusion_pytorch_model.non_ema.safetensors",
        "unet/diffusion_pytorch_model.safetensors",
        "vae/config.json",
        "vae/diffusion_pytorch_model.fp16.safetensors",
        "vae/diffusion_pytorch_model.safetensors",
    ]
    kept = download.select(dict.fromkeys(sd15, 1), download.rule_for("base"))
    assert list(kept) == [
        "model_index.json",
        "scheduler/scheduler_config.json",
        "text_encoder/config.json",
        "text_encoder/model.safetensors",
        "tokenizer/merges.txt",
        "tokenizer/special_tokens_map.json",
        "tokenizer/tokenizer_config.json",
        "tokenizer/vocab.json",
        "unet/config.json",
        "unet/diffusion_pytorch_model.safetensors",
        "vae/config.json",
        "vae/diffusion_pytorch_model.safetensors",
    ]
    midas = ["config.json", "preprocessor_config.json", "pytorch_model.bin", "README.md"]
    kept = download.select(dict.fromkeys(midas, 1), download.rule_for("depth_estimator"))
    assert list(kept) == ["config.json", "preprocessor_config.json", "pytorch_model.bin"]


@pytest.mark.parametrize("role", ["depth_zoe", "depth_anything"])
def test_depth_rules_keep_the_model_and_its_processor(role):
    kept = download.select(dict.fromkeys(ZOE_LISTING, 1), download.rule_for(role))
    assert list(kept) == ["config.json", "model.safetensors", "preprocessor_config.json"]


@pytest.mark.parametrize("role", ["segmenter_oneformer_ade20k", "segmenter_oneformer_coco"])
def test_oneformer_rules_keep_its_tokenizer_and_leave_the_original_checkpoints(role):
    listing = [*ONEFORMER_FILES, ONEFORMER_LISTING[DEFAULT_MODEL_IDS[role]]]
    kept = download.select(dict.fromkeys(listing, 1), download.rule_for(role))
    assert list(kept) == EXPECTED[DEFAULT_MODEL_IDS[role]]
    # A repo that has only the fast tokenizer's file is complete with it.
    fast = ["config.json", "preprocessor_config.json", "model.safetensors", "tokenizer.json"]
    fast += ["tokenizer_config.json"]
    rule = download.rule_for(role)
    assert set(download.select(dict.fromkeys(fast, 1), rule)) == set(fast)
    assert all(any(name in fast for name in entry) for entry in rule.requires)


def test_the_class_lists_come_from_the_oneformer_demo_dataset_repo():
    rule = download.rule_for("oneformer_class_info")
    assert rule.repo_type == "dataset" and rule.hub_kwargs == {"repo_type": "dataset"}
    kept = download.select(dict.fromkeys(CLASS_INFO_LISTING, 1), rule)
    assert list(kept) == ["ade20k_panoptic.json", "coco_panoptic.json"]
    assert download.rule_for("depth_zoe").hub_kwargs == {}  # model repos: the Hub's default


def test_a_dataset_repo_is_listed_and_fetched_as_a_dataset(monkeypatch, tmp_path):
    import huggingface_hub

    listing = dict.fromkeys(CLASS_INFO_LISTING, 7)
    listed, fetched = [], []
    monkeypatch.delenv("HF_HUB_OFFLINE")

    def fake_listing(repo_id, **kwargs):
        listed.append((repo_id, kwargs))
        return listing

    def fake_snapshot(repo_id, **kwargs):
        fetched.append((repo_id, kwargs["allow_patterns"], kwargs.get("repo_type")))
        for name in kwargs["allow_patterns"]:
            dummy(kwargs["local_dir"] / name, listing[name])

    monkeypatch.setattr(download, "hub_listing", fake_listing)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot)
    assert download.download(["oneformer_class_info"], tmp_path, echo=lambda line: None) == []
    repo_id = DEFAULT_MODEL_IDS["oneformer_class_info"]
    assert listed == [(repo_id, {"repo_type": "dataset"})]
    assert fetched == [(repo_id, ["ade20k_panoptic.json", "coco_panoptic.json"], "dataset")]


def test_fp16_rules_take_each_variant_where_the_repo_has_it():
    sd15 = [
        "model_index.json",
        "scheduler/scheduler_config.json",
        "text_encoder/config.json",
        "text_encoder/model.fp16.safetensors",
        "text_encoder/model.safetensors",
        "text_encoder/pytorch_model.fp16.bin",
        "tokenizer/vocab.json",
        "unet/config.json",
        "unet/diffusion_pytorch_model.fp16.safetensors",
        "unet/diffusion_pytorch_model.non_ema.safetensors",
        "unet/diffusion_pytorch_model.safetensors",
        "vae/config.json",
        "vae/diffusion_pytorch_model.safetensors",  # no fp16 variant: the full file comes
    ]
    kept = download.select(dict.fromkeys(sd15, 1), download.rule_for("base", "fp16"))
    assert list(kept) == [
        "model_index.json",
        "scheduler/scheduler_config.json",
        "text_encoder/config.json",
        "text_encoder/model.fp16.safetensors",
        "tokenizer/vocab.json",
        "unet/config.json",
        "unet/diffusion_pytorch_model.fp16.safetensors",
        "vae/config.json",
        "vae/diffusion_pytorch_model.safetensors",
    ]
    canny = [
        "config.json",
        "diffusion_pytorch_model.bin",
        "diffusion_pytorch_model.fp16.bin",
        "diffusion_pytorch_model.fp16.safetensors",
        "diffusion_pytorch_model.safetensors",
        "images/input.png",
    ]
    half = download.rule_for("canny", "fp16")
    kept = download.select(dict.fromkeys(canny, 1), half)
    assert list(kept) == ["config.json", "diffusion_pytorch_model.fp16.safetensors"]
    without = [name for name in canny if ".fp16." not in name]
    assert list(download.select(dict.fromkeys(without, 1), half)) == [
        "config.json",
        "diffusion_pytorch_model.safetensors",
    ]
    # Roles that are not diffusers models keep their one rule.
    assert download.rule_for("annotators", "fp16") == download.rule_for("annotators")


def test_download_precision_fp16_from_a_mirror(mirror, tmp_path):
    out = tmp_path / "models"
    result = run_download(
        "base", "canny", "--precision", "fp16", "--source", mirror, "--models-dir", out
    )
    assert result.returncode == 0, result.stderr
    half = {
        "unet/diffusion_pytorch_model.safetensors": "unet/diffusion_pytorch_model.fp16.safetensors",
        "vae/diffusion_pytorch_model.safetensors": "vae/diffusion_pytorch_model.fp16.safetensors",
    }  # the mirror has no fp16 text encoder: its full file comes
    expected_base = sorted(half.get(name, name) for name in BASE_FILES)
    assert files_under(out / BASE_ID) == expected_base
    assert files_under(out / CANNY_ID) == [
        "config.json",
        "diffusion_pytorch_model.fp16.safetensors",
    ]
    refused = run_download("base", "--precision", "fp8", "--source", mirror, "--models-dir", out)
    assert refused.returncode != 0 and "fp8" in refused.stderr


def test_optional_models_are_fetched_when_named_not_with_all(tmp_path):
    from testkit.tiny_models import build_tiny_taesd
    from testkit.tiny_safety import build_tiny_safety_checker

    mirror = tmp_path / "hub"
    build_tiny_safety_checker(mirror / OPTIONAL_MODEL_IDS["safety_checker"])
    build_tiny_taesd(mirror / OPTIONAL_MODEL_IDS["preview_decoder"])
    assert not set(OPTIONAL_MODEL_IDS) & set(download.ROLES)  # --all leaves them out
    out = tmp_path / "models"
    result = run_download(
        "safety_checker", "preview_decoder", "--source", mirror, "--models-dir", out
    )
    assert result.returncode == 0, result.stderr
    assert files_under(out) == sorted(
        [
            f"{BASE_ID}/feature_extractor/preprocessor_config.json",
            f"{BASE_ID}/safety_checker/config.json",
            f"{BASE_ID}/safety_checker/model.safetensors",
            "madebyollin/taesd/config.json",
            "madebyollin/taesd/diffusion_pytorch_model.safetensors",
        ]
    )


def test_the_safety_checker_download_fetches_its_subfolders_only_and_loads(mirror, tmp_path):
    """SD1.5's repo holds the checker: `download safety_checker` takes its three files (not the
    fp16 or pickled copies, nor the base model's), `base safety_checker` takes both roles' files,
    and the checker loads from what arrived."""
    import torch

    from pipelines.models.safety import SafetyChecker
    from testkit.tiny_safety import build_tiny_safety_checker

    hub = tmp_path / "hub"
    shutil.copytree(mirror / BASE_ID, hub / BASE_ID)
    build_tiny_safety_checker(hub / BASE_ID)
    for unwanted in ("safety_checker/model.fp16.safetensors", "safety_checker/pytorch_model.bin"):
        dummy(hub / BASE_ID / unwanted)
    out = tmp_path / "models"
    result = run_download("safety_checker", "--source", hub, "--models-dir", out)
    assert result.returncode == 0, result.stderr
    assert files_under(out / BASE_ID) == [
        "feature_extractor/preprocessor_config.json",
        "safety_checker/config.json",
        "safety_checker/model.safetensors",
    ]
    checker = SafetyChecker.load(OPTIONAL_MODEL_IDS["safety_checker"], out, "cpu", torch.float32)
    assert checker.flagged([]) == []

    both = tmp_path / "both"
    result = run_download("base", "safety_checker", "--source", hub, "--models-dir", both)
    assert result.returncode == 0, result.stderr
    assert files_under(both / BASE_ID) == sorted([*BASE_FILES, *files_under(out / BASE_ID)])
    assert download.select(
        dict.fromkeys(files_under(hub / BASE_ID), 1), download.rule_for("safety_checker", "fp16")
    ) == {
        "feature_extractor/preprocessor_config.json": 1,
        "safety_checker/config.json": 1,
        "safety_checker/model.fp16.safetensors": 1,
    }


@pytest.mark.parametrize(
    ("role", "repo_id", "lost"),
    [
        ("canny", CANNY_ID, "diffusion_pytorch_model.safetensors"),
        ("base", BASE_ID, "unet/diffusion_pytorch_model.safetensors"),
        ("base", BASE_ID, "text_encoder/config.json"),
    ],
)
def test_a_download_missing_a_file_fails_names_it_and_is_not_loaded(
    mirror, tmp_path, role, repo_id, lost
):
    from errors import ModelUnavailableError
    from model_sources import load_model

    hub = tmp_path / "hub"
    shutil.copytree(mirror / repo_id, hub / repo_id)
    (hub / repo_id / lost).unlink()
    out = tmp_path / "models"
    result = run_download(role, "--source", hub, "--models-dir", out)
    assert result.returncode != 0
    assert "incomplete" in result.stdout + result.stderr and lost in result.stdout + result.stderr
    assert not (out / repo_id / lost).exists()
    # The partial folder is never taken for the model: the loader names the same file.
    if role == "canny":
        from diffusers import ControlNetModel

        loader, kwargs = ControlNetModel.from_pretrained, {}
    else:
        from diffusers import StableDiffusionControlNetPipeline

        loader = StableDiffusionControlNetPipeline.from_pretrained
        kwargs = dict(controlnet=None, safety_checker=None, feature_extractor=None)
    with pytest.raises(ModelUnavailableError, match="incomplete") as raised:
        load_model(loader, role, repo_id, out, half_precision=False, **kwargs)
    assert lost in str(raised.value)
    assert f"python -m cli download {role}" in str(raised.value)


def test_a_download_missing_only_fp16_weights_takes_the_full_ones_and_is_complete(mirror, tmp_path):
    hub = tmp_path / "hub"
    shutil.copytree(mirror / CANNY_ID, hub / CANNY_ID)
    (hub / CANNY_ID / "diffusion_pytorch_model.fp16.safetensors").unlink()
    out = tmp_path / "models"
    result = run_download("canny", "--precision", "fp16", "--source", hub, "--models-dir", out)
    assert result.returncode == 0, result.stdout + result.stderr
    assert files_under(out / CANNY_ID) == ["config.json", "diffusion_pytorch_model.safetensors"]


def test_the_readme_lists_what_each_role_needs_as_download_py_checks_it():
    readme = (PROJECT_ROOT / "README.md").read_text(encoding="utf-8")
    assert download.requirements_table() in readme
    for role in download.KNOWN_ROLES:
        assert f"`{role}`" in download.requirements_table()
