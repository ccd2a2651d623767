"""Saving a trained toy pipeline: an atomic save_pretrained with the toy world's JSON records beside it."""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import torch

from toyworld.train.tokenizer import write_bpe_files


def copy_missing(old: Path, new: Path) -> None:
    """Copy the files of folder `old` that folder `new` lacks into `new`."""
    for path in old.rglob("*"):
        target = new / path.relative_to(old)
        if path.is_file() and not target.exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, target)


def write_pipeline(pipe, out: Path, files: dict[str, dict], bpe_folders: tuple[str, ...] = ()) -> None:
    """save_pretrained into a temp folder, add JSON `files`, the CLIP BPE's vocab.json/merges.txt in
    `bpe_folders` (and files of an older `out` that are missing), then swap it into place by renaming."""
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    pipe.save_pretrained(tmp, safe_serialization=True)
    for name in bpe_folders:
        write_bpe_files(tmp / name)
    for name, data in files.items():
        (tmp / name).write_text(json.dumps(data, indent=1) + "\n")
    old = out.parent / f".{out.name}.old-{os.getpid()}"
    if out.exists():
        copy_missing(out, tmp)
        out.rename(old)
    tmp.rename(out)
    shutil.rmtree(old, ignore_errors=True)


def run_record(args, status: str, steps: int, cfg: dict, rows: list[dict]) -> dict:
    """The training.json fields of a trainer that reuses a toy pipeline (`rows`: the denoiser's log rows)."""
    keys = ("seed", "threads", "batch", "lr", "ema", "caption_dropout", "pool")
    return {
        "status": status,
        **{k: getattr(args, k) for k in keys},
        "denoiser_steps": steps,
        "config": cfg,
        "elapsed_s": round(time.time() - args.t0, 1),
        "final_ema_loss": rows[-1]["ema_loss"] if rows else None,
        "loss_curve": [[r["step"], r["ema_loss"]] for r in rows][::5],
        "torch": torch.__version__,
    }
