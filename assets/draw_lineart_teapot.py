"""Draws `lineart_teapot.png`, the line-art tab's example: a teapot and a cup on a saucer in black
pen lines on white paper, anti-aliased by drawing at 4x and shrinking with Lanczos.

    .venv/bin/python assets/draw_lineart_teapot.py
"""

from __future__ import annotations

from pathlib import Path

from PIL import Image, ImageDraw

SIZE = 512
SCALE = 4  # drawn at 4x, then shrunk: soft line edges like a scanned pen drawing
PEN = 3  # line width at the final size


def draw() -> Image.Image:
    big = Image.new("L", (SIZE * SCALE, SIZE * SCALE), 255)
    pen = ImageDraw.Draw(big)
    width = PEN * SCALE

    def box(left, top, right, bottom):
        return [left * SCALE, top * SCALE, right * SCALE, bottom * SCALE]

    def line(points):
        pen.line([(x * SCALE, y * SCALE) for x, y in points], fill=0, width=width, joint="curve")

    # The table's edge.
    line([(20, 430), (492, 430)])
    # The teapot: body, lid, knob, spout, handle.
    pen.ellipse(box(70, 200, 290, 420), outline=0, width=width)
    pen.arc(box(115, 165, 245, 245), 180, 360, fill=0, width=width)
    line([(115, 205), (245, 205)])
    pen.ellipse(box(168, 140, 192, 164), outline=0, width=width)
    line([(82, 280), (40, 240), (22, 200), (34, 196), (58, 232), (92, 258)])
    pen.arc(box(220, 235, 330, 375), 270, 90, fill=0, width=width)
    pen.arc(box(236, 258, 306, 352), 270, 90, fill=0, width=width)
    # A band of leaves painted on the body.
    for left in range(105, 260, 30):
        pen.ellipse(box(left, 300, left + 22, 314), outline=0, width=width)
    # The cup on its saucer, with steam.
    pen.ellipse(box(330, 400, 480, 428), outline=0, width=width)
    line([(355, 330), (365, 405), (445, 405), (455, 330)])
    pen.ellipse(box(352, 318, 458, 342), outline=0, width=width)
    pen.arc(box(440, 345, 480, 385), 270, 90, fill=0, width=width)
    for x in (380, 405, 430):
        line([(x, 300), (x - 8, 280), (x, 260), (x - 8, 240)])
    small = big.resize((SIZE, SIZE), Image.LANCZOS)
    return small.convert("RGB")


if __name__ == "__main__":
    draw().save(Path(__file__).resolve().parent / "lineart_teapot.png", optimize=True)
