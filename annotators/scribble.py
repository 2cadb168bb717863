"""Scribbles: dark strokes on light paper become white strokes on black, as the models saw.

Used both for an uploaded drawing and for the interactive canvas, whose black brush strokes on a
white (or transparent, composited onto white) canvas go through the same conversion.
"""

import numpy as np

from annotators.base import Annotator

# The reference scribble app's threshold: a pixel is a stroke when its darkest channel is < 127.
STROKE_THRESHOLD = 127


class ScribbleAnnotator(Annotator):
    name = "scribble"
    label = "Scribble (dark strokes on light paper)"

    def detect(self, image: np.ndarray) -> np.ndarray:
        scribble = np.zeros(image.shape[:2], dtype=np.uint8)
        scribble[image.min(axis=2) < STROKE_THRESHOLD] = 255
        return scribble
