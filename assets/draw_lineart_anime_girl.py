"""Draws `lineart_anime_girl.png`, the anime line-art tab's example: a girl's head and shoulders in
the anime manner (large eyes with highlights, a pointed chin, locks of hair, a sailor collar) in
black pen lines on white paper, anti-aliased by drawing at 4x and shrinking with Lanczos.

    .venv/bin/python assets/draw_lineart_anime_girl.py
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

SIZE = 512
SCALE = 4  # drawn at 4x, then shrunk: soft line edges like a scanned pen drawing
PEN = 3  # line width at the final size
BEZIER_POINTS = 40  # points per curve


def bezier(*control: tuple[float, float]) -> list[tuple[float, float]]:
    """Points along the Bezier curve with these control points (any degree)."""
    points = np.array(control, dtype=float)
    curve = []
    for t in np.linspace(0.0, 1.0, BEZIER_POINTS):
        level = points
        while len(level) > 1:  # de Casteljau
            level = (1 - t) * level[:-1] + t * level[1:]
        curve.append((float(level[0, 0]), float(level[0, 1])))
    return curve


def draw() -> Image.Image:
    big = Image.new("L", (SIZE * SCALE, SIZE * SCALE), 255)
    pen = ImageDraw.Draw(big)

    def line(points, width=PEN, fill=0):
        scaled = [(x * SCALE, y * SCALE) for x, y in points]
        pen.line(scaled, fill=fill, width=width * SCALE, joint="curve")

    def box(left, top, right, bottom):
        return [left * SCALE, top * SCALE, right * SCALE, bottom * SCALE]

    # The face: cheeks down to a pointed chin.
    line(bezier((170, 200), (165, 300), (215, 360), (256, 385)))
    line(bezier((342, 200), (347, 300), (297, 360), (256, 385)))
    # The neck and the shoulders.
    line([(228, 372), (226, 420)])
    line([(284, 372), (286, 420)])
    line(bezier((226, 420), (170, 430), (110, 445), (70, 512)))
    line(bezier((286, 420), (342, 430), (402, 445), (442, 512)))
    # The sailor collar and its scarf.
    line([(226, 420), (256, 470), (286, 420)])
    line(bezier((200, 428), (210, 470), (240, 490), (256, 470)))
    line(bezier((312, 428), (302, 470), (272, 490), (256, 470)))
    line([(256, 470), (238, 512)])
    line([(256, 470), (274, 512)])
    # The hair: the top of the head, locks falling from it over the forehead, and the sides.
    pen.arc(box(146, 70, 366, 330), 180, 360, fill=0, width=PEN * SCALE)
    for degrees, bend, end in (
        (100, (225, 140), (192, 208)),
        (92, (250, 150), (236, 204)),
        (84, (282, 150), (272, 206)),
        (72, (326, 135), (326, 204)),
        (124, (170, 150), (172, 232)),
        (52, (360, 150), (340, 232)),
    ):
        angle = np.radians(degrees)
        start = (256 + 110 * np.cos(angle), 200 - 130 * np.sin(angle))  # on the arc
        line(bezier(start, bend, end))
    line(bezier((146, 200), (140, 300), (152, 350), (130, 410)))
    line(bezier((366, 200), (372, 300), (360, 350), (382, 410)))
    line(bezier((172, 232), (160, 300), (165, 350), (150, 395)))
    line(bezier((340, 232), (352, 300), (347, 350), (362, 395)))
    # The eyes: thick upper lids, large irises with a pupil and two highlights, brows.
    for centre, side in ((210, -1), (302, 1)):  # side: where the eye's outer corner is
        lid = ((centre + 32 * side, 255), (centre + 10 * side, 238), (centre - 15 * side, 240))
        line(bezier(*lid, (centre - 30 * side, 252)), 5)
        pen.ellipse(box(centre - 18, 248, centre + 18, 298), outline=0, width=PEN * SCALE)
        pen.ellipse(box(centre - 8, 262, centre + 8, 288), fill=0)
        pen.ellipse(box(centre - 12, 256, centre - 2, 268), fill=255)
        pen.ellipse(box(centre + 4, 280, centre + 9, 286), fill=255)
        line(bezier((centre - 16, 300), (centre, 304), (centre + 14, 300)), 2)
        brow = ((centre + 30 * side, 222), (centre + 5 * side, 212), (centre - 25 * side, 218))
        line(bezier(*brow), 2)
    # The nose and a small smile.
    line([(258, 318), (254, 326)], 2)
    line(bezier((240, 344), (256, 354), (272, 344)), 2)
    small = big.resize((SIZE, SIZE), Image.LANCZOS)
    return small.convert("RGB")


if __name__ == "__main__":
    draw().save(Path(__file__).resolve().parent / "lineart_anime_girl.png", optimize=True)
