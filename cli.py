"""Command line for the ControlNet demo, on the app's engine, settings and limits.

    python -m cli generate --condition canny --image in.png --prompt "a house" --out results/
    python -m cli generate --condition depth --image in.png --mask mask.png --out results/
    python -m cli annotate --annotator hed --image photos/ --out maps/
    python -m cli generate --condition openpose --pose-json pose.json --prompt "a dancer" --out out/
    python -m cli upscale --image small.png --factor 2 --prompt "a house" --out results/
    python -m cli download --all

`--image` takes a file or a folder (its image files, sorted). `--init-image` (image to image, with
`--denoising-strength` below 1) and `--mask` (inpainting: white = repaint) are single files, the
same for every input. Settings come from the environment
like the app's (settings.py). Exit status: 0 done, 1 some inputs or repos failed (each reported),
2 nothing done (bad arguments or a missing model; the message says what to do).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import sys
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from errors import InvalidImageError, ModelUnavailableError, UserFacingError
from pipelines.request import SHARED_OPTIONS, UNIT_OPTIONS, Option
from pipelines.upscale import TAKEN_OPTIONS, TAKEN_UNIT_OPTIONS, UPSCALE_OPTIONS

if TYPE_CHECKING:
    import numpy as np

    from settings import Settings

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff"}
# (engine, image, output stem, progress callback) -> lines to print: a summary, then warnings.
RunOne = Callable[[Any, Path, str, Callable[[int, int], None]], list[str]]
OPTIONS: dict[str, Option] = {**SHARED_OPTIONS, **UNIT_OPTIONS, **UPSCALE_OPTIONS}
# Options both commands take (the output's geometry and the annotator's resolution); generate
# takes every other request option as well (--prompt has its own flag).
MAP_OPTIONS = (
    "image_resolution",
    "detect_resolution",
    "pixel_perfect",
    "aspect_ratio",
    "resize_mode",
)
GENERATE_OPTIONS = tuple(
    name for name in (*SHARED_OPTIONS, *UNIT_OPTIONS) if name not in (*MAP_OPTIONS, "prompt")
)
# An upscale's own options, then what it takes from a generation's.
UPSCALE_FLAGS = tuple(
    name for name in (*UPSCALE_OPTIONS, *TAKEN_OPTIONS, *TAKEN_UNIT_OPTIONS) if name != "prompt"
)


def parse_param(text: str) -> tuple[str, Any]:
    """'low_threshold=50' -> ('low_threshold', 50); true/false/yes/no/on/off are flags."""
    name, sep, raw = text.partition("=")
    if not sep or not name.strip():
        raise argparse.ArgumentTypeError(f"expected NAME=VALUE, got {text!r}")
    raw = raw.strip()
    flags = {"true": True, "yes": True, "on": True, "false": False, "no": False, "off": False}
    if raw.lower() in flags:
        return name.strip(), flags[raw.lower()]
    for number in (int, float):
        try:
            return name.strip(), number(raw)
        except ValueError:
            pass
    raise argparse.ArgumentTypeError(
        f"{name.strip()}: expected a number or true/false, got {raw!r}"
    )


def required_image(args: argparse.Namespace) -> Path:
    if args.image is None:
        raise UserFacingError("Give --image: an image or a folder of images.")
    return args.image


def read_pose_json(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8", errors="replace")
    except OSError as error:
        raise UserFacingError(f"Cannot read the pose JSON {path}: {error}") from None


def find_images(source: Path) -> list[Path]:
    """`source` itself, or the image files in the folder `source`, sorted by name."""
    if source.is_file():
        return [source]
    if not source.is_dir():
        raise UserFacingError(f"No such image file or folder: {source}")
    images = sorted(
        p for p in source.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
    )
    if not images:
        raise UserFacingError(f"No image files ({', '.join(sorted(IMAGE_SUFFIXES))}) in {source}")
    return images


def output_stems(images: list[Path]) -> list[str]:
    """File stems for the outputs; `a.png` and `a.jpg` together become `a_png` and `a_jpg`."""
    stems = [path.stem for path in images]
    return [
        path.name.replace(".", "_") if stems.count(path.stem) > 1 else path.stem for path in images
    ]


def given_options(args: argparse.Namespace, names) -> dict[str, Any]:
    """The options given on the command line (the others take the request's defaults)."""
    return {name: getattr(args, name) for name in names if getattr(args, name) is not None}


def check_first(build: Callable[[Path], Any], images: list[Path]) -> None:
    """Build the first input's request, so that a bad option (the same for every input) stops
    everything before any model loads; an unreadable image fails only its own input, later."""
    with contextlib.suppress(InvalidImageError):
        build(images[0])


def load_settings(args: argparse.Namespace) -> Settings:
    """The app's settings from the environment, with --models-dir and --device on top."""
    from settings import Settings

    try:
        settings = Settings.from_env()
    except ValueError as error:
        raise UserFacingError(str(error)) from None
    if getattr(args, "models_dir", None):
        settings = replace(settings, models_dir=args.models_dir)
    if getattr(args, "device", None):
        settings = replace(settings, device=args.device)
    return settings


def save_png(array: np.ndarray, path: Path, parameters: dict | None = None) -> Path:
    from png_info import save_png as save_with_parameters

    return save_with_parameters(array, path, parameters)


def quiet_libraries() -> None:
    """Library progress bars and deprecation chatter off: the CLI draws one bar and says what
    matters (the engine reports its own warnings, e.g. an annotator's fallback)."""
    import warnings

    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    warnings.filterwarnings("ignore", message="Overwriting tiny_vit")  # controlnet_aux, at import
    diffusers_logging.disable_progress_bar()
    transformers_logging.disable_progress_bar()
    transformers_logging.set_verbosity_error()


def run_generate(args: argparse.Namespace) -> int:
    from pipelines.request import GenerationRequest, checked_image

    settings = load_settings(args)
    options = given_options(args, (*MAP_OPTIONS, *GENERATE_OPTIONS))
    params = dict(args.param)
    pose_json = None
    if args.pose_json is not None:
        if args.image is not None:
            raise UserFacingError("Give --image or --pose-json, not both.")
        pose_json = read_pose_json(args.pose_json)
        images = [args.pose_json]  # the one input: names the outputs
    else:
        images = find_images(required_image(args))
    # Read once, with the upload checks: one that cannot be read stops everything (it would fail
    # every input alike).
    starts = {
        name: checked_image(settings.limits, path, what)
        for name, path, what in (
            ("init_image", args.init_image, "an initial image"),
            ("mask", args.mask, "a mask"),
        )
        if path is not None
    }

    def build(image: Path) -> GenerationRequest:
        if pose_json is not None:
            image = None
        return GenerationRequest.build(
            settings, args.condition, image, args.prompt, annotator=args.annotator, **starts,
            pose_json=pose_json, **options, **params,
        )  # fmt: skip

    check_first(build, images)

    def run(engine, image: Path, stem: str, progress) -> list[str]:
        result = engine.run(build(image), on_progress=progress)
        written = [save_png(result.control_map, args.out / f"{stem}_map.png")]
        for index, (picture, parameters) in enumerate(
            zip(result.images, result.parameters, strict=True)
        ):  # each PNG carries its parameters, like the page's
            written.append(save_png(picture, args.out / f"{stem}_{index}.png", parameters))
        names = ", ".join(path.name for path in written)
        return [f"{image.name}: seed {result.seed} -> {names}", *result.warnings]

    steps = options.get("steps") or OPTIONS["steps"].default
    return run_each(args, settings, images, run, steps=steps)


def run_annotate(args: argparse.Namespace) -> int:
    from pipelines.request import MapRequest

    settings = load_settings(args)
    options = given_options(args, MAP_OPTIONS)
    params = dict(args.param)
    images = find_images(required_image(args))

    def build(image: Path) -> MapRequest:
        return MapRequest.build(settings, image, args.annotator, **options, **params)

    check_first(build, images)

    def run(engine, image: Path, stem: str, progress) -> list[str]:
        result = engine.run_map(build(image))
        path = save_png(result.image, args.out / f"{stem}_map.png")
        names = path.name
        if result.pose is not None:  # pose annotators: the people found, as OpenPose JSON
            pose_path = args.out / f"{stem}_pose.json"
            pose_path.write_text(json.dumps(result.pose, indent=2))
            names += f", {pose_path.name}"
        return [f"{image.name} -> {names}", *result.warnings]

    return run_each(args, settings, images, run)


def run_upscale(args: argparse.Namespace) -> int:
    from pipelines.upscale import UpscaleRequest

    settings = load_settings(args)
    options = given_options(args, UPSCALE_FLAGS)
    images = find_images(args.image)

    def build(image: Path) -> UpscaleRequest:
        return UpscaleRequest.build(settings, image, args.prompt, **options)

    check_first(build, images)

    def run(engine, image: Path, stem: str, progress) -> list[str]:
        request = build(image)
        result = engine.run_upscale(request, on_progress=progress)
        path = save_png(result.images[0], args.out / f"{stem}_upscaled.png", result.parameters[0])
        height, width = request.size
        tiles = f"{len(request.tiles)} tile{'s' if len(request.tiles) > 1 else ''}"
        summary = f"{image.name}: {width}x{height} in {tiles}, seed {result.seed} -> {path.name}"
        return [summary, *result.warnings]

    return run_each(args, settings, images, run, steps=1)


def run_each(
    args: argparse.Namespace,
    settings: Settings,
    images: list[Path],
    run_one: RunOne,
    steps: int = 1,
) -> int:
    """`run_one` on every image under one progress bar (images x steps). Inputs that fail are
    reported at the end; a missing model stops everything."""
    from tqdm import tqdm

    try:
        args.out.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise UserFacingError(f"Cannot create the output folder {args.out}: {error}") from None
    quiet_libraries()
    from pipelines.engine import Engine  # torch is imported here, not for --help

    engine = Engine(settings)
    failures: list[str] = []
    unit = "step" if args.command == "generate" else "image"
    with tqdm(total=len(images) * steps, desc=args.command, unit=unit, file=sys.stderr) as bar:
        for index, (image, stem) in enumerate(zip(images, output_stems(images), strict=True)):
            done = index * steps

            def progress(step: int, total: int, done: int = done) -> None:
                bar.update(done + round(step * steps / max(total, 1)) - bar.n)

            try:
                summary, *warnings = run_one(engine, image, stem, progress)
                bar.write(summary, file=sys.stdout)
                for warning in warnings:
                    bar.write(f"  warning: {warning}", file=sys.stdout)
            except ModelUnavailableError:
                raise  # the same for every input: stop here
            except UserFacingError as error:
                failures.append(f"{image}: {error}")
            bar.update(done + steps - bar.n)
    if failures:
        print(f"{len(failures)} of {len(images)} input(s) failed:", file=sys.stderr)
        for failure in failures:
            print(f"  {failure}", file=sys.stderr)
        return 1
    return 0


def run_download(args: argparse.Namespace) -> int:
    import download

    if not args.all and not args.roles:
        raise UserFacingError(
            f"Name the roles to fetch, or --all. Roles: {', '.join(download.ROLES)}."
        )
    settings = load_settings(args)
    roles = download.ROLES if args.all else args.roles
    failures = download.download(
        roles,
        settings.models_dir,
        settings.model_ids,
        args.family,
        args.source,
        precision=args.precision,
    )
    for failure in failures:
        print(f"error: {failure}", file=sys.stderr)
    return 1 if failures else 0


def add_option_flags(parser: argparse.ArgumentParser, names) -> None:
    """One flag per request option (`--steps`, `--control-mode`, ...), from its declaration."""
    types = {"whole": int, "number": float}
    for name in names:
        spec = OPTIONS[name]
        choices = f" ({', '.join(spec.choices)})" if spec.choices else ""
        if spec.kind == "flag":
            choices = " (true or false)"
        default = "" if spec.default is None else f"; default {spec.default}"
        parser.add_argument(
            f"--{name.replace('_', '-')}",
            type=types.get(spec.kind, str),
            help=f"{spec.label}{choices}{default}".replace("%", "%%"),
        )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m cli", description=__doc__.splitlines()[0], allow_abbrev=False
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--models-dir", type=Path, help="default: $MODELS_DIR or ./models")
    engine_common = argparse.ArgumentParser(add_help=False, parents=[common])
    engine_common.add_argument(
        "--image", type=Path, help="an image or a folder (generate: or give --pose-json)"
    )
    engine_common.add_argument("--out", type=Path, required=True, help="folder for the PNGs")
    add_option_flags(engine_common, MAP_OPTIONS)
    engine_common.add_argument(
        "--param",
        type=parse_param,
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="an annotator parameter, e.g. low_threshold=50 or include_hands=true (repeatable)",
    )
    engine_common.add_argument("--device", help="cuda, cuda:1 or cpu (default: $DEVICE or auto)")

    generate = commands.add_parser(
        "generate", parents=[engine_common], help="images from a condition (writes map + images)"
    )
    generate.add_argument("--condition", required=True, help="canny, mlsd, hed, depth, ...")
    generate.add_argument("--prompt", default="")
    generate.add_argument("--annotator", help="default: the condition's first (e.g. canny)")
    generate.add_argument(
        "--init-image",
        type=Path,
        help="image to image: start from this image (default: --image itself) at a "
        "--denoising-strength below 1",
    )
    generate.add_argument(
        "--mask",
        type=Path,
        help="inpainting: white = repaint, black = keep; the initial image's size",
    )
    generate.add_argument(
        "--pose-json",
        type=Path,
        help="pose conditions: the pose from this OpenPose JSON file instead of --image",
    )
    add_option_flags(generate, GENERATE_OPTIONS)
    generate.set_defaults(func=run_generate)

    annotate = commands.add_parser(
        "annotate", parents=[engine_common], help="control maps only (no diffusion model)"
    )
    annotate.add_argument("--annotator", required=True, help="canny, hed, openpose, ...")
    annotate.set_defaults(func=run_annotate)

    upscale = commands.add_parser(
        "upscale", parents=[common], help="larger images, repainted in tiles (tile ControlNet)"
    )
    upscale.add_argument("--image", type=Path, required=True, help="an image or a folder")
    upscale.add_argument("--out", type=Path, required=True, help="folder for the PNGs")
    upscale.add_argument("--prompt", default="")
    upscale.add_argument("--device", help="cuda, cuda:1 or cpu (default: $DEVICE or auto)")
    add_option_flags(upscale, UPSCALE_FLAGS)
    upscale.set_defaults(func=run_upscale)

    fetch = commands.add_parser(
        "download", parents=[common], help="fetch the default weights into MODELS_DIR"
    )
    fetch.add_argument("roles", nargs="*", metavar="ROLE", help="base, canny, annotators, ...")
    fetch.add_argument("--all", action="store_true", help="every role")
    fetch.add_argument("--family", default="v11", choices=("v11", "v10"), help="ControlNets")
    fetch.add_argument("--source", type=Path, help="copy from a local Hub-layout mirror instead")
    fetch.add_argument(
        "--precision",
        default="fp32",
        choices=("fp32", "fp16"),
        help="fp16: the diffusion models' fp16 variants, half the download (for GPUs)",
    )
    fetch.set_defaults(func=run_download)
    return parser


def main(argv: list[str] | None = None) -> int:
    # No safetensors conversion requests nor weights from the converter's pull-request branch
    # (transformers does both for .bin-only repos); set before anything imports transformers.
    os.environ.setdefault("DISABLE_SAFETENSORS_CONVERSION", "1")
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        return args.func(args)
    except UserFacingError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
