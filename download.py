"""What `python -m cli download` fetches, and the fetching: only the files the app loads.

Each role of `settings.DEFAULT_MODEL_IDS` maps to a Hub repo and a `FileRule` (allow and ignore
patterns, matched like `huggingface_hub.snapshot_download` matches them). Files land in
`MODELS_DIR/<org>/<name>/...`, the Hub layout the app loads before ever asking the Hub
(model_sources.py), so the app then runs offline. They come from the Hub
(`snapshot_download`) or from a local folder laid out the same way (`--source`: air-gapped
mirrors, and the tests). Files already present with the same size are skipped.

Precision: by default the full-precision weights (`diffusion_pytorch_model.safetensors`), which
load everywhere and exactly. `--precision fp16` fetches the fp16 variants instead
(`*.fp16.safetensors`, half the download: SD1.5 about 4.3 GB -> 2.1 GB, a ControlNet 1.45 GB ->
0.72 GB), and the full files only where a repo has no fp16 variant. The engine loads whichever a
folder holds (`model_sources.weight_variants`): fp16 on a GPU runs the same numbers either way;
a CPU upcasts the fp16 weights to fp32.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path

from huggingface_hub.utils import filter_repo_objects

from annotators.dwpose import DETECTOR_FILE as DWPOSE_DETECTOR
from annotators.dwpose import POSE_FILE as DWPOSE_POSE
from annotators.hed import HED_WEIGHTS
from annotators.lineart import LINEART_COARSE_WEIGHTS, LINEART_WEIGHTS
from annotators.lineart_anime import LINEART_ANIME_WEIGHTS
from annotators.mlsd import MLSD_WEIGHTS
from annotators.normal import BAE_WEIGHTS
from annotators.pidinet import PIDINET_WEIGHTS
from annotators.pose import BODY_WEIGHTS, FACE_WEIGHTS, HAND_WEIGHTS
from errors import UserFacingError
from model_sources import hub_offline
from settings import DEFAULT_MODEL_IDS, OPTIONAL_MODEL_IDS, V10_MODEL_IDS

FAMILIES = ("v11", "v10")


class DownloadError(UserFacingError):
    """A repo cannot be fetched (missing from the source, Hub unreachable, offline)."""


@dataclass(frozen=True)
class FileRule:
    """Which files of a repo to fetch. `prefer` pairs (preferred, fallback): the fallback is
    fetched only when the repo lacks the preferred file."""

    allow: tuple[str, ...]
    ignore: tuple[str, ...] = ()
    prefer: tuple[tuple[str, str], ...] = ()
    # What the loader opens: each entry a tuple of alternatives, one of which must be in the
    # folder once the download is done (else the download failed: see `incomplete`).
    requires: tuple[tuple[str, ...], ...] = ()
    # Rules of other roles fetched from the same repo: their files are kept too (`merge`).
    also: tuple[FileRule, ...] = ()
    # "dataset" for a Hub dataset repo (OneFormer's class lists in shi-labs/oneformer_demo).
    repo_type: str = "model"

    @property
    def hub_kwargs(self) -> dict[str, str]:
        """What the Hub calls need besides the repo id: the repo type, where not a model."""
        return {} if self.repo_type == "model" else {"repo_type": self.repo_type}


def merge(rule: FileRule, other: FileRule) -> FileRule:
    """One repo's rule for two roles: the files either keeps, and what both require."""
    if other == rule or other in rule.also:
        return rule
    requires = rule.requires + tuple(
        entry for entry in other.requires if entry not in rule.requires
    )
    return FileRule(
        rule.allow, rule.ignore, rule.prefer, requires, (*rule.also, other), rule.repo_type
    )


