"""Settings from the environment, and where models are looked up (MODELS_DIR before the Hub)."""

from __future__ import annotations

from pathlib import Path

import pytest

from model_sources import missing_model_message, resolve_source
from settings import DEFAULT_MODEL_IDS, Settings


def test_environment_overrides_models_and_limits(tmp_path):
    settings = Settings.from_env(
        {
            "MODELS_DIR": str(tmp_path),
            "MODEL_CANNY": "my-org/my-canny",
            "MAX_NUM_IMAGES": "4",
            "DEFAULT_NUM_IMAGES": "9",
            "MAX_STEPS": "50",
        }
    )
    assert settings.models_dir == tmp_path
    assert settings.model_ids["canny"] == "my-org/my-canny"
    assert settings.model_ids["base"] == DEFAULT_MODEL_IDS["base"]
    assert settings.limits.max_images == 4 and settings.limits.max_steps == 50
    assert settings.default_overrides["num_images"] == 4  # a default never exceeds its limit
    assert settings.warm_up and not Settings.from_env({"WARM_UP": "0"}).warm_up


def test_bad_environment_value_names_the_variable():
    with pytest.raises(ValueError, match="MAX_STEPS must be an integer"):
        Settings.from_env({"MAX_STEPS": "many"})
    with pytest.raises(ValueError, match="COMPILE_MODE must be one of reduce-overhead"):
        Settings.from_env({"COMPILE_MODE": "turbo"})


def test_compile_mode_from_the_environment():
    assert Settings.from_env({}).compile_mode == "reduce-overhead"
    assert Settings.from_env({"COMPILE_MODE": " Max-Autotune "}).compile_mode == "max-autotune"


def test_models_dir_mirror_is_used_before_the_hub(tmp_path):
    model_id = DEFAULT_MODEL_IDS["canny"]
    assert resolve_source(model_id, tmp_path) == (model_id, False)
    (tmp_path / model_id).mkdir(parents=True)
    assert resolve_source(model_id, tmp_path) == (str(tmp_path / model_id), True)
    assert resolve_source(str(tmp_path), Path("/nonexistent")) == (str(tmp_path), True)


def test_missing_model_message_names_every_way_to_provide_it(tmp_path):
    message = missing_model_message("scribble", "org/name", tmp_path)
    assert "`org/name`" in message and str(tmp_path / "org/name") in message
    assert "MODEL_SCRIBBLE" in message and "HF_HUB_OFFLINE" in message  # set by conftest


def test_model_cache_evicts_the_least_recently_used_and_frees_memory():
    from pipelines.models.lru import ModelCache

    freed = []
    cache = ModelCache(2, free_memory=lambda: freed.append(list(cache.keys())))
    cache.get_or_load("a", lambda: 1)
    cache.get_or_load("b", lambda: 2)
    assert cache.get_or_load("a", lambda: 99) == 1  # cached, and now the most recent
    cache.get_or_load("c", lambda: 3)
    assert cache.keys() == ["a", "c"] and freed == [["a"]]

    def broken():
        raise OSError("missing")

    with pytest.raises(OSError):
        cache.get_or_load("d", broken)
    assert cache.keys() == ["a", "c"]  # a failed load evicts nothing
