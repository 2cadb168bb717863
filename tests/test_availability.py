"""Which conditions can run: the models on disk against what the loader opens, and the page's
words for it (each true for the button it is about), on folders the tests lay out."""

from __future__ import annotations

import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from availability import Need, condition_status, is_here, lcm_available, statuses
from conditions import CONDITIONS
from model_sources import missing_model_message
from settings import Settings
from ui.status import page_summary, speed_hint, tab_note


@pytest.fixture
def offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.fixture
def partial_models(models_dir: Path, tmp_path: Path) -> Path:
    """The tests' tiny MODELS_DIR without the depth ControlNet and the DPT depth estimator."""
    copy = tmp_path / "models"
    shutil.copytree(models_dir, copy)
    settings = Settings()
    shutil.rmtree(copy / settings.model_ids["depth"])
    shutil.rmtree(copy / settings.model_ids["depth_estimator"])
    return copy


def test_a_model_is_here_only_with_every_file_the_loader_opens(models_dir, tmp_path, offline):
    settings = Settings(models_dir=models_dir)
    canny = Need("canny", settings.model_ids["canny"])
    assert is_here(canny, models_dir)
    copy = tmp_path / "models"
    shutil.copytree(models_dir / settings.model_ids["canny"], copy / settings.model_ids["canny"])
    (copy / settings.model_ids["canny"] / "diffusion_pytorch_model.safetensors").unlink()
    assert not is_here(canny, copy)  # a config without weights is no model
    base = Need("base", settings.model_ids["base"])
    assert is_here(base, models_dir) and not is_here(base, copy)
    hed = Need("annotators", settings.model_ids["annotators"], "ControlNetHED.pth")
    bae = Need("annotators", settings.model_ids["annotators"], "scannet.pt")
    assert is_here(hed, models_dir) and not is_here(bae, models_dir)  # conftest leaves it out


def test_each_condition_lists_what_it_lacks(partial_models, offline):
    settings = Settings(models_dir=partial_models)
    by_condition = statuses(settings)
    assert set(by_condition) == set(CONDITIONS)
    depth = by_condition["depth"]
    assert [need.role for need in depth.run_missing] == ["depth"]
    assert [need.role for need in depth.default_annotator_missing] == ["depth_estimator"]
    assert not depth.ready and not depth.downloads
    normal = by_condition["normal"]
    assert normal.run_missing == ()  # its ControlNet is here; NormalBAE's weights and DPT not
    assert {name for name in normal.annotator_missing} == {"normal_bae", "normal_midas"}
    assert by_condition["canny"].ready and by_condition["openpose"].ready  # MediaPipe fallback


def test_the_words_name_the_command_and_only_true_alternatives(partial_models, offline):
    settings = Settings(models_dir=partial_models)
    depth = tab_note(condition_status(CONDITIONS["depth"], settings))
    assert "python -m cli download depth" in depth
    assert "python -m cli download depth_estimator" in depth
    assert "Preview map works already" not in depth  # its annotator is missing too
    normal = tab_note(condition_status(CONDITIONS["normal"], settings))
    assert "python -m cli download annotators" in normal
    assert "MiDaS" not in normal.split("Until then")[-1]  # MiDaS normals need DPT: not offered
    assert "None: my image already is the control map" in normal
    assert tab_note(condition_status(CONDITIONS["canny"], settings)) == ""
    summary = page_summary(statuses(settings))
    assert "Depth" in summary and "Normal map" in summary and "Canny" not in summary
    assert page_summary(statuses(Settings(models_dir=partial_models.parent / "none"))) != ""


def test_online_the_words_say_the_first_run_downloads(partial_models, monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    status = condition_status(CONDITIONS["depth"], Settings(models_dir=partial_models))
    assert status.downloads
    assert tab_note(status).startswith("The first Run here downloads")
    assert "downloaded on their first Run" in page_summary({"depth": status})


def test_the_missing_model_message_mentions_the_preview_only_where_it_works(tmp_path, offline):
    run_only = missing_model_message("canny", "lllyasviel/control_v11p_sd15_canny", tmp_path)
    assert "The control-map preview works without it." in run_only
    for role in ("annotators", "depth_estimator", "segmenter"):
        annotator = missing_model_message(role, "some/repo", tmp_path)
        assert "preview" not in annotator and "python -m cli download" in annotator


def test_the_cpu_hint_offers_lcm_only_where_it_can_run(models_dir, tmp_path, offline):
    here = Settings(models_dir=models_dir)
    assert lcm_available(here) and not lcm_available(Settings(models_dir=tmp_path))

    def cpu_engine(settings):
        return SimpleNamespace(device=torch.device("cpu"), settings=settings, last_timing=None)

    assert "LCM" in speed_hint(cpu_engine(here)) and "CPU" in speed_hint(cpu_engine(here))
    assert "LCM" not in speed_hint(cpu_engine(Settings(models_dir=tmp_path)))
    assert speed_hint(SimpleNamespace(device=torch.device("cuda"))) == ""


def test_the_cpu_hint_reports_the_last_run(engine, astronaut):
    engine.generate("canny", astronaut, "a house", steps=2, num_images=2, image_resolution=256)
    hint = speed_hint(engine)
    timing = engine.last_timing
    assert timing.images == 2 and timing.steps == 2 and timing.size == (256, 256)
    assert f"{timing.seconds_per_image:.0f} s (2 steps, 256x256)" in hint
