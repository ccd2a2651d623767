"""Head selections: which attention heads SoftPAG perturbs, how strongly, in named groups with their own scales.

Notation (the paper's, extended): ``L<layer>H<head>`` selects one head of a layer's main attention, e.g.
``"L1H10"``; ``=<u>`` sets its strength (``"L1H10=0.5"``); ``/attn2`` addresses SD3.5's image-only attention
(``"L3H5/attn2"``). Entries are separated by commas or spaces. Groups are separated by ``;`` and may be named:
``"quality: L1H10, L5H3; style: L13H17"``. Layer numbering is documented per model in `guidance.layouts`.
"""

from __future__ import annotations

import json
import os
import re
import unicodedata
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from guidance.checks import Setting, short_repr
from guidance.strictjson import loads_strict, refused_values

PRESET_FORMAT = "headhunter-preset"
ATTENTIONS = ("attn", "attn2")
SCALE_LIMIT = 100.0  # |w| of a head group, the same bound as the pipelines' pag_scale
MAX_INDEX = 99_999  # layer and head indices (the largest real models have fewer than 100 layers)
# The checks of a head's strength u and a group's scale w; `guidance.config` builds the pipelines' pag_strength and
# pag_scale from them (their defaults and help added), so a selection and a call allow the same values.
HEAD_STRENGTH = Setting("strength u", None, "number", 0, 1)
GROUP_SCALE = Setting("scale", None, "number", -SCALE_LIMIT, SCALE_LIMIT)
INDEX = Setting("index", 0, "integer", 0, MAX_INDEX)
MAX_GROUPS = 64
MAX_HEADS = 10_000  # entries over all groups
MAX_NAME = 100  # characters of a group name
MAX_PRESET_BYTES = 1024 * 1024
# Top-level preset keys: the structure, then metadata that search and the shipped presets write.
PRESET_KEYS = {
    "format": str, "version": int, "groups": list, "model": str, "architecture": str, "layers_x_heads": list,
    "source": str, "created": str, "objective": str, "prompts": list, "scores": dict, "search": dict,
    "name": str, "description": str, "settings": dict, "settings_source": str,
}  # fmt: skip
# The call settings a preset may recommend ("settings": {"pag_every": 2, ...}); checked by `SoftPAGConfig`, which
# applies them to the arguments a call leaves at their defaults.
PRESET_SETTINGS = ("pag_every", "pag_branch", "pag_start", "pag_stop", "pag_identity")
# ASCII only: `\d` would also read "L０H０" (full-width digits) as L0H0.
_ENTRY = re.compile(
    r"L(?P<layer>-?[0-9]+)H(?P<head>-?[0-9]+)(?:/(?P<attn>[A-Za-z0-9_]+))?(?:=(?P<u>[^\s,]+))?",
    re.IGNORECASE | re.ASCII,
)
_NUMBER = re.compile(r"[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:e[+-]?[0-9]+)?|[+-]?(?:nan|inf)", re.IGNORECASE)


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
        elif isinstance(value, str) and is_notation(value):
            selection = cls.from_text(value, parameter)
        elif isinstance(value, os.PathLike) or (
            isinstance(value, str) and value.strip().lower().endswith(".json")
        ):
            selection = cls.load(value, parameter)
        elif isinstance(value, str):
            selection = cls.from_text(value, parameter)
        elif isinstance(value, Mapping):
            selection = cls.from_json(value, parameter)
        elif isinstance(value, Iterable) and not isinstance(value, bytes | bytearray):
            items = _bounded_list(value, MAX_HEADS, "heads", parameter)
            selection = cls((HeadGroup(tuple(_entry_from_item(item, parameter) for item in items)),))
        else:
            raise HeadSelectionError(
                f"{parameter}={value!r} is not a head selection; pass a string such as 'L1H10,L5H3', "
                "(layer, head) tuples, a preset JSON path or a HeadSelection"
            )
        selection.check(parameter)
        return selection

    @classmethod
    def from_text(cls, text: str, parameter: str = "pag_heads") -> HeadSelection:
        """Read the notation: groups separated by ';', entries by commas or spaces."""
        return cls(tuple(_parse_group_text(part, i, parameter) for i, part in enumerate(text.split(";"))))

    @classmethod
    def from_json(cls, data: Any, parameter: str = "pag_heads") -> HeadSelection:
        """Read the preset JSON structure (see `to_json`), checked against the preset schema (`PRESET_KEYS`)."""
        _check_preset_keys(data, parameter)
        groups = []
        for i, group in enumerate(_bounded_list(data["groups"], MAX_GROUPS, "groups", parameter)):
            if (
                not isinstance(group, Mapping)
                or set(group) - {"name", "heads", "scale"}
                or "heads" not in group
            ):
                raise HeadSelectionError(
                    f"{parameter}: groups[{i}] must be an object with a 'heads' list and optional 'name', "
                    f"'scale'; got {short_repr(group)}"
                )
            items = _bounded_list(group["heads"], MAX_HEADS, f"groups[{i}].heads", parameter)
            heads = tuple(_entry_from_item(item, parameter) for item in items)
            name = group.get("name", f"group{i}")
            groups.append(HeadGroup(heads, name, group.get("scale")))
        metadata = {k: v for k, v in data.items() if k not in ("groups", "format", "version")}
        return cls(tuple(groups), metadata)

    @classmethod
    def load(cls, path: str | os.PathLike, parameter: str = "pag_heads") -> HeadSelection:
        """Load a preset JSON file (`read_preset`: UTF-8, strict JSON, at most `MAX_PRESET_BYTES`)."""
        return cls.from_json(read_preset(path, parameter), parameter)

    def without_settings(self) -> HeadSelection:
        """The same heads and metadata without the preset's recommended call settings."""
        metadata = {k: v for k, v in self.metadata.items() if k not in ("settings", "settings_source")}
        return HeadSelection(self.groups, metadata)

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
        tmp.write_text(json.dumps(data, indent=2, allow_nan=False) + "\n")  # strict: `read_preset` reads it
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
        """Checks that need no model, also for selections built directly: types, sizes, indices, strengths in
        [0, 1], group scales within +-SCALE_LIMIT, names, no duplicates within a group."""
        if not isinstance(self.groups, tuple | list) or not all(
            isinstance(g, HeadGroup) for g in self.groups
        ):
            raise HeadSelectionError(
                f"{parameter}: groups must be a tuple of HeadGroup, got {short_repr(self.groups)}"
            )
        if not self.groups or any(not g.heads for g in self.groups):
            raise HeadSelectionError(f"{parameter}: a head selection needs at least one head in every group")
        if len(self.groups) > MAX_GROUPS or len(self.entries) > MAX_HEADS:
            raise HeadSelectionError(
                f"{parameter}: {len(self.groups)} groups / {len(self.entries)} heads; allowed: at most "
                f"{MAX_GROUPS} groups and {MAX_HEADS} heads"
            )
        for group in self.groups:
            _check_group(group, parameter)
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
        """Check every entry against the model: `heads_per_layer[attention][layer]` = number of heads.

        A preset that records the shape it was made for (`layers_x_heads`) is refused on a model of another
        shape, naming the model it is for."""
        self.check(parameter)
        self._check_shape(heads_per_layer.get("attn", {}), parameter)
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

    def _check_shape(self, layers: Mapping[int, int], parameter: str) -> None:
        """Refuse a preset made for a model of another shape (layers x heads of the main attention)."""
        shape = self.metadata.get("layers_x_heads") if isinstance(self.metadata, Mapping) else None
        if not layers or not isinstance(shape, list) or len(shape) != 2:
            return
        here = [len(layers), max(layers.values())]
        if list(shape) != here:
            model = self.metadata.get("model", "another model")
            raise HeadSelectionError(
                f"{parameter}: this preset is for {model} ({shape[0]} layers x {shape[1]} heads); the loaded model "
                f"has {here[0]} layers x {here[1]} heads. Use a preset made for it (headhunter presets list) or "
                "name heads directly"
            )


