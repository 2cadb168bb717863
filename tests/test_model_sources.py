"""`load_model`'s messages say what really happened (offline, not on the Hub, an incomplete local
folder, an unreadable file), each with the command that fixes it; and the app and the CLI never
let transformers ask a conversion service for weights."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from huggingface_hub.errors import (
    LocalEntryNotFoundError,
    OfflineModeIsEnabled,
    RemoteEntryNotFoundError,
    RepositoryNotFoundError,
)

from errors import ModelUnavailableError
from model_sources import load_model, missing_files

PROJECT_ROOT = Path(__file__).resolve().parent.parent
REPO = "nobody/some-controlnet"
COMMAND = "python -m cli download canny"


def _response(status: int, url: str) -> httpx.Response:
    return httpx.Response(status, request=httpx.Request("GET", url))


def raising(*errors: BaseException):
    """A `from_pretrained` that raises `errors` in turn (one per variant tried), chained the way
    diffusers and transformers chain the Hub's error into their own OSError."""
    calls = []

    def loader(source, **kwargs):
        calls.append(kwargs.get("variant"))
        raise errors[min(len(calls), len(errors)) - 1]

    loader.calls = calls
    return loader


def wrapped(outer: BaseException, cause: BaseException) -> BaseException:
    outer.__cause__ = cause
    return outer


def load(loader, tmp_path, role="canny", model_id=REPO, **kwargs):
    with pytest.raises(ModelUnavailableError) as raised:
        load_model(loader, role, model_id, tmp_path, **kwargs)
    return str(raised.value)


@pytest.fixture
def online(monkeypatch):
    """HF_HUB_OFFLINE unset: the (fake) Hub answers."""
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)


def test_offline_says_hf_hub_offline_is_set(tmp_path):
    error = wrapped(
        OSError(f"{REPO} does not appear to have a file named config.json."),
        LocalEntryNotFoundError("Cannot find the requested files in the disk cache"),
    )
    message = load(raising(error), tmp_path)
    assert f"`{REPO}` is not available" in message and "HF_HUB_OFFLINE is set" in message
    assert COMMAND in message


@pytest.mark.parametrize(
    "cause",
    [
        OfflineModeIsEnabled("Cannot reach https://huggingface.co: offline mode is enabled."),
        httpx.ConnectError("[Errno -3] Temporary failure in name resolution"),
        LocalEntryNotFoundError("Cannot find the requested files in the disk cache"),
    ],
)
def test_an_unreachable_hub_says_so_and_not_that_the_file_is_missing(tmp_path, online, cause):
    error = wrapped(OSError(f"{REPO} does not appear to have a file named config.json."), cause)
    message = load(raising(error), tmp_path)
    assert "the Hub cannot be reached" in message and "HF_HUB_OFFLINE is set" not in message
    assert "has no" not in message
    assert COMMAND in message


def test_a_repo_the_hub_does_not_have_is_named(tmp_path, online):
    url = f"https://huggingface.co/api/models/{REPO}"
    error = wrapped(
        OSError(f"{REPO} is not a local folder and is not a valid model identifier"),
        RepositoryNotFoundError(
            f"Repository Not Found for url: {url}", response=_response(404, url)
        ),
    )
    message = load(raising(error), tmp_path)
    assert f"the repo `{REPO}` does not exist" in message and "MODEL_CANNY" in message
    assert COMMAND in message


def test_a_file_the_hub_repo_lacks_is_named_with_the_repo(tmp_path, online):
    url = f"https://huggingface.co/{REPO}/resolve/main/diffusion_pytorch_model.safetensors"
    error = wrapped(
        OSError(f"Error no file named diffusion_pytorch_model.safetensors found in {REPO}."),
        RemoteEntryNotFoundError(
            f"404 Entry Not Found for url: {url}", response=_response(404, url)
        ),
    )
    message = load(raising(error), tmp_path)
    assert f"the Hub repo `{REPO}` has no `diffusion_pytorch_model.safetensors`" in message
    assert COMMAND in message


def test_transformers_missing_safetensors_text_names_the_file(tmp_path, online):
    error = OSError(
        f"{REPO} does not appear to have a file named model.safetensors or "
        "model.safetensors.index.json and thus cannot be loaded with `safetensors`."
    )
    message = load(raising(error), tmp_path, role="safety_checker")
    assert f"`{REPO}` has no `model.safetensors`" in message
    assert "python -m cli download safety_checker" in message


def test_a_value_error_on_the_last_variant_is_wrapped(tmp_path, online):
    missing_variant = ValueError(
        "The deprecation tuple ('no variant default', ...) should be removed"
    )
    loader = raising(missing_variant, ValueError("Cannot load <class 'UNet'>: weights missing"))
    message = load(loader, tmp_path, half_precision=True)
    assert loader.calls == ["fp16", None]  # the fallback is still tried
    assert "could not be loaded" in message and "weights missing" in message
    assert COMMAND in message


def test_other_errors_are_not_hidden(tmp_path):
    with pytest.raises(KeyError):
        load_model(raising(KeyError("a bug")), "canny", REPO, tmp_path)


