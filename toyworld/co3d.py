"""A loader for CO3Dv2-style folders of real multi-view captures, as unposed view sets for UpFusion.

Layout (the CO3Dv2 release, Reizenstein et al. 2021)::

    root/<category>/<sequence>/images/frame000001.jpg   (or .png, .jpeg)
    root/<category>/<sequence>/masks/frame000001.png    (same stem; grey levels = foreground probability)

A sequence is any ``root/<category>/<sequence>`` folder that holds an ``images/`` folder; other entries of a
category (``set_lists/``, ``eval_batches/``, ``frame_annotations.jgz``, ``sequence_annotations.jgz``) are
ignored. Camera annotations are not read: UpFusion takes its input views unposed.

``Co3dViews(root, size=32, views=4, seed=0)`` is a torch ``Dataset`` with one item per sequence (sorted by
``category/sequence``). An item is ``dict(images=(views, 3, size, size) float32 in [0, 1], sequence=
"category/sequence", category=..., frames=[file names])``: ``views`` frames drawn without replacement,
deterministically per (``seed``, sequence); each frame is composited on white with its mask
(``rgb * m + 1 - m``, m = mask / 255), cropped to a square (``crop="center"``: the centred square of the
shorter side; ``crop="mask"``: a square around the mask's bounding box, with ``margin``) and resized to
``size`` with bicubic filtering.

Errors name the offending path: a missing ``root`` or category (``FileNotFoundError``), a folder without
sequences, a sequence without ``masks/`` or without the mask of a frame, and a sequence with fewer frames
than ``views`` (``ValueError``). All are checked when the dataset is built, before any image is decoded.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

__all__ = ["IMAGE_SUFFIXES", "Co3dViews", "load_view"]

IMAGE_SUFFIXES: tuple[str, ...] = (".jpg", ".jpeg", ".png")


def _square_box(
    width: int, height: int, mask: np.ndarray, crop: str, margin: float
) -> tuple[int, int, int, int]:
    """The (left, top, right, bottom) square to crop: centred, or around the mask's bounding box."""
    if crop == "mask":
        rows, cols = np.nonzero(mask > 0.5)
        if rows.size:
            top, bottom, left, right = rows.min(), rows.max() + 1, cols.min(), cols.max() + 1
            side = int(round(max(bottom - top, right - left) * (1.0 + 2.0 * margin)))
            side = max(1, min(side, width, height))
            cy, cx = (top + bottom) / 2.0, (left + right) / 2.0
            x0 = int(round(min(max(cx - side / 2.0, 0), width - side)))
            y0 = int(round(min(max(cy - side / 2.0, 0), height - side)))
            return x0, y0, x0 + side, y0 + side
    side = min(width, height)  # centre crop (also for an empty mask)
    x0, y0 = (width - side) // 2, (height - side) // 2
    return x0, y0, x0 + side, y0 + side


def load_view(
    image_path: Path | str, mask_path: Path | str, size: int, crop: str = "center", margin: float = 0.1
) -> torch.Tensor:
    """One frame composited on white with its mask, cropped square and resized: (3, size, size) in [0, 1]."""
    with Image.open(image_path) as image_file:
        rgb = image_file.convert("RGB")
    with Image.open(mask_path) as mask_file:
        mask_image = mask_file.convert("L")
    if mask_image.size != rgb.size:
        mask_image = mask_image.resize(rgb.size, Image.Resampling.BILINEAR)
    colour = np.asarray(rgb, dtype=np.float32) / 255.0
    mask = np.asarray(mask_image, dtype=np.float32)[..., None] / 255.0
    composite = colour * mask + (1.0 - mask)  # background -> white
    box = _square_box(rgb.width, rgb.height, mask[..., 0], crop, margin)
    square = Image.fromarray(np.round(composite * 255.0).astype(np.uint8), mode="RGB").crop(box)
    square = square.resize((size, size), Image.Resampling.BICUBIC)
    return torch.from_numpy(np.asarray(square, dtype=np.float32) / 255.0).permute(2, 0, 1).contiguous()


class Co3dViews(Dataset):
    """CO3Dv2-style sequences as sets of ``views`` masked, square, resized frames (unposed, for UpFusion)."""

    def __init__(
        self,
        root: Path | str,
        size: int = 32,
        views: int = 4,
        seed: int = 0,
        categories: Sequence[str] | None = None,
        crop: str = "center",
        margin: float = 0.1,
    ) -> None:
        self.root = Path(root)
        self.size, self.views, self.seed = int(size), int(views), int(seed)
        self.crop, self.margin = crop, float(margin)
        if self.size < 1 or self.views < 1:
            raise ValueError(f"size and views must be >= 1; got size={size}, views={views}")
        if crop not in ("center", "mask"):
            raise ValueError(f"crop must be 'center' or 'mask'; got {crop!r}")
        if not self.root.is_dir():
            raise FileNotFoundError(
                f"CO3D root folder not found: {self.root} (expected root/<category>/<sequence>/images)"
            )
        if categories is None:
            category_dirs = sorted(
                p for p in self.root.iterdir() if p.is_dir() and not p.name.startswith(".")
            )
        else:
            category_dirs = [self.root / name for name in categories]
            for path in category_dirs:
                if not path.is_dir():
                    raise FileNotFoundError(f"CO3D category folder not found: {path}")
        self.sequences: list[tuple[str, Path, list[tuple[Path, Path]]]] = []
        for category in category_dirs:
            for sequence in sorted(p for p in category.iterdir() if (p / "images").is_dir()):
                self.sequences.append((f"{category.name}/{sequence.name}", sequence, self._frames(sequence)))
        if not self.sequences:
            raise ValueError(
                f"no sequences under {self.root}: "
                "expected folders root/<category>/<sequence>/images with frames"
            )

    def _frames(self, sequence: Path) -> list[tuple[Path, Path]]:
        """(image, mask) paths of a sequence's frames, sorted; checks masks and the frame count."""
        masks = sequence / "masks"
        if not masks.is_dir():
            raise ValueError(f"sequence has no masks folder: {masks} (each frame needs masks/<frame>.png)")
        images = sorted(
            p for p in (sequence / "images").iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()
        )
        if len(images) < self.views:
            raise ValueError(
                f"sequence {sequence} has {len(images)} frame(s) in images/, fewer than views={self.views}"
            )
        frames = []
        for image in images:
            mask = masks / f"{image.stem}.png"
            if not mask.is_file():
                raise ValueError(f"missing mask for frame {image}: expected {mask}")
            frames.append((image, mask))
        return frames

    def __len__(self) -> int:
        """Number of sequences."""
        return len(self.sequences)

    def __getitem__(self, index: int) -> dict:
        """dict(images (views,3,size,size) in [0,1], sequence, category, frames) for sequence ``index``."""
        name, _, frames = self.sequences[index]
        rng = random.Random(f"toyworld.co3d/{self.seed}/{name}")
        chosen = rng.sample(frames, self.views)  # the first is UpFusion's reference (canonical) view
        images = torch.stack(
            [load_view(image, mask, self.size, crop=self.crop, margin=self.margin) for image, mask in chosen]
        )
        return {
            "images": images,
            "sequence": name,
            "category": name.split("/", 1)[0],
            "frames": [image.name for image, _ in chosen],
        }