def read_preset(path: str | os.PathLike, parameter: str = "pag_heads") -> Any:
    """The JSON of a preset file, read strictly (`guidance.strictjson`): a regular file of at most
    `MAX_PRESET_BYTES` of UTF-8, no NaN or Infinity, no integer over 64 digits, nesting at most 16 deep; else
    HeadSelectionError naming the parameter, the file and the reason (and the field, where there is one)."""
    where = f"{parameter}: preset file {shown_path(path)}"
    try:
        path = Path(path)
        if not path.exists():
            raise HeadSelectionError(f"{where} does not exist")
        if not path.is_file():
            raise HeadSelectionError(f"{where} is not a regular file")
        with open(path, "rb") as file:  # read at most one byte more than allowed, whatever stat says
            data = file.read(MAX_PRESET_BYTES + 1)
    except OSError as error:
        raise HeadSelectionError(f"{where} cannot be read: {error.strerror or error}") from None
    if len(data) > MAX_PRESET_BYTES:
        raise HeadSelectionError(f"{where} is larger than {MAX_PRESET_BYTES // 1024} KiB")
    try:
        value = loads_strict(data.decode("utf-8"))
    except UnicodeDecodeError as error:
        raise HeadSelectionError(f"{where} is not UTF-8 text (byte {error.start})") from None
    except json.JSONDecodeError as error:
        raise HeadSelectionError(
            f"{where} is not valid JSON: {error.msg} at line {error.lineno} column {error.colno}"
        ) from None
    except RecursionError:
        raise HeadSelectionError(f"{where} is not valid JSON: nested too deeply") from None
    problems = refused_values(value)
    if problems:
        raise HeadSelectionError(f"{where}: " + "; ".join(problems[:3]))
    return value


