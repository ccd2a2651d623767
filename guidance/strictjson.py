"""Strict JSON for the files users hand us (presets, batch job lines): no NaN or Infinity, no integer longer
than `MAX_INTEGER_DIGITS` converted, no nesting deeper than `MAX_JSON_DEPTH`; each refusal names its field."""

from __future__ import annotations

import json
from typing import Any

MAX_INTEGER_DIGITS = 64  # every integer field fits in 19 digits; longer ones are refused before conversion
MAX_JSON_DEPTH = 16


class Refused:
    """A value refused while it was read (an integer too long to convert, NaN), reported with its field."""

    def __init__(self, shown: str, why: str):
        self.shown, self.why = shown, why


def integer(text: str) -> int | Refused:
    """An integer literal, converted only if it has at most MAX_INTEGER_DIGITS digits."""
    digits = len(text.lstrip("+-"))
    if digits > MAX_INTEGER_DIGITS:
        return Refused(
            f"{text[:12]}... ({digits} digits)", f"is too long; allowed: at most {MAX_INTEGER_DIGITS} digits"
        )
    return int(text)


def _not_json(name: str) -> Refused:
    return Refused(repr(float(name)), f"is not JSON ({name}); allowed: a finite number")


def loads_strict(text: str) -> Any:
    """Strict JSON: NaN and Infinity, and integers longer than MAX_INTEGER_DIGITS, come back as `Refused`
    values (see `refused_values`) instead of numbers or Python's digit-limit error. Nesting that json itself
    cannot read raises RecursionError."""
    return json.loads(text, parse_int=integer, parse_constant=_not_json)


def refused_values(value: Any) -> list[str]:
    """Problems of a value read by `loads_strict`: each `Refused` value by its field, and nesting deeper than
    MAX_JSON_DEPTH (walked without recursion, so any depth json accepts is measured)."""
    problems, stack = [], [("", value, 0)]
    while stack:
        path, item, depth = stack.pop()
        if isinstance(item, Refused):
            problems.append(f"{path or 'value'}={item.shown} {item.why}")
        elif depth > MAX_JSON_DEPTH:
            problems.append(
                f"{path.partition('[')[0] or 'value'}: nested deeper than {MAX_JSON_DEPTH} levels"
            )
            break
        elif isinstance(item, dict):
            stack += [(f"{path}.{k}" if path else k, v, depth + 1) for k, v in reversed(item.items())]
        elif isinstance(item, list):
            stack += [(f"{path}[{i}]", v, depth + 1) for i, v in reversed(list(enumerate(item)))]
    return problems
