"""Head selections: which attention heads SoftPAG perturbs, how strongly, in named groups with their own scales.

Notation (the paper's, extended): ``L<layer>H<head>`` selects one head of a layer's main attention, e.g.
``"L1H10"``; ``=<u>`` sets its strength (``"L1H10=0.5"``); ``/attn2`` addresses SD3.5's image-only attention
(``"L3H5/attn2"``). Entries are separated by commas or spaces. Groups are separated by ``;`` and may be named:
``"quality: L1H10, L5H3; style: L13H17"``. Layer numbering is documented per model in `guidance.layouts`.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

PRESET_FORMAT = "headhunter-preset"
ATTENTIONS = ("attn", "attn2")
_ENTRY = re.compile(
    r"^L(?P<layer>-?\d+)H(?P<head>-?\d+)(?:/(?P<attn>\w+))?(?:=(?P<u>[^\s,]+))?$", re.IGNORECASE
)


class HeadSelectionError(ValueError):
    """A head selection that cannot be used; the message names the parameter, the entry and what is allowed."""


@dataclass(frozen=True)
class HeadEntry:
    """One perturbed head: layer index, head index, strength u in [0, 1] (None: the call's default)."""

    layer: int
    head: int
    strength: float | None = None
    attention: str = "attn"

    @property
    def label(self) -> str:
        """The entry in the paper's notation, e.g. ``L1H10`` or ``L3H5/attn2=0.5``."""
        text = f"L{self.layer}H{self.head}"
        if self.attention != "attn":
            text += f"/{self.attention}"
        if self.strength is not None:
            text += f"={self.strength:g}"
        return text

    def to_json(self) -> dict[str, Any]:
        """This entry as a JSON object."""
        data: dict[str, Any] = {"layer": self.layer, "head": self.head}
        if self.strength is not None:
            data["strength"] = self.strength
        if self.attention != "attn":
            data["attention"] = self.attention
        return data


@dataclass(frozen=True)
class HeadGroup:
    """A named set of heads guided together with one scale (None: the call's `pag_scale`)."""

    heads: tuple[HeadEntry, ...]
    name: str = "heads"
    scale: float | None = None

    def to_json(self) -> dict[str, Any]:
        """This group as a JSON object."""
        data: dict[str, Any] = {"name": self.name, "heads": [h.to_json() for h in self.heads]}
        if self.scale is not None:
            data["scale"] = self.scale
        return data


@dataclass(frozen=True)
class HeadSelection:
    """Groups of perturbed heads, plus free-form metadata (model, objective, scores) kept in presets."""

    groups: tuple[HeadGroup, ...]
    metadata: Mapping[str, Any] = field(default_factory=dict)

    # -- construction -----------------------------------------------------------------------------------

    @classmethod
    def parse(cls, value: Any, parameter: str = "pag_heads") -> HeadSelection:
        """Build a selection from notation, a preset path, (layer, head[, u]) tuples, a dict or a selection."""
        if isinstance(value, HeadSelection):
            selection = value
        elif isinstance(value, os.PathLike) or (
            isinstance(value, str) and value.strip().lower().endswith(".json")
        ):
            selection = cls.load(value, parameter)
        elif isinstance(value, str):
            selection = cls(
                tuple(_parse_group_text(text, i, parameter) for i, text in enumerate(value.split(";")))
            )
        elif isinstance(value, Mapping):
            selection = cls.from_json(value, parameter)
        elif isinstance(value, Iterable):
            selection = cls((HeadGroup(tuple(_entry_from_item(item, parameter) for item in value)),))
        else:
            raise HeadSelectionError(
                f"{parameter}={value!r} is not a head selection; pass a string such as 'L1H10,L5H3', "
                "(layer, head) tuples, a preset JSON path or a HeadSelection"
            )
        selection.check(parameter)
        return selection

    @classmethod
    def from_json(cls, data: Mapping[str, Any], parameter: str = "pag_heads") -> HeadSelection:
        """Read the preset JSON structure (see `to_json`)."""
        if "groups" not in data:
            raise HeadSelectionError(
                f"{parameter}: preset JSON needs a 'groups' list, got keys {sorted(data)}"
            )
        groups = []
        for i, group in enumerate(data["groups"]):
            if not isinstance(group, Mapping) or "heads" not in group:
                raise HeadSelectionError(f"{parameter}: groups[{i}] must be an object with a 'heads' list")
            scale = group.get("scale")
            if scale is not None and not _finite_number(scale):
                raise HeadSelectionError(f"{parameter}: groups[{i}].scale={scale!r} must be a finite number")
            heads = tuple(_entry_from_item(item, parameter) for item in group["heads"])
            groups.append(HeadGroup(heads, str(group.get("name", f"group{i}")), scale))
        metadata = {k: v for k, v in data.items() if k not in ("groups", "format", "version")}
        return cls(tuple(groups), metadata)

    @classmethod
    def load(cls, path: str | os.PathLike, parameter: str = "pag_heads") -> HeadSelection:
        """Load a preset JSON file."""
        path = Path(path)
        if not path.is_file():
            raise HeadSelectionError(f"{parameter}: preset file {str(path)!r} does not exist")
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as error:
            raise HeadSelectionError(
                f"{parameter}: preset file {str(path)!r} is not valid JSON: {error}"
            ) from None
        return cls.from_json(data, parameter)

    # -- output -------------------------------------------------------------------------------------------

    def to_json(self) -> dict[str, Any]:
        """The preset JSON structure: format, version, metadata, groups."""
        return {
            "format": PRESET_FORMAT,
            "version": 1,
            **self.metadata,
            "groups": [g.to_json() for g in self.groups],
        }

    def save(self, path: str | os.PathLike) -> Path:
        """Write the preset JSON atomically (temporary file, then rename)."""
        path = Path(path)
        data = self.to_json()
        data.setdefault("created", datetime.now(timezone.utc).isoformat(timespec="seconds"))
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(data, indent=2) + "\n")
        tmp.replace(path)
        return path

    def __str__(self) -> str:
        """The notation again; a single group with the default name is written without it."""
        if len(self.groups) == 1 and self.groups[0].name == "heads":
            return ", ".join(h.label for h in self.groups[0].heads)
        return "; ".join(f"{g.name}: " + ", ".join(h.label for h in g.heads) for g in self.groups)

    # -- checks -------------------------------------------------------------------------------------------

    @property
    def entries(self) -> tuple[HeadEntry, ...]:
        """Every entry of every group."""
        return tuple(h for g in self.groups for h in g.heads)

    def check(self, parameter: str = "pag_heads") -> None:
        """Checks that need no model: non-empty, strengths in [0, 1], no duplicates within a group."""
        if not self.groups or any(not g.heads for g in self.groups):
            raise HeadSelectionError(f"{parameter}: a head selection needs at least one head in every group")
        for group in self.groups:
            seen = set()
            for head in group.heads:
                key = (head.layer, head.head, head.attention)
                if key in seen:
                    raise HeadSelectionError(
                        f"{parameter}: duplicate entry {head.label} in group {group.name!r}"
                    )
                seen.add(key)

    def validate(
        self, heads_per_layer: Mapping[str, Mapping[int, int]], parameter: str = "pag_heads"
    ) -> None:
        """Check every entry against the model: `heads_per_layer[attention][layer]` = number of heads."""
        for head in self.entries:
            layers = heads_per_layer.get(head.attention, {})
            if not layers:
                raise HeadSelectionError(
                    f"{parameter}: entry {head.label} addresses '{head.attention}', which this model does not "
                    f"have; allowed: {sorted(a for a, v in heads_per_layer.items() if v)}"
                )
            if head.layer not in layers:
                raise HeadSelectionError(
                    f"{parameter}: entry {head.label}: layer {head.layer} is out of range; this model's "
                    f"'{head.attention}' layers are {_ranges(sorted(layers))}"
                )
            if not 0 <= head.head < layers[head.layer]:
                raise HeadSelectionError(
                    f"{parameter}: entry {head.label}: head {head.head} is out of range; layer {head.layer} has "
                    f"heads 0..{layers[head.layer] - 1}"
                )


