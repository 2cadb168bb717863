"""Tiny stand-ins for DWPose's two ONNX files, written with onnx.helper, in the real files' places.

Each takes the real model's input (YOLOX-L: (1, 3, 640, 640) float; RTMPose-l: (1, 3, 384, 288)
float) and gives outputs of the real shapes: YOLOX's undecoded (1, 8400, 85) grid rows, RTMPose's
SimCC vectors `simcc_x` (1, 133, 576) and `simcc_y` (1, 133, 768) (288 and 384 input pixels, 2
bins each). The outputs are planted: boxes in chosen grid cells, keypoints at chosen bins, so a
test knows what the real pipeline must find. The graph still reads its input (planted + 0 x the
input's mean), so onnxruntime checks the shape it is fed.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from annotators.dwpose import DETECTOR_FILE, POSE_FILE, ROLE, WHOLEBODY_POINTS
from annotators.dwpose_onnx import DETECTOR_SIZE, SIMCC_SPLIT_RATIO, STRIDES
from settings import DEFAULT_MODEL_IDS

DWPOSE_ID = DEFAULT_MODEL_IDS[ROLE]
POSE_INPUT = (288, 384)  # (width, height) of dw-ll_ucoco_384.onnx's input
YOLOX_COLUMNS = 85  # dx, dy, log w, log h, objectness, 80 COCO class scores
OPSET = 17
IR_VERSION = 8  # read by every onnxruntime of the last years


@dataclass(frozen=True)
class PlantedBox:
    """A detection in the detector's 640 x 640 input: corners, objectness, class scores."""

    x1: float
    y1: float
    x2: float
    y2: float
    objectness: float = 0.9
    class_scores: dict[int, float] = field(default_factory=lambda: {0: 0.9})
    stride: int = 32  # the grid whose cell holds the centre