def shown_path(path: str | os.PathLike, limit: int = 200) -> str:
    """repr of a path for a message: whole up to `limit` characters, else its end (the file name stays)."""
    text = repr(str(path))
    return text if len(text) <= limit else "'..." + text[-(limit - 4) :]


def is_notation(text: str) -> bool:
    """True if `text` reads as heads in the paper's notation (so it is neither a preset name nor a path)."""
    parts = [part.rpartition(":")[2] for part in text.split(";")]
    items = [t for part in parts for t in re.split(r"[\s,]+", part.strip(), flags=re.ASCII) if t]
    return bool(items) and all(_ENTRY.fullmatch(t) for t in items)


# -------------------------------------------------------------------------------------------------------------
# Parsing and checking helpers
# -------------------------------------------------------------------------------------------------------------


# Bidirectional-text controls, which reorder what a terminal shows (the "Trojan Source" characters).
_BIDI_CONTROLS = frozenset("\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")


def printable(text: str) -> str:
    """`text` safe to print to a terminal: control characters other than tab and newline, lone surrogates and
    bidi controls written as escapes (ESC as `\\x1b`, U+202E as `\\u202e`); everything else as it is."""
    return "".join(_escaped(c) if _unsafe(c) else c for c in text)


def _unsafe(c: str) -> bool:
    return (c not in "\t\n" and unicodedata.category(c) in ("Cc", "Cs")) or c in _BIDI_CONTROLS


def _escaped(c: str) -> str:
    return f"\\x{ord(c):02x}" if ord(c) < 0x100 else f"\\u{ord(c):04x}"


def _bounded_list(value: Any, limit: int, what: str, parameter: str) -> list:
    """`value` as a list of at most `limit` items, else HeadSelectionError naming `what`."""
    if isinstance(value, str | bytes | Mapping) or not isinstance(value, Iterable):
        raise HeadSelectionError(f"{parameter}: {what} must be a list, got {short_repr(value)}")
    items = []
    for item in value:
        items.append(item)
        if len(items) > limit:
            raise HeadSelectionError(f"{parameter}: {what} has more than {limit} entries")
    return items


def _check_preset_keys(data: Any, parameter: str) -> None:
    """The preset's top level: an object with a 'groups' list, known keys of the right types."""
    if not isinstance(data, Mapping):
        raise HeadSelectionError(
            f"{parameter}: a preset must be a JSON object with a 'groups' list, got {type(data).__name__} "
            f"{short_repr(data)}"
        )
    if "groups" not in data:
        raise HeadSelectionError(
            f"{parameter}: preset JSON needs a 'groups' list, got keys {sorted(map(str, data))}"
        )
    for key, value in data.items():
        kind = PRESET_KEYS.get(key)
        if kind is None:
            raise HeadSelectionError(
                f"{parameter}: unknown preset key {short_repr(key)}; allowed: {', '.join(sorted(PRESET_KEYS))}"
            )
        if not isinstance(value, kind) or isinstance(value, bool):
            raise HeadSelectionError(
                f"{parameter}: preset key {key!r}={short_repr(value)} must be a JSON {_JSON_NAMES[kind]}"
            )
    unknown = sorted(set(data.get("settings", {})) - set(PRESET_SETTINGS))
    if unknown:
        raise HeadSelectionError(
            f"{parameter}: preset settings {short_repr(unknown)} are not call settings a preset may carry; "
            f"allowed: {', '.join(PRESET_SETTINGS)}"
        )
    if data.get("format", PRESET_FORMAT) != PRESET_FORMAT or data.get("version", 1) != 1:
        raise HeadSelectionError(
            f"{parameter}: preset format {data.get('format')!r} version {data.get('version')!r} is not "
            f"supported; allowed: {PRESET_FORMAT!r} version 1"
        )


