"""The tools' console: the libraries' notices and loading bars kept off stderr unless asked for (`--verbose`).

A plain `headhunter generate` printed about 13 library lines for one image: transformers' notices about
torchvision, diffusers' "Loading pipeline components" bar with transformers' "Loading weights" bars nested in it,
and SD3's T5 truncation notice for the toy models, which are run with the T5 length they were trained at (1).
`quiet_console()` (every CLI command, before any work) drops exactly these; everything else the libraries say
still reaches stderr. The libraries' loggers exist only once they are imported, so their part (`before_loading`)
runs just before a model loads, not at start-up (importing diffusers costs seconds).
"""

from __future__ import annotations

import logging
import re

__all__ = ["LibraryNotices", "before_loading", "quiet_console"]

LIBRARY_LOGGERS = ("transformers", "diffusers")
# Messages dropped wherever they come from in the libraries' loggers.
NOTICES = (
    "requires torchvision",  # transformers: CLIP/Siglip image processors fall back to PIL (never used here)
    # diffusers' from_pipe casts every component to the dtype it already has; the list of modules to keep in
    # float32 is empty, so nothing is lost (a non-empty list is still reported)
    "that should be kept in float32: [].",
)
# SD3 / FLUX tokenizing with a T5 length shorter than the prompt; dropped only for a length a model was trained
# at (`before_loading`), so a real model's truncated prompt is still reported.
T5_TRUNCATION = re.compile(r"truncated because `max_sequence_length` is set to\s*(\d+)\s*tokens")

_state = {"quiet": False, "t5_lengths": set(), "bars_off": set()}


class LibraryNotices(logging.Filter):
    """Drops the library notices of `NOTICES` and the T5 truncation notice at a length by design."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if any(text in message for text in NOTICES):
            return False
        truncated = T5_TRUNCATION.search(message)
        return not (truncated and int(truncated.group(1)) in _state["t5_lengths"])


def quiet_console(verbose: bool = False) -> None:
    """The console of one command: with `verbose`, the libraries as they are; else their notices are dropped
    (from the libraries already imported now, the others when a model loads: `before_loading`). No Python warning
    is filtered: a plain run raises none (the notices are the libraries' log records)."""
    import sys

    _state["quiet"] = not verbose
    if verbose:
        _restore()
        return
    for name in LIBRARY_LOGGERS:
        if name in sys.modules:
            _quiet_library(name)


def before_loading(t5_length: int | None = None) -> None:
    """Called just before a model loads. A quiet console gets the libraries' notices and loading bars off, and
    `t5_length`, the T5 length the model was trained at (its folder records it), marked as by design: prompts
    cut to it are expected, so its truncation notice is dropped."""
    if t5_length is not None:
        _state["t5_lengths"].add(int(t5_length))
    if _state["quiet"]:
        for name in LIBRARY_LOGGERS:
            _quiet_library(name)


def _quiet_library(name: str) -> None:
    """`LibraryNotices` on the handlers of the library's root logger, its loading bars off."""
    import importlib

    library = importlib.import_module(f"{name}.utils.logging")
    library.get_logger(name)  # configures the library's root logger and its handler
    if library.is_progress_bar_enabled():
        library.disable_progress_bar()  # "Loading pipeline components", "Loading weights"
        _state["bars_off"].add(name)
    for handler in logging.getLogger(name).handlers:
        if not any(isinstance(f, LibraryNotices) for f in handler.filters):
            handler.addFilter(LibraryNotices())


def _restore() -> None:
    """Undo an earlier quiet command of this process (the CLI's `main` called again): filters off, bars on."""
    import importlib

    for name in _state["bars_off"]:
        importlib.import_module(f"{name}.utils.logging").enable_progress_bar()
    _state["bars_off"].clear()
    for name in LIBRARY_LOGGERS:
        for handler in logging.getLogger(name).handlers:
            for kept in [f for f in handler.filters if isinstance(f, LibraryNotices)]:
                handler.removeFilter(kept)