_BASE_COMPONENTS = ("unet", "vae", "text_encoder")  # safety_checker, feature_extractor: unused
BASE_RULE = FileRule(
    allow=(
        "model_index.json",
        "scheduler/*",
        "tokenizer/*",
        *(f"{component}/config.json" for component in _BASE_COMPONENTS),
        *(f"{component}/*.safetensors" for component in _BASE_COMPONENTS),
    ),
    # fp16 variants, the EMA / non-EMA training weights, pickles and single-file checkpoints.
    ignore=("*.fp16.*", "*ema*", "*.bin", "*.ckpt"),
    requires=(
        ("model_index.json",),
        ("scheduler/scheduler_config.json",),
        ("tokenizer/tokenizer_config.json",),
        ("tokenizer/vocab.json",),
        ("tokenizer/merges.txt",),
        *((f"{component}/config.json",) for component in _BASE_COMPONENTS),
        ("unet/diffusion_pytorch_model.safetensors",),
        ("vae/diffusion_pytorch_model.safetensors",),
        ("text_encoder/model.safetensors",),
    ),
)
CONTROLNET_RULE = FileRule(
    allow=("config.json", "diffusion_pytorch_model.safetensors"),
    requires=(("config.json",), ("diffusion_pytorch_model.safetensors",)),
)
# --precision fp16: each weight file's fp16 variant where the repo has one, else the full file.
_BASE_WEIGHTS = {  # component -> its weight file's stem
    "unet": "diffusion_pytorch_model",
    "vae": "diffusion_pytorch_model",
    "text_encoder": "model",
}


def _half_rule(rule: FileRule, prefer: tuple[tuple[str, str], ...], **changes) -> FileRule:
    """`rule` for --precision fp16: each (fp16 file, full file) of `prefer` is fetched fp16
    first, and the fp16 variant satisfies the full file's requirement too."""
    fallbacks = {fallback: preferred for preferred, fallback in prefer}
    requires = tuple(
        (fallbacks[entry[0]], *entry) if len(entry) == 1 and entry[0] in fallbacks else entry
        for entry in rule.requires
    )
    return replace(rule, prefer=prefer, requires=requires, **changes)