# ---- real tiny folders -------------------------------------------------------------------------
@pytest.fixture(scope="module")
def controlnet(tmp_path_factory) -> Path:
    from testkit.tiny_models import build_tiny_controlnet

    return build_tiny_controlnet(tmp_path_factory.mktemp("hub") / "cn")


def _copy(folder: Path, target: Path) -> Path:
    import shutil

    return Path(shutil.copytree(folder, target))


def _controlnet_loader():
    from diffusers import ControlNetModel

    return ControlNetModel.from_pretrained


def test_a_complete_tiny_folder_loads(controlnet, tmp_path):
    model = load_model(
        _controlnet_loader(), "canny", str(controlnet), tmp_path, half_precision=False
    )
    assert type(model).__name__ == "ControlNetModel"


def test_a_folder_without_weights_is_refused_naming_the_file(controlnet, tmp_path):
    folder = _copy(controlnet, tmp_path / REPO)
    (folder / "diffusion_pytorch_model.safetensors").unlink()
    calls = []
    message = load(lambda *a, **k: calls.append(a), tmp_path, half_precision=False)
    assert calls == []  # never handed to the loader
    assert "is incomplete" in message and "diffusion_pytorch_model.safetensors" in message
    assert str(folder) in message and COMMAND in message


def test_a_folder_without_config_is_refused_naming_it(controlnet, tmp_path):
    folder = _copy(controlnet, tmp_path / REPO)
    (folder / "config.json").unlink()
    message = load(_controlnet_loader(), tmp_path, half_precision=False)
    assert "is incomplete" in message and "config.json" in message and COMMAND in message


def test_an_unreadable_weights_file_says_so(controlnet, tmp_path):
    folder = _copy(controlnet, tmp_path / REPO)
    (folder / "diffusion_pytorch_model.safetensors").write_bytes(b"\x00" * 64)
    message = load(_controlnet_loader(), tmp_path, half_precision=False)
    assert "cannot be read" in message and str(folder) in message and COMMAND in message


def test_an_unreadable_config_says_so(controlnet, tmp_path):
    folder = _copy(controlnet, tmp_path / REPO)
    (folder / "config.json").write_text("{not json")
    message = load(_controlnet_loader(), tmp_path, half_precision=False)
    assert "cannot be read" in message and str(folder) in message


def test_a_pipeline_folder_is_checked_component_by_component(tmp_path):
    from testkit.tiny_models import build_tiny_base

    base = build_tiny_base(tmp_path / "base")
    assert missing_files(base, skip=["safety_checker", "feature_extractor", "controlnet"]) == []
    (base / "vae/diffusion_pytorch_model.safetensors").unlink()
    (base / "tokenizer/tokenizer_config.json").unlink()
    assert sorted(missing_files(base, skip=["safety_checker", "feature_extractor"])) == [
        "tokenizer/tokenizer_config.json",
        "vae/diffusion_pytorch_model.safetensors",
    ]
    # fp16: a component with only its full weights is complete (the fp16 download's fallback).
    assert sorted(
        missing_files(base, variant="fp16", skip=["safety_checker", "feature_extractor"])
    ) == [
        "tokenizer/tokenizer_config.json",
        "vae/diffusion_pytorch_model.fp16.safetensors",
    ]


# ---- no conversion requests --------------------------------------------------------------------
_PROBE = (
    "import os; {body}; print('VALUE=' + str(os.environ.get('DISABLE_SAFETENSORS_CONVERSION')))"
)


@pytest.mark.parametrize(
    "body",
    ["import app", "import cli; cli.main(['download'])"],
    ids=["app", "cli"],
)
def test_the_app_and_the_cli_disable_safetensors_conversion(body):
    env = {
        key: value for key, value in os.environ.items() if key != "DISABLE_SAFETENSORS_CONVERSION"
    }
    result = subprocess.run(
        [sys.executable, "-c", _PROBE.format(body=body)],
        cwd=PROJECT_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert "VALUE=1" in result.stdout, result.stderr


def test_transformers_reads_the_setting_we_set():
    """The flag is transformers' own name for it: the check that gates the conversion bot."""
    import inspect

    from transformers import modeling_utils

    assert 'is_env_variable_true("DISABLE_SAFETENSORS_CONVERSION")' in inspect.getsource(
        modeling_utils
    )


def test_a_mixed_fp16_pipeline_folder_is_complete_and_loads(tmp_path):
    """What `download --precision fp16` leaves where a repo has fp16 files for some components
    only: the fp16 UNet, the full others."""
    import torch
    from diffusers import StableDiffusionControlNetPipeline

    from testkit.tiny_models import build_tiny_base

    base = build_tiny_base(tmp_path / "base")
    unet = base / "unet/diffusion_pytorch_model.safetensors"
    unet.rename(unet.with_name("diffusion_pytorch_model.fp16.safetensors"))
    pipe = load_model(
        StableDiffusionControlNetPipeline.from_pretrained,
        "base",
        str(base),
        tmp_path,
        half_precision=True,
        dtype=torch.float16,
        controlnet=None,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    assert pipe.unet.dtype == torch.float16
