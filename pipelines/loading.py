"""Loading helpers shared by the pipelines: which optional components a saved folder leaves out."""

from __future__ import annotations

import json
import os
from pathlib import Path

from diffusers import DiffusionPipeline


def model_index(path: str | os.PathLike, **hub_kwargs) -> dict:
    """Read `model_index.json` from a local folder or, on a machine with a hub, a repo id."""
    local = Path(path) / "model_index.json"
    if local.is_file():
        return json.loads(local.read_text())
    if Path(path).exists():
        raise FileNotFoundError(f"pretrained_model_name_or_path={str(path)!r} has no model_index.json")
    if Path(path).is_absolute() or str(path).startswith((".", "~")) or str(path).count("/") > 1:
        raise FileNotFoundError(f"pretrained_model_name_or_path={str(path)!r}: no such folder (nor a hub id)")
    from huggingface_hub import hf_hub_download

    return json.loads(Path(hf_hub_download(str(path), "model_index.json", **hub_kwargs)).read_text())


def absent_components(cls: type[DiffusionPipeline], index: dict) -> dict[str, None]:
    """Components of `cls` that the saved pipeline does not have (e.g. SD3 saved without T5), as None."""
    expected, _ = cls._get_signature_keys(cls)
    return {name: None for name in expected if index.get(name) in (None, [None, None])}
