"""What a request gives back: a control map, or the images with their maps, seeds, PNG parameters
and notices."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from pipelines.notices import Notices


@dataclass
class ControlMap:
    image: np.ndarray  # RGB uint8 (H, W, 3), at the output size
    notices: Notices = field(default_factory=Notices)  # e.g. an annotator's fallback
    # A pose annotator's people as OpenPose JSON (annotators/pose_json.py); None for the others.
    pose: dict[str, Any] | None = None

    @property
    def warnings(self) -> list[str]:
        return self.notices.texts


@dataclass
class GenerationResult:
    control_maps: list[np.ndarray]  # RGB uint8 (H, W, 3), one per ControlNet unit
    images: list[np.ndarray]  # RGB uint8 (H, W, 3) each
    seeds: list[int]  # each image's own seed: image i used seed + i
    parameters: list[dict[str, Any]]  # each image's full parameters (for its PNG text chunk)
    notices: Notices = field(default_factory=Notices)
    map_labels: list[str] = field(default_factory=list)  # what each control map is
    # The first pose unit's people as OpenPose JSON (found by its annotator, or its own JSON).
    pose: dict[str, Any] | None = None

    @property
    def warnings(self) -> list[str]:
        return self.notices.texts

    @property
    def control_map(self) -> np.ndarray:
        return self.control_maps[0]

    @property
    def seed(self) -> int:
        """The seed asked for (or drawn): the first image's."""
        return self.seeds[0]
