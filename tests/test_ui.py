"""The page built around a fake engine: no torch in the UI, wiring that follows the registry."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
from PIL import Image

from conditions import CONDITIONS
from settings import Settings
from testkit.paths import ASSETS, PROJECT_ROOT


class FakeEngine:
    base_model_names = ["Stable Diffusion 1.5", "Community model"]

    def describe(self) -> str:
        return "Device: fake"


def test_ui_modules_do_not_import_torch():
    code = "import sys, ui; ui.build_demo; assert 'torch' not in sys.modules, 'torch imported'"
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=PROJECT_ROOT, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr


def test_every_model_event_shares_one_bounded_queue():
    from ui import build_demo

    demo = build_demo(FakeEngine(), Settings(queue_size=7))
    functions = {fn.api_name: fn for fn in demo.fns.values() if fn.api_name}
    for name in [*CONDITIONS, "compose", "upscale", "annotate"]:
        assert functions[name].concurrency_id == "gpu", name
        assert functions[name].concurrency_limit in ("default", 1), name
    previews = [fn for fn in demo.fns.values() if fn.name == "preview_map"]
    assert len(previews) == len(CONDITIONS)
    assert all(fn.concurrency_id == "gpu" for fn in previews)
    assert demo._queue.max_size == 7
    assert demo._queue.default_concurrency_limit == 1  # one GPU job at a time per process


def test_examples_are_real_images_in_assets():
    for condition in CONDITIONS.values():
        for name, prompt in condition.examples:
            assert prompt
            with Image.open(ASSETS / name) as picture:
                assert min(picture.size) >= 256
    scribble = np.asarray(Image.open(ASSETS / "scribble_house.png").convert("L"))
    assert (scribble < 127).mean() < 0.1  # dark strokes on light paper
    licences = (ASSETS / "LICENSE.md").read_text()
    used = {name for condition in CONDITIONS.values() for name, _ in condition.examples}
    assert all(f"`{name}`" in licences for name in used)


def test_the_image_editor_splits_into_the_initial_image_and_the_mask():
    from ui.img2img import split_editor

    photo = np.zeros((6, 8, 4), np.uint8)
    photo[..., :3], photo[..., 3] = 90, 255
    stroke = np.zeros((6, 8, 4), np.uint8)
    stroke[2:4, 1:5] = (255, 0, 255, 255)
    image, mask = split_editor({"background": photo, "layers": [stroke], "composite": None})
    assert image.shape == (6, 8, 3) and (image == 90).all()
    assert mask.dtype == np.uint8 and set(np.unique(mask)) == {0, 255}
    assert (mask[2:4, 1:5] == 255).all() and mask.sum() == 8 * 255
    # Nothing painted: no mask (plain image to image); no upload: no initial image.
    assert split_editor({"background": photo, "layers": [np.zeros_like(stroke)]})[1] is None
    sheet = np.zeros((6, 8, 4), np.uint8)  # what an empty editor holds: a transparent sheet
    assert split_editor({"background": sheet, "layers": [stroke]})[0] is None
    assert split_editor(None) == (None, None)


def test_a_restore_resets_the_image_to_image_options_a_png_does_not_record():
    """A text-to-image PNG records no denoising strength (it was 1): the page must not keep the
    0.5 of the last image-to-image run; a PNG made from images says to drop them again."""
    from ui.results import with_start_defaults

    values, note = with_start_defaults({"prompt": "a house", "steps": 9})
    assert values["denoising_strength"] == 1.0 and values["keep_unmasked"] is True
    assert values["mask_blur"] == 4 and note == "" and values["steps"] == 9
    made_from = {"denoising_strength": 0.5, "init_image_source": "uploaded", "mask_source": "x"}
    values, note = with_start_defaults(made_from)
    assert values["denoising_strength"] == 0.5 and "init_image_source" not in values
    assert note == " It was made from an initial image and a mask: drop them again."
    _, note = with_start_defaults({"init_image_source": "control_image"})
    assert note == " It was made from an initial image: drop it again."


def test_the_image_sent_to_upscale_is_the_selected_image_or_the_first_one():
    from ui.upscale import chosen_image

    items = [
        ("map.png", "Control map"),
        ("a.png", "Image 1 · seed 1"),
        ("b.png", "Image 2 · seed 2"),
    ]
    assert chosen_image(items, 2) == "b.png"
    assert chosen_image(items, None) == "a.png"
    assert chosen_image(items, 0) == "a.png"  # a control map is not upscaled
    assert chosen_image(items, 7) == "a.png"  # an index from an earlier gallery
    assert chosen_image([("p.png", "Preview 1, step 2 of 8")], 0) is None
    assert chosen_image(None, None) is None
