"""DWPose's two ONNX models, run with onnxruntime: people boxes (YOLOX-L), then whole-body points.

The pre- and post-processing of DWPose's ONNX release (Yang et al., "Effective Whole-body Pose
Estimation with Two-stages Distillation", ICCV 2023 workshops; IDEA-Research/DWPose, Apache-2.0,
`ControlNet-v1-1-nightly/annotator/dwpose/onnxdet.py` and `onnxpose.py`, themselves after YOLOX's
ONNX demo and MMPose's RTMPose deployment code), written out here; the arithmetic is theirs:

1. Detection (`detect_people`, on BGR, as YOLOX was trained): the image is scaled by
   r = min(640 / H, 640 / W) (INTER_LINEAR) into the top-left corner of a 640 x 640 canvas of grey
   114, fed as float 0-255. The model's (1, 8400, 85) rows are the 80 x 80, 40 x 40 and 20 x 20
   grid cells (strides 8, 16, 32), each (dx, dy, log w, log h, objectness, 80 class scores), not
   yet decoded: centre = (cell + d) * stride, size = exp(log size) * stride, divided by r. The
   class scores are objectness x class; per class, boxes above 0.1 go through NMS at IoU 0.45
   (areas counted with YOLOX's +1 pixel), and of what is left the people (class 0) scoring above
   0.3 are kept.
2. Keypoints (`estimate_keypoints`, on RGB, with ImageNet's mean and std, as MMPose feeds
   RTMPose): each box (or the whole image when none was found) grows by 1.25 about its centre and
   then to the model's aspect (288 : 384, width : height); that area is warped (INTER_LINEAR,
   black outside) onto the model's input. SimCC decoding: each of the 133 points is at the argmax
   of its x and y vectors (576 and 768 bins: 2 per input pixel), its score the smaller of the two
   maxima (no point where that is not above 0); back in the image, x = bin / 2 / 288 * box width +
   box left, likewise y.

Sessions run on CUDA where onnxruntime has it and the device is a GPU, else on the CPU.
onnxruntime is imported in `open_session`, never at import.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import cv2
import numpy as np

from errors import ModelUnavailableError

# --- detection (YOLOX) ----------------------------------------------------------------------------
DETECTOR_SIZE = (640, 640)  # (height, width) of the detector's input
DETECTOR_PAD = 114  # grey of the letterbox canvas
STRIDES = (8, 16, 32)  # YOLOX's three output grids
NMS_IOU = 0.45  # boxes overlapping a better one by more than this are dropped
CANDIDATE_SCORE = 0.1  # objectness x class score a box needs to enter NMS
PERSON_SCORE = 0.3  # ... and a person box needs after it
PERSON_CLASS = 0  # COCO's "person"

# --- keypoints (RTMPose / SimCC) ------------------------------------------------------------------
BOX_PADDING = 1.25  # a box grows by this about its centre before the crop
# MMPose's PoseDataPreprocessor for DWPose: ImageNet's RGB mean and std, on 0-255.
PIXEL_MEAN = np.array([123.675, 116.28, 103.53])
PIXEL_STD = np.array([58.395, 57.12, 57.375])
SIMCC_SPLIT_RATIO = 2.0  # SimCC bins per input pixel


def open_session(path: Path, device: str) -> Any:
    """An onnxruntime session of the model at `path`: CUDA first on a GPU where available."""
    import onnxruntime

    providers = ["CPUExecutionProvider"]
    if device.startswith("cuda") and "CUDAExecutionProvider" in (
        onnxruntime.get_available_providers()
    ):
        providers.insert(0, "CUDAExecutionProvider")
    try:
        return onnxruntime.InferenceSession(str(path), providers=providers)
    except Exception as error:  # noqa: BLE001 (onnxruntime raises its own types for a bad file)
        raise ModelUnavailableError(
            f"`{path}` could not be loaded as an ONNX model ({error}). Replace it with "
            f"`{path.name}` from the Hub repo `yzd-v/DWPose`."
        ) from error


def letterbox(image: np.ndarray, size: tuple[int, int] = DETECTOR_SIZE) -> tuple[np.ndarray, float]:
    """(1, 3, height, width) float32 input and the scale r: the image scaled by r into the
    top-left corner of a grey canvas."""
    canvas = np.full((*size, 3), DETECTOR_PAD, dtype=np.uint8)
    ratio = min(size[0] / image.shape[0], size[1] / image.shape[1])
    height, width = int(image.shape[0] * ratio), int(image.shape[1] * ratio)
    canvas[:height, :width] = cv2.resize(image, (width, height), interpolation=cv2.INTER_LINEAR)
    return np.ascontiguousarray(canvas.transpose(2, 0, 1)[None], dtype=np.float32), ratio


def decode_grid(outputs: np.ndarray, size: tuple[int, int] = DETECTOR_SIZE) -> np.ndarray:
    """YOLOX's raw (..., cells, 85) outputs with the box columns decoded to (cx, cy, w, h) in
    input pixels, in place: the cells run over the stride-8 grid row by row, then 16, then 32."""
    grids, strides = [], []
    for stride in STRIDES:
        xs, ys = np.meshgrid(np.arange(size[1] // stride), np.arange(size[0] // stride))
        grid = np.stack((xs, ys), 2).reshape(1, -1, 2)
        grids.append(grid)
        strides.append(np.full((*grid.shape[:2], 1), stride))
    grid, stride = np.concatenate(grids, 1), np.concatenate(strides, 1)
    outputs[..., :2] = (outputs[..., :2] + grid) * stride
    outputs[..., 2:4] = np.exp(outputs[..., 2:4]) * stride
    return outputs


def nms(boxes: np.ndarray, scores: np.ndarray, iou: float) -> list[int]:
    """Indices of the boxes kept, best first: each drops the later ones it overlaps by > iou."""
    x1, y1, x2, y2 = boxes.T
    areas = (x2 - x1 + 1) * (y2 - y1 + 1)
    order = scores.argsort()[::-1]
    keep = []
    while order.size > 0:
        best, rest = order[0], order[1:]
        keep.append(best)
        width = np.maximum(0.0, np.minimum(x2[best], x2[rest]) - np.maximum(x1[best], x1[rest]) + 1)
        height = np.maximum(
            0.0, np.minimum(y2[best], y2[rest]) - np.maximum(y1[best], y1[rest]) + 1
        )
        inter = width * height
        overlap = inter / (areas[best] + areas[rest] - inter)
        order = rest[overlap <= iou]
    return keep


def multiclass_nms(boxes: np.ndarray, scores: np.ndarray, iou: float, score: float) -> np.ndarray:
    """(n, 6) rows (x1, y1, x2, y2, score, class): NMS within each class, candidates > score."""
    found = []
    for kind in range(scores.shape[1]):
        candidates = scores[:, kind] > score
        if not candidates.any():
            continue
        kept = nms(boxes[candidates], scores[candidates, kind], iou)
        rows = np.concatenate(
            [
                boxes[candidates][kept],
                scores[candidates, kind][kept, None],
                np.full((len(kept), 1), float(kind)),
            ],
            1,
        )
        found.append(rows)
    return np.concatenate(found, 0) if found else np.zeros((0, 6))


def detect_people(session: Any, image_bgr: np.ndarray) -> np.ndarray:
    """The people's boxes (n, 4) as (x1, y1, x2, y2) image pixels, best first (step 1 above)."""
    fed, ratio = letterbox(image_bgr)
    (raw,) = session.run(None, {session.get_inputs()[0].name: fed})[:1]
    predictions = decode_grid(raw)[0]
    centre, size = predictions[:, :2], predictions[:, 2:4]
    boxes = np.concatenate([centre - size / 2.0, centre + size / 2.0], 1) / ratio
    scores = predictions[:, 4:5] * predictions[:, 5:]
    found = multiclass_nms(boxes, scores, NMS_IOU, CANDIDATE_SCORE)
    people = (found[:, 4] > PERSON_SCORE) & (found[:, 5] == PERSON_CLASS)
    return found[people, :4]