_JSON_NAMES = {str: "string", int: "integer", list: "list", dict: "object"}


def _check_group(group: HeadGroup, parameter: str) -> None:
    """A group's name (a short string) and scale (None or a finite number within +-SCALE_LIMIT)."""
    if not isinstance(group.name, str) or not 0 < len(group.name) <= MAX_NAME or not group.name.isprintable():
        raise HeadSelectionError(
            f"{parameter}: group name {short_repr(group.name)} must be printable text of 1..{MAX_NAME} characters"
        )
    GROUP_SCALE.check(group.scale, HeadSelectionError, f"{parameter}: group {group.name!r}: scale")
    for head in group.heads:
        if not isinstance(head, HeadEntry):
            raise HeadSelectionError(
                f"{parameter}: group {group.name!r}: {short_repr(head)} is not a HeadEntry"
            )
        _make_entry(head.layer, head.head, head.strength, head.attention, _label(head), parameter)


def _label(head: HeadEntry) -> str:
    """The entry's label, or its repr where a field is not what the label needs."""
    try:
        return head.label
    except (TypeError, ValueError):
        return short_repr(head)


def _make_entry(layer: Any, head: Any, u: Any, attention: Any, label: str, parameter: str) -> HeadEntry:
    if not isinstance(attention, str) or attention not in ATTENTIONS:
        raise HeadSelectionError(
            f"{parameter}: entry {label}: attention {attention!r} must be one of {ATTENTIONS}"
        )
    return HeadEntry(
        INDEX.check(layer, HeadSelectionError, f"{parameter}: entry {label}: layer index"),
        INDEX.check(head, HeadSelectionError, f"{parameter}: entry {label}: head index"),
        HEAD_STRENGTH.check(u, HeadSelectionError, f"{parameter}: entry {label}: strength u"),
        attention,
    )


def _entry_from_text(text: str, parameter: str) -> HeadEntry:
    match = _ENTRY.fullmatch(text)
    if not match:
        raise HeadSelectionError(
            f"{parameter}: cannot read {short_repr(text)}; write heads as L<layer>H<head> with ASCII digits, e.g. "
            "'L1H10', 'L1H10=0.5'"
        )
    label = text if len(text) <= 60 else short_repr(text)
    u = match["u"]
    if u is not None:
        if not _NUMBER.fullmatch(u):
            raise HeadSelectionError(f"{parameter}: entry {label}: strength {short_repr(u)} is not a number")
        u = float(u)
    layer, head = (_index_from_text(match[k], k, label, parameter) for k in ("layer", "head"))
    return _make_entry(layer, head, u, (match["attn"] or "attn").lower(), label, parameter)


def _index_from_text(digits: str, what: str, label: str, parameter: str) -> int:
    """A layer or head index from its digits; too many digits is an error, not Python's digit-limit error."""
    if len(digits.lstrip("-")) > len(str(MAX_INDEX)):
        raise HeadSelectionError(
            f"{parameter}: entry {label}: {what} index has {len(digits)} digits; allowed: 0..{MAX_INDEX}"
        )
    return int(digits)


def _entry_from_item(item: Any, parameter: str) -> HeadEntry:
    if isinstance(item, HeadEntry):
        return _make_entry(item.layer, item.head, item.strength, item.attention, item.label, parameter)
    if isinstance(item, str):
        return _entry_from_text(item.strip(), parameter)
    if isinstance(item, Mapping):
        label = short_repr(dict(item))
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
        f"{parameter}: entry {short_repr(item)} must be 'L<l>H<h>', (layer, head) or (layer, head, u)"
    )


def _parse_group_text(text: str, index: int, parameter: str) -> HeadGroup:
    name, _, body = text.rpartition(":")
    name = name.strip() or ("heads" if index == 0 else f"group{index}")
    items = [t for t in re.split(r"[\s,]+", body.strip(), flags=re.ASCII) if t]
    if len(items) > MAX_HEADS:
        raise HeadSelectionError(f"{parameter}: more than {MAX_HEADS} heads")
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