_HALF_BASE_PREFER = tuple(
    (f"{component}/{name}.fp16.safetensors", f"{component}/{name}.safetensors")
    for component, name in _BASE_WEIGHTS.items()
)
HALF_BASE_RULE = _half_rule(  # `<component>/*.safetensors` matches the fp16 variants too
    BASE_RULE,
    _HALF_BASE_PREFER,
    ignore=tuple(pattern for pattern in BASE_RULE.ignore if pattern != "*.fp16.*"),
)
_HALF_CONTROLNET_PREFER = (
    ("diffusion_pytorch_model.fp16.safetensors", "diffusion_pytorch_model.safetensors"),
)
HALF_CONTROLNET_RULE = _half_rule(
    CONTROLNET_RULE,
    _HALF_CONTROLNET_PREFER,
    allow=(*CONTROLNET_RULE.allow, "diffusion_pytorch_model.fp16.safetensors"),
)
PRECISIONS = ("fp32", "fp16")
ANNOTATOR_FILES = (
    HED_WEIGHTS,
    MLSD_WEIGHTS,
    BODY_WEIGHTS,
    HAND_WEIGHTS,
    FACE_WEIGHTS,
    BAE_WEIGHTS,
    LINEART_WEIGHTS,
    LINEART_COARSE_WEIGHTS,
    PIDINET_WEIGHTS,
    LINEART_ANIME_WEIGHTS,
)
ANNOTATORS_RULE = FileRule(
    allow=ANNOTATOR_FILES, requires=tuple((name,) for name in ANNOTATOR_FILES)
)
# Intel/dpt-hybrid-midas and openmmlab/upernet-convnext-small have only pytorch_model.bin on main;
# the annotators read it with torch.load(weights_only=True).
TRANSFORMERS_RULE = FileRule(
    allow=("config.json", "preprocessor_config.json", "model.safetensors", "pytorch_model.bin"),
    prefer=(("model.safetensors", "pytorch_model.bin"),),
    requires=(
        ("config.json",),
        ("preprocessor_config.json",),
        ("model.safetensors", "pytorch_model.bin"),
    ),
)
# OneFormer's repos (shi-labs/oneformer_*_swin_large) add the CLIP tokenizer its processor
# encodes the task prompt with, saved as the slow tokenizer's files; tokenizer.json where a repo
# has it.
ONEFORMER_RULE = FileRule(
    allow=(
        *TRANSFORMERS_RULE.allow,
        "tokenizer_config.json",
        "special_tokens_map.json",
        "vocab.json",
        "merges.txt",
        "tokenizer.json",
    ),
    prefer=TRANSFORMERS_RULE.prefer,
    requires=(
        *TRANSFORMERS_RULE.requires,
        ("tokenizer_config.json",),
        ("vocab.json", "tokenizer.json"),
        ("merges.txt", "tokenizer.json"),
    ),
)
# The class lists OneFormer's image processor reads at load (`class_info_file`), from the Hub
# dataset repo its preprocessor_config.json names (`repo_path`: shi-labs/oneformer_demo).
ONEFORMER_CLASS_FILES = ("ade20k_panoptic.json", "coco_panoptic.json")
ONEFORMER_CLASS_INFO_RULE = FileRule(
    allow=ONEFORMER_CLASS_FILES,
    requires=tuple((name,) for name in ONEFORMER_CLASS_FILES),
    repo_type="dataset",
)
# SD1.5's checker, in the SD1.5 repo's safety_checker/ and feature_extractor/ subfolders (the
# pipeline layout pipelines/models/safety.py reads); never the pickled pytorch_model.bin.
SAFETY_RULE = FileRule(
    allow=(
        "safety_checker/config.json",
        "safety_checker/model.safetensors",
        "feature_extractor/preprocessor_config.json",
    ),
    requires=(
        ("safety_checker/config.json",),
        ("safety_checker/model.safetensors",),
        ("feature_extractor/preprocessor_config.json",),
    ),
)
_HALF_SAFETY_PREFER = (
    ("safety_checker/model.fp16.safetensors", "safety_checker/model.safetensors"),
)
HALF_SAFETY_RULE = _half_rule(
    SAFETY_RULE,
    _HALF_SAFETY_PREFER,
    allow=(*SAFETY_RULE.allow, "safety_checker/model.fp16.safetensors"),
)
# yzd-v/DWPose: the people detector and the whole-body pose model, both ONNX (its other files, the
# PyTorch checkpoints, are not read).
DWPOSE_RULE = FileRule(
    allow=(DWPOSE_DETECTOR, DWPOSE_POSE), requires=((DWPOSE_DETECTOR,), (DWPOSE_POSE,))
)
ROLE_RULES: dict[str, FileRule] = {
    "base": BASE_RULE,
    "annotators": ANNOTATORS_RULE,
    "depth_estimator": TRANSFORMERS_RULE,
    "segmenter": TRANSFORMERS_RULE,
    "depth_zoe": TRANSFORMERS_RULE,
    "depth_anything": TRANSFORMERS_RULE,
    "segmenter_oneformer_ade20k": ONEFORMER_RULE,
    "segmenter_oneformer_coco": ONEFORMER_RULE,
    "oneformer_class_info": ONEFORMER_CLASS_INFO_RULE,
    "dwpose": DWPOSE_RULE,
    "safety_checker": SAFETY_RULE,
    "lcm_lora": FileRule(
        allow=("pytorch_lora_weights.safetensors",),
        requires=(("pytorch_lora_weights.safetensors",),),
    ),
}
ROLES = tuple(DEFAULT_MODEL_IDS)  # what --all fetches
KNOWN_ROLES = {**DEFAULT_MODEL_IDS, **OPTIONAL_MODEL_IDS}  # also fetched when named


def rule_for(role: str, precision: str = "fp32") -> FileRule:
    """The file rule of `role`; every role not named in ROLE_RULES is a diffusers model (a
    ControlNet, TAESD). fp16 changes the diffusers models' rules only."""
    if precision == "fp16":
        if role == "base":
            return HALF_BASE_RULE
        if role == "safety_checker":
            return HALF_SAFETY_RULE
        if role not in ROLE_RULES:
            return HALF_CONTROLNET_RULE
    return ROLE_RULES.get(role, CONTROLNET_RULE)


