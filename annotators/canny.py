"""Canny edges: white edges on black, `cv2.Canny(image, low, high)`, as the Canny models saw."""

import cv2
import numpy as np

from annotators.base import Annotator, Param


class CannyAnnotator(Annotator):
    name = "canny"
    label = "Canny edges"
    params = (
        Param(
            "low_threshold", "Canny low threshold", 100, 1, 255, info="Weaker edges kept above it"
        ),
        Param("high_threshold", "Canny high threshold", 200, 1, 255, info="Edges start above it"),
    )

    def detect(self, image: np.ndarray, low_threshold: int = 100, high_threshold: int = 200):
        return cv2.Canny(image, low_threshold, high_threshold)  # (H, W) uint8, 0 or 255
