"""Command line for the ControlNet demo, on the app's engine, settings and limits.

    python -m cli generate --condition canny --image in.png --prompt "a house" --out results/
    python -m cli annotate --annotator hed --image photos/ --out maps/
    python -m cli download --all

`--image` takes a file or a folder (its image files, sorted). Settings come from the environment
like the app's (settings.py). Exit status: 0 done, 1 some inputs or repos failed (each reported),
2 nothing done (bad arguments or a missing model; the message says what to do).
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from errors import ModelUnavailableError, UserFacingError
from pipelines.request import GenerationOptions

if TYPE_CHECKING:
    import numpy as np

    from settings import Settings

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff"}
# (engine, image, output stem, progress callback) -> lines to print: a summary, then warnings.
RunOne = Callable[[Any, Path, str, Callable[[int, int], None]], list[str]]
# generate's options, passed to the engine when given (else its defaults): the engine's own fields
OPTION_NAMES = tuple(
    name
    for name in GenerationOptions.__dataclass_fields__
    if name not in ("prompt", "annotator_params")
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


def check_params(params: dict[str, Any], annotator_names: tuple[str, ...]) -> None:
    """Refuse unknown annotator parameters and bad values before any model loads."""
    from annotators import get_annotator

    annotators = [get_annotator(name) for name in annotator_names]
    known = {param.name for annotator in annotators for param in annotator.params}
    unknown = sorted(set(params) - known)
    if unknown:
        raise UserFacingError(
            f"Unknown parameter(s): {', '.join(unknown)}. "
            f"Parameters here: {', '.join(sorted(known)) or 'none'}."
        )
    for annotator in annotators:
        annotator.check_params(params)


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
    matters (the engine reports its own warnings, e.g. a prompt cut at 77 tokens)."""
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
    from conditions import get_condition

    settings = load_settings(args)
    condition = get_condition(args.condition)
    annotator = args.annotator or condition.annotators[0]
    if annotator not in condition.annotators:
        raise UserFacingError(
            f"The {condition.name} condition has no annotator {annotator!r}; choose one of: "
            f"{', '.join(condition.annotators)}."
        )
    options = {
        name: getattr(args, name) for name in OPTION_NAMES if getattr(args, name) is not None
    }
    checked = GenerationOptions.checked(
        settings.limits, settings.defaults, prompt=args.prompt, **options
    )
    params = dict(args.param)
    check_params(params, condition.annotators)
    images = find_images(args.image)

    def run(engine, image: Path, stem: str, progress) -> list[str]:
        result = engine.generate(
            condition.name,
            image,
            args.prompt,
            annotator=annotator,
            on_progress=progress,
            **options,
            **params,
        )
        written = [save_png(result.control_map, args.out / f"{stem}_map.png")]
        for index, (picture, parameters) in enumerate(
            zip(result.images, result.parameters, strict=True)
        ):  # each PNG carries its parameters, like the page's
            written.append(save_png(picture, args.out / f"{stem}_{index}.png", parameters))
        names = ", ".join(path.name for path in written)
        return [f"{image.name}: seed {result.seed} -> {names}", *result.warnings]

    return run_each(args, settings, images, run, steps=checked.steps)


def run_annotate(args: argparse.Namespace) -> int:
    from annotators import get_annotator

    settings = load_settings(args)
    annotator = get_annotator(args.annotator).name
    params = dict(args.param)
    check_params(params, (annotator,))
    images = find_images(args.image)

    def run(engine, image: Path, stem: str, progress) -> list[str]:
        result = engine.annotate(
            image,
            annotator,
            args.image_resolution,
            args.detect_resolution,
            args.aspect_ratio,
            args.resize_mode,
            **params,
        )
        path = save_png(result.image, args.out / f"{stem}_map.png")
        return [f"{image.name} -> {path.name}", *result.warnings]

    return run_each(args, settings, images, run)


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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m cli", description=__doc__.splitlines()[0], allow_abbrev=False
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--models-dir", type=Path, help="default: $MODELS_DIR or ./models")
    engine_common = argparse.ArgumentParser(add_help=False, parents=[common])
    engine_common.add_argument("--image", type=Path, required=True, help="an image or a folder")
    engine_common.add_argument("--out", type=Path, required=True, help="folder for the PNGs")
    engine_common.add_argument("--image-resolution", type=int, help="output short side")
    engine_common.add_argument("--detect-resolution", type=int, help="annotator network input")
    engine_common.add_argument("--aspect-ratio", help="image (default), 1:1, 4:3, 16:9, ...")
    engine_common.add_argument(
        "--resize-mode", help="just_resize, crop_and_resize (default) or resize_and_fill"
    )
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
    generate.add_argument("--num-images", type=int)
    generate.add_argument("--steps", type=int)
    generate.add_argument("--seed", type=int, help="-1 or absent: random per input")
    generate.add_argument("--guidance-scale", type=float)
    generate.add_argument("--strength", type=float, help="control strength, 0-2")
    generate.add_argument("--control-start", type=float, help="fraction of the steps, 0-1")
    generate.add_argument("--control-end", type=float, help="fraction of the steps, 0-1")
    generate.add_argument("--base-model", help="a name from BASE_MODELS (default: the first)")
    generate.add_argument("--controlnet-version", help="v1.1 (default) or v1.0")
    generate.add_argument("--control-mode", help="balanced, prompt or controlnet")
    generate.add_argument("--resolution-weighting", type=float)
    generate.add_argument("--scheduler", help="UniPC, DDIM, 'Euler a', 'DPM++ 2M Karras'")
    generate.add_argument("--eta", type=float)
    generate.add_argument(
        "--cache-interval", type=int, help="feature caching: a full UNet step every N steps"
    )
    generate.add_argument("--added-prompt")
    generate.add_argument("--negative-prompt")
    generate.set_defaults(func=run_generate)

    annotate = commands.add_parser(
        "annotate", parents=[engine_common], help="control maps only (no diffusion model)"
    )
    annotate.add_argument("--annotator", required=True, help="canny, hed, openpose, ...")
    annotate.set_defaults(func=run_annotate)

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
