"""CO3Dv2-style loader: a tiny folder built with PIL, masking to white, square crops, and clear errors."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from PIL import Image

from toyworld.co3d import Co3dViews

COLOURS = {"seq_a": (200, 30, 30), "seq_b": (30, 60, 220)}


def _build(root: Path, frames: int = 3, masks: bool = True) -> Path:
    """root/toycar/<seq>/images/frame00000k.jpg (40x30, a coloured box on grey) and masks/frame00000k.png."""
    for sequence, colour in COLOURS.items():
        folder = root / "toycar" / sequence
        (folder / "images").mkdir(parents=True)
        if masks:
            (folder / "masks").mkdir()
        for k in range(1, frames + 1):
            image = Image.new("RGB", (40, 30), (90, 90, 90))  # grey background, to be masked out
            image.paste(colour, (12 + k, 8, 28 + k, 22))
            suffix = ".png" if sequence == "seq_a" else ".jpg"  # CO3D ships JPEGs; PNG frames work too
            image.save(folder / "images" / f"frame{k:06d}{suffix}", quality=95)
            if masks:
                mask = Image.new("L", (40, 30), 0)
                mask.paste(255, (12 + k, 8, 28 + k, 22))
                mask.save(folder / "masks" / f"frame{k:06d}.png")
    (root / "toycar" / "set_lists").mkdir()  # CO3D extras are not sequences
    (root / "toycar" / "frame_annotations.jgz").write_bytes(b"")
    return root


def test_loads_masked_square_views(tmp_path):
    data = Co3dViews(_build(tmp_path), size=16, views=2, seed=0)
    assert len(data) == 2
    item = data[0]
    assert item["sequence"] == "toycar/seq_a" and item["category"] == "toycar"
    images = item["images"]
    assert images.shape == (2, 3, 16, 16) and images.dtype == torch.float32
    assert images.min() >= 0 and images.max() <= 1
    assert torch.allclose(images[:, :, 0, 0], torch.ones(2, 3), atol=1e-6)  # grey background -> white
    centre = images[:, :, 8, 8]
    assert (centre[:, 0] > 0.6).all() and (centre[:, 2] < 0.3).all()  # the red box
    assert torch.equal(images, data[0]["images"])  # deterministic per seed
    assert len(set(item["frames"])) == 2
    blue = data[1]["images"][:, :, 8, 8]
    assert (blue[:, 2] > 0.6).all() and (blue[:, 0] < 0.3).all()
    mask_crop = Co3dViews(tmp_path, size=16, views=3, crop="mask")[0]["images"]
    assert mask_crop.shape == (3, 3, 16, 16)


def test_missing_folder_names_the_path(tmp_path):
    missing = tmp_path / "no_such_co3d"
    with pytest.raises(FileNotFoundError, match="no_such_co3d"):
        Co3dViews(missing)


def test_missing_masks_and_too_few_frames(tmp_path):
    with pytest.raises(ValueError, match=r"masks.*seq_a|seq_a.*masks"):
        Co3dViews(_build(tmp_path / "nomask", masks=False), views=2)
    root = _build(tmp_path / "short")
    with pytest.raises(ValueError, match=r"seq_a.*3 frame\(s\).*views=4"):
        Co3dViews(root, views=4)
    (root / "toycar" / "seq_b" / "masks" / "frame000002.png").unlink()
    with pytest.raises(ValueError, match=r"frame000002"):
        Co3dViews(root, views=2)