def yolox_rows(boxes: Sequence[PlantedBox]) -> np.ndarray:
    """(1, 8400, 85) float32: each box in the cell of its centre on its stride's grid, encoded
    as YOLOX encodes (offset in the cell, log of the size in strides); every other row 0."""
    rows = np.zeros(
        (1, sum((DETECTOR_SIZE[0] // s) * (DETECTOR_SIZE[1] // s) for s in STRIDES), YOLOX_COLUMNS)
    )
    used = set()
    for box in boxes:
        first = 0
        for stride in STRIDES:
            if stride == box.stride:
                break
            first += (DETECTOR_SIZE[0] // stride) * (DETECTOR_SIZE[1] // stride)
        centre_x, centre_y = (box.x1 + box.x2) / 2, (box.y1 + box.y2) / 2
        column, row = int(centre_x // box.stride), int(centre_y // box.stride)
        cell = first + row * (DETECTOR_SIZE[1] // box.stride) + column
        assert cell not in used, "two planted boxes in one cell"
        used.add(cell)
        rows[0, cell, :4] = (
            centre_x / box.stride - column,
            centre_y / box.stride - row,
            math.log((box.x2 - box.x1) / box.stride),
            math.log((box.y2 - box.y1) / box.stride),
        )
        rows[0, cell, 4] = box.objectness
        for kind, score in box.class_scores.items():
            rows[0, cell, 5 + kind] = score
    return rows.astype(np.float32)


def simcc_vectors(points: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(simcc_x (1, k, 576), simcc_y (1, k, 768)) float32 peaking at `points` (k, 2; k = 133
    for the model), input pixels in steps of half a pixel, with `scores` (k,) as the peaks'
    heights."""
    width, height = POSE_INPUT
    simcc_x = np.zeros((1, len(points), int(width * SIMCC_SPLIT_RATIO)), np.float32)
    simcc_y = np.zeros((1, len(points), int(height * SIMCC_SPLIT_RATIO)), np.float32)
    for index, ((x, y), score) in enumerate(zip(points, scores, strict=True)):
        bin_x, bin_y = x * SIMCC_SPLIT_RATIO, y * SIMCC_SPLIT_RATIO
        assert bin_x.is_integer() and bin_y.is_integer(), "points lie on half pixels"
        simcc_x[0, index, int(bin_x)] = score
        simcc_y[0, index, int(bin_y)] = score
    return simcc_x, simcc_y


def write_planted_model(
    path: Path, input_name: str, input_shape: tuple[int, ...], outputs: dict[str, np.ndarray]
) -> Path:
    """An ONNX model: float input of `input_shape`; each output the planted array (+ 0 x the
    input's mean)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    nodes = [
        helper.make_node("ReduceMean", [input_name], ["mean"], keepdims=0),
        helper.make_node("Mul", ["mean", "zero"], ["nothing"]),
    ]
    initializers = [numpy_helper.from_array(np.zeros((), np.float32), "zero")]
    graph_outputs = []
    for name, array in outputs.items():
        initializers.append(numpy_helper.from_array(array.astype(np.float32), f"{name}_planted"))
        nodes.append(helper.make_node("Add", [f"{name}_planted", "nothing"], [name]))
        graph_outputs.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, array.shape))
    graph = helper.make_graph(
        nodes,
        path.stem,
        [helper.make_tensor_value_info(input_name, TensorProto.FLOAT, input_shape)],
        graph_outputs,
        initializers,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = IR_VERSION
    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


# The tests' MODELS_DIR scene: one person box (the middle of the input) and a standing figure.
DEFAULT_BOXES = (PlantedBox(160.0, 80.0, 480.0, 560.0),)


def standing_figure() -> tuple[np.ndarray, np.ndarray]:
    """133 COCO-WholeBody points (in the pose model's 288 x 384 input, on whole pixels) and their
    scores: a person facing the viewer, a few points scored too low to be drawn."""
    body = [
        (144, 60), (152, 52), (136, 52), (162, 58), (126, 58),  # nose, eyes, ears
        (180, 110), (108, 110), (200, 170), (88, 170), (210, 230), (78, 230),  # arms
        (168, 230), (120, 230), (170, 300), (118, 300), (172, 360), (116, 360),  # legs
    ]  # fmt: skip
    feet = [(166, 372), (178, 372), (174, 366), (110, 372), (122, 372), (114, 366)]
    face = [
        (144 + round(20 * math.cos(t)), 62 + round(24 * math.sin(t)))
        for t in np.linspace(0, 2 * math.pi, 68, endpoint=False)
    ]
    left_hand = [(210 + 2 * (i % 5), 236 + 3 * (i // 5)) for i in range(21)]
    right_hand = [(78 - 2 * (i % 5), 236 + 3 * (i // 5)) for i in range(21)]
    points = np.array(body + feet + face + left_hand + right_hand, dtype=float)
    scores = np.full(WHOLEBODY_POINTS, 0.9)
    scores[3] = 0.2  # the left ear: not drawn
    scores[[10, 30]] = 0.1  # the right wrist and a face point: not drawn
    scores[91 + 20] = 0.25  # the left little fingertip: not drawn
    return points, scores


def save_dwpose(
    folder: Path,
    boxes: Sequence[PlantedBox] = DEFAULT_BOXES,
    figure: tuple[np.ndarray, np.ndarray] | None = None,
) -> Path:
    """`yolox_l.onnx` and `dw-ll_ucoco_384.onnx` under MODELS_DIR/yzd-v/DWPose/: the detector
    finds `boxes`, the pose model the figure (`standing_figure` by default) in every box."""
    target = folder / DWPOSE_ID
    points, scores = figure if figure is not None else standing_figure()
    simcc_x, simcc_y = simcc_vectors(points, scores)
    write_planted_model(
        target / DETECTOR_FILE, "images", (1, 3, *DETECTOR_SIZE), {"output": yolox_rows(boxes)}
    )
    write_planted_model(
        target / POSE_FILE,
        "input",
        (1, 3, POSE_INPUT[1], POSE_INPUT[0]),
        {"simcc_x": simcc_x, "simcc_y": simcc_y},
    )
    return target
