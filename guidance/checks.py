"""The one check vocabulary: a `Setting` (one argument's default, kind, range and help) and its `check`, the
text, finiteness and step-window checks, and `short_repr` for messages. Every surface checks through these
(`guidance.config` builds the settings of each technique from them; `guidance.heads` checks a head's u and a group's
w with them); an error names the parameter, the value and what is allowed, and each surface passes its own error
type and label. Imports nothing of the project, so every module of the library may use it.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass, replace
from typing import Any


class GuidanceError(ValueError):
    """Bad settings for a guidance technique, or processors that another feature replaced.

    The message names the parameter, the value and what is allowed."""


def short_repr(value: Any, limit: int = 60) -> str:
    """repr(value), cut to `limit` characters so that an error message stays one readable line."""
    try:
        text = repr(value)
    except ValueError:  # an int beyond Python's digit limit for str()
        return "<an integer with thousands of digits>"
    return text if len(text) <= limit else text[: limit - 3] + "..."


@dataclass(frozen=True)
class Setting:
    """One call argument: its name, default, kind ("number", "integer", "choice", "bool", "text"), range, help.

    A setting whose default is None also accepts None ("not given"). For "text", `low` / `high` bound the
    length in characters (`low=1`: not blank)."""

    name: str
    default: Any
    kind: str
    low: float | None = None
    high: float | None = None
    choices: tuple = ()
    help: str = ""

    @property
    def flag(self) -> str:
        """The command-line flag, e.g. `--pag-scale`."""
        return "--" + self.name.replace("_", "-")

    def allowed(self) -> str:
        """What is allowed, in words."""
        if self.kind == "number" and math.isinf(self.low) and math.isinf(self.high):
            return "a finite number"
        if self.kind == "number":
            return f"a finite number in [{self.low:g}, {self.high:g}]"
        if self.kind == "integer":
            return f"an integer in [{int(self.low)}, {int(self.high)}]"
        if self.kind == "choice":
            return " or ".join(repr(c) for c in self.choices)
        if self.kind == "bool":
            return "True or False"
        if self.high is not None:
            return f"a string of at most {self.high:g} characters" + (", not blank" if self.low else "")
        return "a string"

    def check(self, value: Any, error: type[Exception] = GuidanceError, label: str | None = None) -> Any:
        """The value if allowed (numbers as float / int), else `error` naming the parameter and the range."""
        label = label or self.name
        if value is None and self.default is None and self.kind != "choice":
            return None
        if self.kind == "text":
            return check_text(value, label, error, self.low or 0, self.high)
        if self.kind in ("number", "integer"):
            integral = isinstance(value, numbers.Integral) and not isinstance(value, bool)
            real = isinstance(value, numbers.Real) and not isinstance(value, bool)
            if (
                (self.kind == "integer" and not integral)
                or not real
                or not (integral or math.isfinite(value))
            ):
                raise error(f"{label}={short_repr(value)} must be {self.allowed()}")
            if not self.low <= value <= self.high:
                raise error(f"{label}={short_repr(value)} is out of range; allowed: {self.allowed()}")
            return int(value) if self.kind == "integer" else float(value)
        if self.kind == "choice" and not any(type(value) is type(c) and value == c for c in self.choices):
            raise error(f"{label}={short_repr(value)} is not supported; allowed: {self.allowed()}")
        if self.kind == "bool":
            if _is_numpy_bool(value):
                return bool(value)
            if not isinstance(value, bool):
                raise error(f"{label}={short_repr(value)} must be {self.allowed()}")
        return value

    def narrowed(self, low: float | None = None, high: float | None = None, default: Any = ...) -> Setting:
        """This setting with a narrower range (and another default) for one front end, e.g. a demo's inputs kept
        small for responsiveness; a range outside this one is a ValueError, so a surface cannot widen it."""
        low = self.low if low is None else low
        high = self.high if high is None else high
        if not self.low <= low <= high <= self.high:
            raise ValueError(
                f"{self.name}: [{low:g}, {high:g}] does not lie in [{self.low:g}, {self.high:g}]"
            )
        return replace(self, low=low, high=high, default=self.default if default is ... else default)


def check_window(
    start: float,
    stop: float,
    error: type[Exception] = GuidanceError,
    labels: tuple[str, str] = ("start", "stop"),
) -> None:
    """Raise `error` naming both unless start < stop: a step window (the fraction of the steps in which a
    technique runs) that holds no step would silently leave the technique off."""
    if not start < stop:
        raise error(f"{labels[0]}={short_repr(start)} must be below {labels[1]}={short_repr(stop)}")


def _is_numpy_bool(value: Any) -> bool:
    """A numpy bool scalar (or 0-d bool array): the only non-`bool` a "bool" setting takes (as `bool(value)`)."""
    return type(value).__module__ == "numpy" and getattr(value, "shape", None) == () and value.dtype == bool


def check_finite(value: Any, label: str, error: type[Exception] = GuidanceError) -> None:
    """Raise `error` naming `label` if a tensor or array (or a list / tuple of them, or of numbers) holds NaN or
    infinity: diffusers samples on, and NaN latents give all-NaN images without an error."""
    if isinstance(value, list | tuple):
        for i, item in enumerate(value):
            check_finite(item, f"{label}[{i}]", error)
        return
    if isinstance(value, numbers.Real) and not isinstance(value, bool):
        finite = math.isfinite(value)
    elif type(value).__module__.startswith("torch") and hasattr(value, "is_floating_point"):
        import torch

        finite = not (value.is_floating_point() or value.is_complex()) or bool(torch.isfinite(value).all())
    elif type(value).__module__ == "numpy" and hasattr(value, "dtype"):
        import numpy as np

        finite = value.dtype.kind not in "fc" or bool(np.isfinite(value).all())
    else:
        return
    if not finite:
        raise error(f"{label} contains NaN or infinite values; allowed: finite numbers only")


def check_text(
    value: Any, label: str, error: type[Exception] = GuidanceError, low: float = 0, high: float | None = None
) -> str:
    """The value if it is a str of valid Unicode (no lone surrogates, no control characters but tab and
    newline) with `low`..`high` characters (`low` counts non-blank ones), else `error` naming it."""
    if not isinstance(value, str):
        raise error(f"{label}={short_repr(value)} must be a string, not {type(value).__name__}")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise error(f"{label}={short_repr(value)} is not valid Unicode text (undecodable bytes?)") from None
    bad = next((c for c in value if (ord(c) < 32 and c not in "\t\n\r") or ord(c) == 127), None)
    if bad is not None:
        raise error(
            f"{label}={short_repr(value)} contains the control character {bad!r}; allowed: printable text"
        )
    if low and len(value.strip()) < low:
        raise error(f"{label}={short_repr(value)} is empty; allowed: a non-blank string")
    if high is not None and len(value) > high:
        raise error(f"{label} has {len(value)} characters; allowed: at most {high:g}")
    return value