def box_centre_and_size(box: np.ndarray, input_size: tuple[int, int]) -> tuple[np.ndarray, ...]:
    """(centre, size) of the area cropped for `box`: padded, then widened or heightened to the
    model's aspect (`input_size` is (width, height))."""
    x1, y1, x2, y2 = box
    centre = np.array([x1 + x2, y1 + y2]) * 0.5
    width, height = (x2 - x1) * BOX_PADDING, (y2 - y1) * BOX_PADDING
    aspect = input_size[0] / input_size[1]
    if width > height * aspect:
        return centre, np.array([width, width / aspect])
    return centre, np.array([height * aspect, height])


def crop_matrix(centre: np.ndarray, size: np.ndarray, input_size: tuple[int, int]) -> np.ndarray:
    """The 2 x 3 affine map from the image onto the model's input, as MMPose's get_warp_matrix
    makes it without rotation: three points (the centre, the top middle and a point to the side)
    and their places in the input, solved in float32."""
    out_width, out_height = input_size
    up = np.array([0.0, size[0] * -0.5])  # from the centre to the top, at the width's scale

    def third(a: np.ndarray, b: np.ndarray) -> np.ndarray:  # b + (a - b) turned by 90 degrees
        direction = a - b
        return b + np.array([-direction[1], direction[0]])

    source = np.zeros((3, 2), dtype=np.float32)
    source[0], source[1] = centre, centre + up
    source[2] = third(source[0], source[1])
    target = np.zeros((3, 2), dtype=np.float32)
    target[0] = [out_width * 0.5, out_height * 0.5]
    target[1] = target[0] + np.array([0.0, out_width * -0.5])
    target[2] = third(target[0], target[1])
    return cv2.getAffineTransform(source, target)