def plan_repos(
    roles: Iterable[str],
    model_ids: Mapping[str, str],
    family: str = "v11",
    precision: str = "fp32",
) -> dict[str, FileRule]:
    """Repo id -> rule for `roles` (each repo once). `v10` swaps in the paper's ControlNets where
    the id is the default one; ids that are local folders are left out (nothing to fetch)."""
    if family not in FAMILIES:
        raise DownloadError(f"Unknown family {family!r}; choose one of: {', '.join(FAMILIES)}.")
    if precision not in PRECISIONS:
        raise DownloadError(
            f"Unknown precision {precision!r}; choose one of: {', '.join(PRECISIONS)}."
        )
    repos: dict[str, FileRule] = {}
    for role in roles:
        if role not in KNOWN_ROLES:
            raise DownloadError(f"Unknown role {role!r}; choose from: {', '.join(KNOWN_ROLES)}.")
        repo_id = model_ids.get(role, KNOWN_ROLES[role])
        if family == "v10" and role in V10_MODEL_IDS and repo_id == DEFAULT_MODEL_IDS[role]:
            repo_id = V10_MODEL_IDS[role]
        if not Path(repo_id).is_absolute():
            # Two roles may share a repo (the base model and the safety checker: SD1.5's).
            rule = rule_for(role, precision)
            repos[repo_id] = merge(repos[repo_id], rule) if repo_id in repos else rule
    return repos


def select(files: Mapping[str, int], rule: FileRule) -> dict[str, int]:
    """The files (repo path -> size) of a repo listing that `rule` keeps."""
    kept = set(filter_repo_objects(files, allow_patterns=rule.allow, ignore_patterns=rule.ignore))
    for preferred, fallback in rule.prefer:
        if preferred in kept:
            kept.discard(fallback)
    for other in rule.also:
        kept |= set(select(files, other))
    return {name: files[name] for name in sorted(kept)}


def incomplete(target: Path, rule: FileRule) -> list[str]:
    """The files the loader opens that `target` lacks after a download: for each entry of
    `rule.requires`, its first alternative (the one the rule prefers) when none is there."""
    return [
        entry[0]
        for entry in rule.requires
        if not any((target / alternative).is_file() for alternative in entry)
    ]


def source_listing(source: Path, repo_id: str) -> dict[str, int]:
    """Repo path -> size of every file under `source/<repo_id>`."""
    root = source / repo_id
    if not root.is_dir():
        raise DownloadError(f"`{repo_id}` is not in the source folder (no {root}).")
    return {
        path.relative_to(root).as_posix(): path.stat().st_size
        for path in root.rglob("*")
        if path.is_file()
    }


def hub_listing(repo_id: str, repo_type: str = "model") -> dict[str, int]:
    """Repo path -> size of every file of the Hub repo's main branch."""
    from huggingface_hub import HfApi

    try:
        info = HfApi().repo_info(repo_id, repo_type=repo_type, files_metadata=True)
    except Exception as error:  # noqa: BLE001 (hub errors differ by version; all mean "not here")
        raise DownloadError(f"Could not list `{repo_id}` on the Hub: {error}") from error
    return {sibling.rfilename: sibling.size or 0 for sibling in info.siblings or ()}


def missing(files: Mapping[str, int], target: Path) -> dict[str, int]:
    """The files not yet in `target` with the same size."""
    return {
        name: size
        for name, size in files.items()
        if not ((target / name).is_file() and (target / name).stat().st_size == size)
    }


