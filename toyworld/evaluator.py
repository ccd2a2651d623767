"""A model-free evaluator for toy-world images: color segmentation, shape classification, positions, quality.

Written from the scene definition in `toyworld.scenes` (canonical palette, shape geometry, layout), never
tuned on a model's outputs. Every score lies in [0, 1], 1 = best; a score the scene leaves unspecified
(a caption without positions) is None and left out of the means.
"""

from __future__ import annotations

from collections import Counter, deque
from dataclasses import dataclass
from itertools import permutations

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view
from PIL import Image

from toyworld.scenes import BACKGROUNDS, COLORS, SIZES, ObjectSpec, Scene, parse_caption

# ----------------------------------------------------------------------------------------------------------
# Thresholds, all derived from the world's definition
# ----------------------------------------------------------------------------------------------------------

COLOR_NAMES: tuple[str, ...] = tuple(COLORS)
MIN_SATURATION = 0.45  # canonical colors have saturation >= 0.85; backgrounds 0 - 0.14
MIN_VALUE = 0.35  # the dark background has value 0.14
MAX_HUE_DISTANCE = 28.0  # degrees; canonical hues are >= 50 degrees apart
MIN_AREA = 0.005  # smallest object part, as a fraction of the image (a small outlined shape is ~3%)
MAX_DETECTIONS = 8  # the largest components considered when matching to the scene
OUTLINED_FILL_RATIO = 0.9  # pixel area / hole-filled area below this = outlined
DARK_LUMINANCE = 0.35  # border luminance below this = dark background
PURE_DISTANCE = 0.1  # max per-channel distance from a palette color for a "pure" pixel
SHARP_EDGE_WIDTH = 2.0  # edge width (pixels) that still counts as fully sharp; renders measure 1.2-1.9
NOISE_SCALE = 0.08  # noise std (of [0, 1] pixels) at which cleanliness reaches 0
# Shape prototypes: (filled area / bounding-box area, mean width of the top quarter / of the bottom quarter)
SHAPE_PROTOTYPES = {"triangle": (0.5, 0.15), "circle": (np.pi / 4, 1.0), "square": (1.0, 1.0)}
TAPER_WEIGHT = 0.5  # weight of the taper feature against the extent feature


def _hue(rgb: tuple[int, int, int]) -> float:
    r, g, b = (c / 255 for c in rgb)
    mx, mn = max(r, g, b), min(r, g, b)
    if mx == r:
        h = (g - b) / (mx - mn) % 6
    elif mx == g:
        h = (b - r) / (mx - mn) + 2
    else:
        h = (r - g) / (mx - mn) + 4
    return 60.0 * h


CANONICAL_HUES = np.array([_hue(COLORS[c]) for c in COLOR_NAMES])
PALETTE = np.array(list(COLORS.values()) + list(BACKGROUNDS.values()), dtype=np.float32) / 255.0


@dataclass(frozen=True)
class Detection:
    """One detected object: its color, shape, centroid and bounding box in [0, 1] image coordinates."""

    color: str
    shape: str
    centroid: tuple[float, float]
    half_extent: float
    area: float
    outlined: bool
    extent: float
    taper: float

    @property
    def size(self) -> str:
        """The nearest size class by half-extent."""
        return min(SIZES, key=lambda s: abs(SIZES[s] - self.half_extent))

    def at(self, position: str) -> bool:
        """Whether the centroid lies in the region a caption's position word names."""
        x, y = self.centroid
        return {
            "left": x < 0.4,
            "right": x > 0.6,
            "top": y < 0.4,
            "bottom": y > 0.6,
            "center": abs(x - 0.5) < 0.12 and abs(y - 0.5) < 0.12,
        }[position]


# ----------------------------------------------------------------------------------------------------------
# Segmentation
# ----------------------------------------------------------------------------------------------------------