def crop(image_rgb: np.ndarray, box: np.ndarray, input_size: tuple[int, int]) -> tuple:
    """(model input (1, 3, height, width) float32, centre, size) for one box (step 2 above)."""
    centre, size = box_centre_and_size(box, input_size)
    warped = cv2.warpAffine(
        image_rgb, crop_matrix(centre, size, input_size), input_size, flags=cv2.INTER_LINEAR
    )
    normalised = (warped - PIXEL_MEAN) / PIXEL_STD
    return normalised.transpose(2, 0, 1)[None].astype(np.float32), centre, size


def decode_simcc(simcc_x: np.ndarray, simcc_y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(points (n, k, 2) in input pixels, scores (n, k)) from SimCC vectors (n, k, bins)."""
    people, count, _ = simcc_x.shape
    flat_x, flat_y = simcc_x.reshape(people * count, -1), simcc_y.reshape(people * count, -1)
    points = np.stack((flat_x.argmax(1), flat_y.argmax(1)), axis=-1).astype(np.float32)
    scores = np.minimum(flat_x.max(1), flat_y.max(1))
    points[scores <= 0.0] = -1
    points /= SIMCC_SPLIT_RATIO
    return points.reshape(people, count, 2), scores.reshape(people, count)


def estimate_keypoints(
    session: Any, boxes: np.ndarray, image_rgb: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """(points (n, 133, 2) image pixels, scores (n, 133)): one person per box, or one for the
    whole image when there is no box."""
    height, width = session.get_inputs()[0].shape[2:]
    input_size = (int(width), int(height))
    if len(boxes) == 0:
        boxes = np.array([[0, 0, image_rgb.shape[1], image_rgb.shape[0]]])
    all_points, all_scores = [], []
    for box in boxes:
        fed, centre, size = crop(image_rgb, box, input_size)
        simcc_x, simcc_y = session.run(None, {session.get_inputs()[0].name: fed})[:2]
        points, scores = decode_simcc(simcc_x, simcc_y)
        all_points.append(points[0] / input_size * size + centre - size / 2)
        all_scores.append(scores[0])
    return np.array(all_points), np.array(all_scores)
