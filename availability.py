"""Which conditions can run on this server now: their models are here, can be downloaded on
first use, or are missing (offline and not on disk), with the command that fetches them.

A model is here when MODELS_DIR (or the Hugging Face cache) holds every file the loader opens:
the same `requires` of `download`'s rules that a download is checked against. Nothing is loaded
and the Hub is never asked; the page checks this at every visit.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from annotators import ANNOTATORS
from conditions import CONDITIONS, Condition
from download import rule_for
from model_sources import download_command, hub_offline, resolve_source
from pipelines.request import defaults as request_defaults
from settings import Settings

# What the roles are, in words, for the page.
ROLE_WORDS = {
    "base": "the base model",
    "annotators": "the annotator weights",
    "depth_estimator": "the MiDaS depth estimator",
    "segmenter": "the UperNet segmenter",
    "depth_zoe": "the ZoeDepth depth estimator",
    "depth_anything": "the Depth Anything V2 depth estimator",
    "segmenter_oneformer_ade20k": "the OneFormer ADE20K segmenter",
    "segmenter_oneformer_coco": "the OneFormer COCO segmenter",
    "oneformer_class_info": "OneFormer's class lists",
    "lcm_lora": "the LCM-LoRA",
    "ip2p": "the Instruct Pix2Pix ControlNet",
    "lineart": "the line art ControlNet",
    "inpaint": "the inpaint ControlNet",
    "lineart_anime": "the anime line art ControlNet",
    "shuffle": "the shuffle ControlNet",
    "dwpose": "the DWPose models",
}


@dataclass(frozen=True)
class Need:
    """One model (or one file of its repo) a condition cannot run without."""

    role: str
    model_id: str
    file: str | None = None  # None: every file the loader opens

    @property
    def words(self) -> str:
        what = ROLE_WORDS.get(self.role, f"the {self.role} ControlNet")
        return (
            f"{what} (`{self.file}` of `{self.model_id}`)"
            if self.file
            else (f"{what} (`{self.model_id}`)")
        )


def _cached(repo_id: str, filename: str, repo_type: str = "model") -> bool:
    from huggingface_hub import try_to_load_from_cache

    try:
        return isinstance(try_to_load_from_cache(repo_id, filename, repo_type=repo_type), str)
    except ValueError:  # not a repo id (a path that does not exist)
        return False


def is_here(need: Need, models_dir: Path) -> bool:
    """Every file `need` stands for is in MODELS_DIR, a local folder or the Hugging Face cache."""
    source, is_local = resolve_source(need.model_id, models_dir)
    if not is_local and Path(need.model_id).is_absolute():
        return Path(need.model_id).is_file()  # a single-file checkpoint
    # fp16's rule accepts either precision of each weight file, as the loader does.
    required = [(need.file,)] if need.file else rule_for(need.role, "fp16").requires
    if is_local:
        return all(any((Path(source) / name).is_file() for name in entry) for entry in required)
    repo_type = rule_for(need.role).repo_type
    return all(any(_cached(need.model_id, name, repo_type) for name in entry) for entry in required)


@dataclass(frozen=True)
class ConditionStatus:
    """What one condition lacks: for Run (the base and its ControlNet) and per annotator."""

    condition: Condition
    run_missing: tuple[Need, ...]
    annotator_missing: dict[str, tuple[Need, ...]]
    downloads: bool  # missing models are fetched on first use (the Hub is not switched off)

    @property
    def default_annotator_missing(self) -> tuple[Need, ...]:
        return self.annotator_missing.get(self.condition.annotators[0], ())

    @property
    def ready(self) -> bool:
        return not self.run_missing and not self.default_annotator_missing


def _missing(needs: Iterable[Need], models_dir: Path) -> tuple[Need, ...]:
    return tuple(need for need in needs if not is_here(need, models_dir))


def condition_status(condition: Condition, settings: Settings) -> ConditionStatus:
    base = request_defaults(settings)["base_model"]
    role = condition.controlnet_role_for(condition.annotators[0])
    run_needs = (
        Need("base", settings.base_models[base]),
        Need(role, settings.model_ids[role]),
    )
    annotator_missing = {
        name: _missing(
            (
                Need(need_role, settings.model_ids[need_role], file)
                for need_role, file in ANNOTATORS[name].needs
            ),
            settings.models_dir,
        )
        for name in condition.annotators
    }
    return ConditionStatus(
        condition,
        _missing(run_needs, settings.models_dir),
        {name: needs for name, needs in annotator_missing.items() if needs},
        downloads=not hub_offline(),
    )


def statuses(settings: Settings) -> dict[str, ConditionStatus]:
    return {name: condition_status(condition, settings) for name, condition in CONDITIONS.items()}


def lcm_available(settings: Settings) -> bool:
    """The LCM sampler's LoRA is here, or will be downloaded when first used."""
    need = Need("lcm_lora", settings.model_ids["lcm_lora"])
    return not hub_offline() or is_here(need, settings.models_dir)


def command(needs: Iterable[Need]) -> str:
    """The one download command that fetches every role of `needs`."""
    roles = list(dict.fromkeys(need.role for need in needs))
    single = [download_command(role) for role in roles]
    if any(line.endswith("--all") for line in single):
        return "python -m cli download --all"
    return "python -m cli download " + " ".join(roles)