def to_array(image: Image.Image | np.ndarray) -> np.ndarray:
    """An RGB image as float32 H x W x 3 in [0, 1]."""
    if isinstance(image, Image.Image):
        return np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
    array = np.asarray(image, dtype=np.float32)
    return array / 255.0 if array.max() > 1.0 else array


def color_labels(rgb: np.ndarray) -> np.ndarray:
    """Per-pixel index into COLOR_NAMES, or -1 for unsaturated / dark / off-palette pixels."""
    mx, mn = rgb.max(-1), rgb.min(-1)
    chroma = mx - mn
    saturation = np.where(mx > 0, chroma / np.maximum(mx, 1e-6), 0.0)
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    safe = np.maximum(chroma, 1e-6)
    hue = np.select(
        [mx == r, mx == g],
        [((g - b) / safe) % 6, (b - r) / safe + 2],
        (r - g) / safe + 4,
    )
    hue = 60.0 * hue
    distance = np.abs((hue[..., None] - CANONICAL_HUES + 180.0) % 360.0 - 180.0)
    labels = distance.argmin(-1)
    valid = (saturation > MIN_SATURATION) & (mx > MIN_VALUE) & (distance.min(-1) < MAX_HUE_DISTANCE)
    return np.where(valid, labels, -1)


def connected_components(mask: np.ndarray) -> list[np.ndarray]:
    """8-connected components of a boolean mask, as arrays of (row, col) pixel indices."""
    seen = np.zeros_like(mask, dtype=bool)
    h, w = mask.shape
    components = []
    for start in zip(*np.nonzero(mask)):
        if seen[start]:
            continue
        seen[start] = True
        queue, pixels = deque([start]), []
        while queue:
            y, x = queue.popleft()
            pixels.append((y, x))
            for dy in (-1, 0, 1):
                for dx in (-1, 0, 1):
                    ny, nx = y + dy, x + dx
                    if 0 <= ny < h and 0 <= nx < w and mask[ny, nx] and not seen[ny, nx]:
                        seen[ny, nx] = True
                        queue.append((ny, nx))
        components.append(np.array(pixels))
    return components


def fill_holes(mask: np.ndarray) -> np.ndarray:
    """The mask with every region that the border cannot reach (4-connected) filled."""
    outside = np.zeros_like(mask, dtype=bool)
    h, w = mask.shape
    queue = deque((y, x) for y in range(h) for x in (0, w - 1) if not mask[y, x])
    queue.extend((y, x) for y in (0, h - 1) for x in range(w) if not mask[y, x])
    for y, x in queue:
        outside[y, x] = True
    while queue:
        y, x = queue.popleft()
        for ny, nx in ((y - 1, x), (y + 1, x), (y, x - 1), (y, x + 1)):
            if 0 <= ny < h and 0 <= nx < w and not mask[ny, nx] and not outside[ny, nx]:
                outside[ny, nx] = True
                queue.append((ny, nx))
    return ~outside


def classify_shape(extent: float, taper: float) -> str:
    """Nearest shape prototype in (extent, taper): triangles taper upwards, circles fill 79% of their box."""
    return min(
        SHAPE_PROTOTYPES,
        key=lambda s: (
            abs(SHAPE_PROTOTYPES[s][0] - extent) + TAPER_WEIGHT * abs(SHAPE_PROTOTYPES[s][1] - taper)
        ),
    )


