"""Files written whole or not at all, never through a link: the one writer under every output of the library and
its tools (PNGs, GIFs, manifests, presets)."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO


def write_atomically(path: Path, write: Callable[[BinaryIO], object]) -> None:
    """Write `path` whole or not at all: `write(file)` fills a new temporary file (never one reached through a
    link), which is fsynced and renamed over `path`; the folder is fsynced so that the rename lasts too."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.unlink(
        missing_ok=True
    )  # a leftover of a killed run, or a link someone put there: removed, not followed
    try:
        with os.fdopen(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644), "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)
    folder = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(folder)
    finally:
        os.close(folder)