def fetch_repo(
    repo_id: str, rule: FileRule, models_dir: Path, source: Path | None = None
) -> tuple[dict[str, int], int]:
    """Fetch what `rule` keeps of `repo_id` into `models_dir/<repo_id>`.

    Returns (the files fetched: path -> size, how many were already present).
    """
    listing = source_listing(source, repo_id) if source else hub_listing(repo_id, **rule.hub_kwargs)
    wanted = select(listing, rule)
    if not wanted:
        raise DownloadError(f"`{repo_id}` has none of the files the app needs ({rule.allow}).")
    target = models_dir / repo_id
    todo = missing(wanted, target)
    if todo and source is not None:
        for name in todo:
            _copy(source / repo_id / name, target / name)
    elif todo:
        from huggingface_hub import snapshot_download

        try:
            snapshot_download(
                repo_id, local_dir=target, allow_patterns=list(todo), **rule.hub_kwargs
            )
        except Exception as error:  # noqa: BLE001 (network, auth and disk errors all end here)
            raise DownloadError(f"Downloading `{repo_id}` failed: {error}") from error
    absent = incomplete(target, rule)
    if absent:
        # The folder stays (a rerun fetches only what is missing), and the loader refuses it
        # with the same names (model_sources.missing_files) rather than loading part of a model.
        raise DownloadError(
            f"`{repo_id}` is incomplete in {target}: {', '.join(absent)} did not arrive (not "
            "in the source, or the transfer failed). The app will not use the folder until they "
            "are there: run the download again, or copy them from the Hub repo."
        )
    return todo, len(wanted) - len(todo)


def _copy(source: Path, target: Path) -> None:
    """Copy through a temporary name, so an interrupted copy never looks complete."""
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(target.name + ".partial")
    shutil.copyfile(source, partial)
    os.replace(partial, target)


def human_size(size: float) -> str:
    """1234567 -> '1.2 MB' (decimal units, like the Hub shows)."""
    if size < 1000:
        return f"{size:.0f} B"
    for unit in ("kB", "MB", "GB"):
        size /= 1000
        if size < 1000 or unit == "GB":
            break
    return f"{size:.1f} {unit}"


def download(
    roles: Iterable[str],
    models_dir: Path,
    model_ids: Mapping[str, str] = DEFAULT_MODEL_IDS,
    family: str = "v11",
    source: Path | None = None,
    echo: Callable[[str], None] = print,
    precision: str = "fp32",
) -> list[str]:
    """Fetch every repo of `roles`, telling `echo` what arrived; returns the failures' messages.

    Raises DownloadError when nothing can be fetched at all (offline, unknown role, family or
    precision).
    """
    repos = plan_repos(roles, model_ids, family, precision)
    if source is None and hub_offline():
        raise DownloadError(
            "HF_HUB_OFFLINE is set, so nothing can be downloaded: unset it, or copy from a local "
            "mirror with --source DIR."
        )
    failures, total_files, total_bytes = [], 0, 0
    for repo_id, rule in repos.items():
        try:
            fetched, present = fetch_repo(repo_id, rule, models_dir, source)
        except DownloadError as error:
            failures.append(str(error))
            echo(f"{repo_id}: FAILED: {error}")
            continue
        size = sum(fetched.values())
        echo(f"{repo_id}: fetched {len(fetched)} file(s), {human_size(size)}; {present} present")
        for name, file_size in fetched.items():
            echo(f"  {name} ({human_size(file_size)})")
        total_files, total_bytes = total_files + len(fetched), total_bytes + size
    if total_files or failures:
        echo(f"Fetched {total_files} file(s), {human_size(total_bytes)}, into {models_dir}.")
    else:
        echo(f"Nothing to fetch: every file is already in {models_dir}.")
    return failures


def requirements_table() -> str:
    """The README's table of what each role needs (`FileRule.requires`, full precision), roles
    with the same files on one row; `--precision fp16` takes each weight file's fp16 variant
    where the repo has one."""
    rows: dict[str, list[str]] = {}
    for role in KNOWN_ROLES:
        needs = ", ".join(
            " or ".join(f"`{name}`" for name in entry) for entry in rule_for(role).requires
        )
        rows.setdefault(needs, []).append(f"`{role}`")
    lines = ["| role (`python -m cli download ROLE`) | files it needs |", "|---|---|"]
    lines += [f"| {', '.join(roles)} | {needs} |" for needs, roles in rows.items()]
    return "\n".join(lines)