def _detection(pixels: np.ndarray, color: str, shape_hw: tuple[int, int]) -> Detection:
    h, w = shape_hw
    (y0, x0), (y1, x1) = pixels.min(0), pixels.max(0) + 1
    local = np.zeros((y1 - y0 + 2, x1 - x0 + 2), dtype=bool)  # one pixel of margin so holes stay holes
    local[pixels[:, 0] - y0 + 1, pixels[:, 1] - x0 + 1] = True
    filled = fill_holes(local)
    ys, xs = np.nonzero(filled)
    extent = filled.sum() / ((y1 - y0) * (x1 - x0))
    widths = filled.sum(1)[1:-1]
    quarter = max(1, len(widths) // 4)
    taper = widths[:quarter].mean() / max(widths[-quarter:].mean(), 1)
    return Detection(
        color=color,
        shape=classify_shape(extent, taper),
        centroid=((xs.mean() + x0 - 0.5) / w, (ys.mean() + y0 - 0.5) / h),
        half_extent=max(y1 - y0, x1 - x0) / 2 / max(h, w),
        area=float(filled.sum()) / (h * w),
        outlined=bool(len(pixels) / filled.sum() < OUTLINED_FILL_RATIO),
        extent=float(extent),
        taper=float(taper),
    )


def detect(image: Image.Image | np.ndarray) -> tuple[list[Detection], float]:
    """Objects in the image (largest first) and the fraction of colored pixels outside any object."""
    rgb = to_array(image)
    labels = color_labels(rgb)
    detections, stray = [], 0
    for index, color in enumerate(COLOR_NAMES):
        for pixels in connected_components(labels == index):
            if len(pixels) >= MIN_AREA * labels.size:
                detections.append(_detection(pixels, color, labels.shape))
            else:
                stray += len(pixels)
    colored = max(int((labels >= 0).sum()), 1)
    return sorted(detections, key=lambda d: -d.area), stray / colored


def is_dark_background(image: Image.Image | np.ndarray) -> bool:
    """Whether the median luminance of the image border is dark."""
    rgb = to_array(image)
    border = np.concatenate([rgb[0], rgb[-1], rgb[:, 0], rgb[:, -1]])
    luminance = border @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
    return float(np.median(luminance)) < DARK_LUMINANCE


# ----------------------------------------------------------------------------------------------------------
# Prompt-independent quality
# ----------------------------------------------------------------------------------------------------------


def palette_purity(rgb: np.ndarray) -> float:
    """Fraction of pixels away from color boundaries that are within PURE_DISTANCE of a palette color."""
    distance = np.abs(rgb[:, :, None, :] - PALETTE).max(-1)
    label = distance.argmin(-1)
    boundary = np.zeros(label.shape, dtype=bool)
    boundary[:, 1:] |= label[:, 1:] != label[:, :-1]
    boundary[:, :-1] |= label[:, 1:] != label[:, :-1]
    boundary[1:] |= label[1:] != label[:-1]
    boundary[:-1] |= label[1:] != label[:-1]
    interior = ~boundary
    if not interior.any():
        return 0.0
    return float((distance.min(-1)[interior] < PURE_DISTANCE).mean())


def edge_width(rgb: np.ndarray, window: int = 8, threshold: float = 0.03) -> float | None:
    """Mean width in pixels of the image's edges: sum(|d| * local range) / sum(d^2) over pixel steps d."""
    numerator = denominator = 0.0
    for axis_image in (rgb, rgb.transpose(1, 0, 2)):
        diff = np.abs(np.diff(axis_image, axis=1))
        pad = window // 2 - 1
        padded = np.pad(axis_image, ((0, 0), (pad, pad), (0, 0)), mode="edge")
        windows = sliding_window_view(padded, window, axis=1)
        local_range = windows.max(-1) - windows.min(-1)
        mask = diff > threshold
        numerator += float((diff * local_range)[mask].sum())
        denominator += float((diff**2)[mask].sum())
    return numerator / denominator if denominator > 0 else None


def noise_level(rgb: np.ndarray) -> float:
    """Noise std estimated as the median absolute response to Immerkaer's Laplacian-difference kernel."""
    kernel = np.array([[1, -2, 1], [-2, 4, -2], [1, -2, 1]], dtype=np.float32)
    windows = sliding_window_view(rgb, (3, 3), axis=(0, 1))  # H-2, W-2, 3, 3, 3
    response = np.abs(np.einsum("hwcij,ij->hwc", windows, kernel))
    return float(np.median(response)) / (0.6745 * 6.0)


def quality(image: Image.Image | np.ndarray, stray: float | None = None) -> dict[str, float]:
    """Prompt-independent measures: palette purity, edge sharpness, cleanliness (no noise), no stray blobs."""
    rgb = to_array(image)
    if stray is None:
        stray = detect(rgb)[1]
    width = edge_width(rgb)
    return {
        "palette_purity": palette_purity(rgb),
        "sharpness": 0.0 if width is None else min(1.0, SHARP_EDGE_WIDTH / width),
        "cleanliness": max(0.0, 1.0 - noise_level(rgb) / NOISE_SCALE),
        "artifact_free": 1.0 - stray,
    }


# ----------------------------------------------------------------------------------------------------------
# Scoring against a scene
# ----------------------------------------------------------------------------------------------------------


def _multiset_recall(wanted: list, found: list) -> float:
    return sum((Counter(wanted) & Counter(found)).values()) / len(wanted)


def _match_value(obj: ObjectSpec, det: Detection | None) -> float:
    if det is None:
        return 0.0
    bound = obj.color == det.color and obj.shape == det.shape
    return (
        2 * (obj.color == det.color)
        + 2 * (obj.shape == det.shape)
        + bound * (obj.position is None or det.at(obj.position))
    )


def match(scene: Scene, detections: list[Detection]) -> list[Detection | None]:
    """The detection assigned to each scene object (None if too few), maximising agreement."""
    candidates = detections[:MAX_DETECTIONS] + [None] * len(scene.objects)
    best = max(
        permutations(candidates, len(scene.objects)),
        key=lambda ds: sum(_match_value(o, d) for o, d in zip(scene.objects, ds)),
    )
    return list(best)


def _mean(values: list[float | None]) -> float | None:
    values = [v for v in values if v is not None]
    return sum(values) / len(values) if values else None


def evaluate(image: Image.Image | np.ndarray, scene: Scene | str) -> dict[str, float | None]:
    """Score an image against a scene (or a caption): prompt scores, quality measures, and their means."""
    if isinstance(scene, str):
        scene = parse_caption(scene)
    detections, stray = detect(image)
    assigned = match(scene, detections)
    objects, n = scene.objects, len(scene.objects)
    bound = [d is not None and (o.color, o.shape) == (d.color, d.shape) for o, d in zip(objects, assigned)]
    color_presence = _multiset_recall([o.color for o in objects], [d.color for d in detections])
    shape_presence = _multiset_recall([o.shape for o in objects], [d.shape for d in detections])
    scores = {
        "color_presence": color_presence,
        "shape_presence": shape_presence,
        "presence": (color_presence + shape_presence) / 2,
        "binding": _multiset_recall(
            [(o.color, o.shape) for o in objects], [(d.color, d.shape) for d in detections]
        ),
        "position": _mean(
            [
                float(b and d.at(o.position))
                for o, d, b in zip(objects, assigned, bound)
                if o.position is not None
            ]
        ),
        "size": _mean(
            [float(b and d.size == o.size) for o, d, b in zip(objects, assigned, bound) if o.size is not None]
        ),
        "count": max(0.0, 1.0 - abs(len(detections) - n) / n),
        "outlined": _mean([float(d is not None and d.outlined == scene.outlined) for d in assigned]),
        "dark_background": float(is_dark_background(image) == scene.dark),
    }
    scores["correct"] = float(all(bound) and len(detections) == n)
    scores["score"] = _mean(
        [scores[k] for k in ("presence", "binding", "position", "count", "outlined", "dark_background")]
    )
    scores.update(quality(image, stray))
    scores["quality"] = _mean(
        [scores[k] for k in ("palette_purity", "sharpness", "cleanliness", "artifact_free")]
    )
    scores["overall"] = (scores["score"] + scores["quality"]) / 2
    scores["n_detected"] = float(len(detections))
    return scores


def detections_as_dicts(image: Image.Image | np.ndarray) -> list[dict]:
    """Detections as JSON-serialisable dicts, for reports and debugging."""
    return [{**d.__dict__, "size": d.size} for d in detect(image)[0]]