# -------------------------------------------------------------------------------------------------------------
# Parsing helpers
# -------------------------------------------------------------------------------------------------------------


def _finite_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _check_strength(u: Any, label: str, parameter: str) -> float | None:
    if u is None:
        return None
    if not _finite_number(u) or not 0.0 <= u <= 1.0:
        raise HeadSelectionError(f"{parameter}: entry {label}: strength u={u!r} must be a number in [0, 1]")
    return float(u)


def _check_index(value: Any, what: str, label: str, parameter: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise HeadSelectionError(
            f"{parameter}: entry {label}: {what} index {value!r} must be a non-negative integer"
        )
    return value


def _make_entry(layer: Any, head: Any, u: Any, attention: Any, label: str, parameter: str) -> HeadEntry:
    if attention not in ATTENTIONS:
        raise HeadSelectionError(
            f"{parameter}: entry {label}: attention {attention!r} must be one of {ATTENTIONS}"
        )
    return HeadEntry(
        _check_index(layer, "layer", label, parameter),
        _check_index(head, "head", label, parameter),
        _check_strength(u, label, parameter),
        attention,
    )


def _entry_from_text(text: str, parameter: str) -> HeadEntry:
    match = _ENTRY.match(text)
    if not match:
        raise HeadSelectionError(
            f"{parameter}: cannot read {text!r}; write heads as L<layer>H<head>, e.g. 'L1H10', 'L1H10=0.5'"
        )
    u = match["u"]
    if u is not None:
        try:
            u = float(u)
        except ValueError:
            raise HeadSelectionError(f"{parameter}: entry {text!r}: strength {u!r} is not a number") from None
    return _make_entry(
        int(match["layer"]), int(match["head"]), u, (match["attn"] or "attn").lower(), text, parameter
    )


def _entry_from_item(item: Any, parameter: str) -> HeadEntry:
    if isinstance(item, HeadEntry):
        return _make_entry(item.layer, item.head, item.strength, item.attention, item.label, parameter)
    if isinstance(item, str):
        return _entry_from_text(item.strip(), parameter)
    if isinstance(item, Mapping):
        label = json.dumps(dict(item))
        unknown = set(item) - {"layer", "head", "strength", "attention"}
        if unknown or "layer" not in item or "head" not in item:
            raise HeadSelectionError(
                f"{parameter}: entry {label} needs keys 'layer' and 'head' (optional 'strength', 'attention')"
            )
        return _make_entry(
            item["layer"], item["head"], item.get("strength"), item.get("attention", "attn"), label, parameter
        )
    if isinstance(item, tuple | list) and len(item) in (2, 3):
        return _make_entry(*item, *([None] * (3 - len(item))), "attn", repr(tuple(item)), parameter)
    raise HeadSelectionError(
        f"{parameter}: entry {item!r} must be 'L<l>H<h>', (layer, head) or (layer, head, u)"
    )


def _parse_group_text(text: str, index: int, parameter: str) -> HeadGroup:
    name, _, body = text.rpartition(":")
    name = name.strip() or ("heads" if index == 0 else f"group{index}")
    items = [t for t in re.split(r"[\s,]+", body.strip()) if t]
    return HeadGroup(tuple(_entry_from_text(t, parameter) for t in items), name)


def _ranges(values: list[int]) -> str:
    """[0, 1, 2, 5] -> '0..2, 5'."""
    parts, start = [], None
    for i, v in enumerate(values):
        start = v if start is None else start
        if i + 1 == len(values) or values[i + 1] != v + 1:
            parts.append(f"{start}..{v}" if v != start else str(v))
            start = None
    return ", ".join(parts)
