"""The tools' console: the libraries' notices and loading bars kept off stderr unless asked for (`--verbose`).

A plain `headhunter generate` printed about 13 library lines for one image: transformers' notices about
torchvision, diffusers' "Loading pipeline components" bar with transformers' "Loading weights" bars nested in it,
and SD3's T5 truncation notice for the toy models, which are run with the T5 length they were trained at (1).
`quiet_console()` (every CLI command, before any work) drops exactly these; everything else the libraries say
still reaches stderr. The libraries' handlers exist only once they are imported, so their part (`before_loading`)
runs just before a model loads, not at start-up (importing diffusers costs seconds); the notices given while the
libraries import (transformers' torchvision fallbacks, reached as soon as diffusers' pipelines import) are caught
on the logger that gives them, which exists before its library does. One diffusers deprecation that its own
modules raise at import (Chroma imports `FluxPosEmbed` from its old place) is the one Python warning dropped.
"""

from __future__ import annotations

import logging
import warnings

from pipelines.loading import T5_TRUNCATION  # the notice, matched where the pipelines drop it too

__all__ = ["LibraryNotices", "before_loading", "quiet_console"]

LIBRARY_LOGGERS = ("transformers", "diffusers")
# Messages dropped wherever they come from in the libraries' loggers.
NOTICES = (
    "requires torchvision",  # transformers: CLIP/Siglip image processors fall back to PIL (never used here)
    # diffusers' from_pipe casts every component to the dtype it already has; the list of modules to keep in
    # float32 is empty, so nothing is lost (a non-empty list is still reported)
    "that should be kept in float32: [].",
)
# T5_TRUNCATION: SD3 / FLUX tokenizing with a T5 length shorter than the prompt; dropped only for a length a model
# was trained at (`before_loading`), so a real model's truncated prompt is still reported.

# Loggers that give notices while their library imports (before its handler, where `LibraryNotices` sits, exists).
IMPORT_LOGGERS = ("transformers.utils.import_utils",)
# Python warnings the libraries raise against themselves (nothing a user's code can change): (category, message).
LIBRARY_WARNINGS = ((FutureWarning, r"`FluxPosEmbed` is deprecated"),)

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
    (from the libraries already imported now, the others when a model loads: `before_loading`), and the
    libraries' warnings against themselves (`LIBRARY_WARNINGS`); no other Python warning is filtered."""
    import sys

    _state["quiet"] = not verbose
    if verbose:
        _restore()
        return
    for name in IMPORT_LOGGERS:
        _add_filter(logging.getLogger(name))
    for category, message in LIBRARY_WARNINGS:
        warnings.filterwarnings("ignore", message=message, category=category)
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
        _add_filter(handler)


def _add_filter(filterer: logging.Filterer) -> None:
    if not any(isinstance(f, LibraryNotices) for f in filterer.filters):
        filterer.addFilter(LibraryNotices())


def _restore() -> None:
    """Undo an earlier quiet command of this process (the CLI's `main` called again): filters off, bars on."""
    import importlib

    for name in _state["bars_off"]:
        importlib.import_module(f"{name}.utils.logging").enable_progress_bar()
    _state["bars_off"].clear()
    filterers = [logging.getLogger(n) for n in IMPORT_LOGGERS]
    filterers += [h for name in LIBRARY_LOGGERS for h in logging.getLogger(name).handlers]
    for filterer in filterers:
        for kept in [f for f in filterer.filters if isinstance(f, LibraryNotices)]:
            filterer.removeFilter(kept)
    for category, message in LIBRARY_WARNINGS:
        warnings.filters[:] = [f for f in warnings.filters if not (f[0] == "ignore" and f[2] is category
                               and f[1] is not None and f[1].pattern == message)]  # fmt: skip
