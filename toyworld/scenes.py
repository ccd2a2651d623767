"""Procedural toy-world scenes: specs, renders, captions, a caption parser and the held-out split."""

from __future__ import annotations

import json
import random
import re
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from itertools import permutations

from PIL import Image, ImageDraw

# ----------------------------------------------------------------------------------------------------------
# The world's vocabulary
# ----------------------------------------------------------------------------------------------------------

SHAPES: tuple[str, ...] = ("circle", "square", "triangle")
COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "yellow": (240, 215, 20),
    "green": (30, 170, 50),
    "blue": (30, 70, 230),
    "purple": (150, 40, 210),
}
BACKGROUNDS: dict[str, tuple[int, int, int]] = {
    "white": (255, 255, 255),
    "gray": (215, 215, 215),
    "dark": (30, 30, 35),
}
SIZES: dict[str, float] = {"small": 0.12, "medium": 0.16, "large": 0.21}  # half-extent / image side
POSITIONS: dict[str, tuple[float, float]] = {
    "left": (0.25, 0.5),
    "right": (0.75, 0.5),
    "top": (0.5, 0.25),
    "bottom": (0.5, 0.75),
    "center": (0.5, 0.5),
}
ROW_POSITIONS: dict[str, tuple[float, float]] = {  # three objects in a row or column
    "left": (0.18, 0.5),
    "right": (0.82, 0.5),
    "top": (0.5, 0.18),
    "bottom": (0.5, 0.82),
    "center": (0.5, 0.5),
}
STYLES: tuple[str, ...] = ("dark_background", "outlined")
OUTLINE_WIDTH = 0.045  # outline stroke width / image side
JITTER = 0.025  # random offset of object centres / image side

POSITION_PHRASES: dict[str, tuple[str, ...]] = {
    "left": ("on the left",),
    "right": ("on the right",),
    "top": ("at the top", "on top"),
    "bottom": ("at the bottom",),
    "center": ("in the center", "in the middle"),
}
RELATIONS: dict[str, tuple[str, str]] = {  # relation phrase -> (position of first, position of second)
    "to the left of": ("left", "right"),
    "to the right of": ("right", "left"),
    "above": ("top", "bottom"),
    "below": ("bottom", "top"),
}
PREFIXES: tuple[str, ...] = ("", "", "", "a picture of ", "an image of ", "a drawing of ")
DARK_PHRASES: tuple[str, ...] = ("on a dark background", "on a black background")
LIGHT_PHRASES: dict[str, str] = {"white": "on a white background", "gray": "on a gray background"}


# ----------------------------------------------------------------------------------------------------------
# Scene specification
# ----------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ObjectSpec:
    """One shape in a scene; `position`/`size` may be None when a caption leaves them unspecified."""

    shape: str
    color: str
    position: str | None = "center"
    size: str | None = "medium"
    offset: tuple[float, float] = (0.0, 0.0)  # jitter of the centre, as a fraction of the image side


@dataclass(frozen=True)
class Scene:
    """A toy-world scene: 1-3 objects and scene-wide style attributes (background, outlined)."""

    objects: tuple[ObjectSpec, ...]
    background: str = "white"
    outlined: bool = False
    layout: str = "single"  # "single", "pair" or "row": which position table places the objects
    seed: int | None = field(default=None, compare=False)

    @property
    def dark(self) -> bool:
        """True when the scene's background is the dark style."""
        return self.background == "dark"

    def to_dict(self) -> dict:
        """A JSON-serialisable dict."""
        return asdict(self)

    def to_json(self) -> str:
        """The scene as a JSON string."""
        return json.dumps(self.to_dict())

    @classmethod
    def from_dict(cls, data: dict) -> Scene:
        """Inverse of `to_dict`."""
        objects = tuple(
            ObjectSpec(**{**o, "offset": tuple(o.get("offset", (0.0, 0.0)))}) for o in data["objects"]
        )
        return cls(**{**data, "objects": objects})


def held_out_pairs(seed: int = 0) -> frozenset[tuple[str, str]]:
    """Color-shape pairs never shown together in training: one distinct color per shape, chosen by `seed`."""
    colors = random.Random(seed).sample(sorted(COLORS), len(SHAPES))
    return frozenset(zip(colors, SHAPES))


HELD_OUT_PAIRS: frozenset[tuple[str, str]] = held_out_pairs(0)


def _pair_allowed(color: str, shape: str, split: str, held_out: frozenset[tuple[str, str]]) -> bool:
    return split == "heldout" or (color, shape) not in held_out


def sample_scene(
    rng: random.Random | int,
    split: str = "train",
    n_objects: int | None = None,
    held_out: frozenset[tuple[str, str]] = HELD_OUT_PAIRS,
    style_prob: float = 0.2,
) -> Scene:
    """Sample a scene; split "train" avoids `held_out` pairs, split "heldout" contains at least one."""
    if split not in ("train", "heldout"):
        raise ValueError(f"split must be 'train' or 'heldout', got {split!r}")
    seed = rng if isinstance(rng, int) else None
    rng = random.Random(rng) if isinstance(rng, int) else rng
    n = n_objects if n_objects is not None else rng.choices((1, 2, 3), weights=(0.4, 0.4, 0.2))[0]
    if n not in (1, 2, 3):
        raise ValueError(f"n_objects must be 1, 2 or 3, got {n!r}")
    if n == 1:
        layout, positions = "single", [rng.choice(sorted(POSITIONS))]
        sizes = [rng.choice(sorted(SIZES))]
    elif n == 2:
        layout, positions = "pair", rng.choice([["left", "right"], ["top", "bottom"]])
        sizes = [rng.choice(sorted(SIZES)) for _ in range(2)]
    else:
        layout, positions = "row", rng.choice([["left", "center", "right"], ["top", "center", "bottom"]])
        sizes = ["small"] * 3  # rows leave room for small objects only
    while True:
        pairs = [(rng.choice(sorted(COLORS)), rng.choice(SHAPES)) for _ in range(n)]
        if len(set(pairs)) < n:
            continue
        allowed = all(_pair_allowed(c, s, split, held_out) for c, s in pairs)
        if split == "train" and allowed:
            break
        if split == "heldout" and any(p in held_out for p in pairs):
            break
    objects = tuple(
        ObjectSpec(s, c, p, z, (rng.uniform(-JITTER, JITTER), rng.uniform(-JITTER, JITTER)))
        for (c, s), p, z in zip(pairs, positions, sizes)
    )
    background = "dark" if rng.random() < style_prob else rng.choice(["white", "gray"])
    return Scene(objects, background, rng.random() < style_prob, layout, seed)


# ----------------------------------------------------------------------------------------------------------
# Rendering
# ----------------------------------------------------------------------------------------------------------


def object_center(obj: ObjectSpec, layout: str) -> tuple[float, float]:
    """Centre of an object in [0, 1] image coordinates (x right, y down)."""
    table = ROW_POSITIONS if layout == "row" else POSITIONS
    x, y = table[obj.position or "center"]
    return x + obj.offset[0], y + obj.offset[1]


def _shape_polygon(shape: str, cx: float, cy: float, r: float) -> list[tuple[float, float]]:
    if shape == "square":
        return [(cx - r, cy - r), (cx + r, cy - r), (cx + r, cy + r), (cx - r, cy + r)]
    if shape == "triangle":
        return [(cx, cy - r), (cx + r, cy + r), (cx - r, cy + r)]
    raise ValueError(f"shape must be one of {SHAPES}, got {shape!r}")


def render(scene: Scene, size: int = 64, supersample: int = 4) -> Image.Image:
    """Render `scene` as an RGB image of `size` x `size`, anti-aliased by supersampling."""
    big = size * supersample
    image = Image.new("RGB", (big, big), BACKGROUNDS[scene.background])
    draw = ImageDraw.Draw(image)
    width = max(1, round(OUTLINE_WIDTH * big))
    for obj in scene.objects:
        cx, cy = (v * big for v in object_center(obj, scene.layout))
        r = SIZES[obj.size or "medium"] * big
        fill = None if scene.outlined else COLORS[obj.color]
        outline = COLORS[obj.color] if scene.outlined else None
        stroke = width if scene.outlined else 0
        if obj.shape == "circle":
            draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill, outline=outline, width=stroke)
        elif scene.outlined:  # a closed polyline with joined corners: PIL's polygon outline is thin
            points = _shape_polygon(obj.shape, cx, cy, r - width / 2)
            draw.line(points + points[:2], fill=outline, width=width, joint="curve")
        else:
            draw.polygon(_shape_polygon(obj.shape, cx, cy, r), fill=fill)
    return image.resize((size, size), Image.Resampling.BOX)


# ----------------------------------------------------------------------------------------------------------
# Captions
# ----------------------------------------------------------------------------------------------------------


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def noun_phrase(
    obj: ObjectSpec, outlined: bool, rng: random.Random | None = None, size_prob: float = 0.5
) -> str:
    """'a red circle', 'an outlined small blue square': the object's noun phrase."""
    words = ["outlined"] if outlined else []
    if obj.size in ("small", "large") and (rng is None or rng.random() < size_prob):
        words.append(obj.size)
    words += [obj.color, obj.shape]
    return f"{_article(words[0])} {' '.join(words)}"


def _join(parts: list[str], rng: random.Random) -> str:
    if len(parts) == 1:
        return parts[0]
    comma = "," if len(parts) > 2 or rng.random() < 0.2 else ""
    return ", ".join(parts[:-1]) + f"{comma} and {parts[-1]}"


def caption(scene: Scene, rng: random.Random | int | None = None) -> str:
    """A plain-English caption with varied wording; None -> the canonical form."""
    if rng is None:
        return canonical_caption(scene)
    rng = random.Random(rng) if isinstance(rng, int) else rng
    objs = list(scene.objects)
    nps = {id(o): noun_phrase(o, scene.outlined, rng) for o in objs}
    form = rng.random()
    if len(objs) == 1:
        (obj,) = objs
        text = nps[id(obj)]
        if obj.position != "center" or rng.random() < 0.5:
            text += " " + rng.choice(POSITION_PHRASES[obj.position])
    elif len(objs) == 2 and form < 0.3:
        first, second = rng.sample(objs, 2)
        relation = next(r for r, ps in RELATIONS.items() if ps == (first.position, second.position))
        text = f"{nps[id(first)]} {relation} {nps[id(second)]}"
    elif form < 0.85:
        order = rng.sample(objs, len(objs)) if rng.random() < 0.3 else objs
        text = _join([f"{nps[id(o)]} {rng.choice(POSITION_PHRASES[o.position])}" for o in order], rng)
    else:
        text = _join([nps[id(o)] for o in rng.sample(objs, len(objs))], rng)
    text = rng.choice(PREFIXES) + text
    if scene.dark:
        text += " " + rng.choice(DARK_PHRASES)
    elif rng.random() < 0.15:
        text += " " + LIGHT_PHRASES[scene.background]
    return text


def canonical_caption(scene: Scene) -> str:
    """The canonical caption: 'a blue square on the left and a yellow triangle on the right'."""
    parts = []
    for obj in scene.objects:
        phrase = noun_phrase(obj, scene.outlined)
        if obj.position is not None and (len(scene.objects) > 1 or obj.position != "center"):
            phrase += " " + POSITION_PHRASES[obj.position][0]
        parts.append(phrase)
    text = parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + f" and {parts[-1]}"
    return text + (" " + DARK_PHRASES[0] if scene.dark else "")


def distinct_captions(
    count: int, seed: int, n_objects: int = 2, exclude: Iterable[str] = ()
) -> list[tuple[str, Scene]]:
    """(canonical caption, scene) of `count` distinct held-in scenes of `n_objects` objects without style words,
    deterministic from `seed`, none of whose captions is in `exclude` (so an evaluation never repeats a search's
    prompt). The benchmarks' prompt sets."""
    rng, found, seen = random.Random(seed), [], set(exclude)
    while len(found) < count:
        scene = sample_scene(rng.randrange(10**9), "train", n_objects=n_objects, style_prob=0.0)
        text = canonical_caption(scene)
        if text not in seen:
            seen.add(text)
            found.append((text, scene))
    return found


def vocabulary() -> list[str]:
    """Every word (and ',') the captions use, sorted."""
    words = set(SHAPES) | set(COLORS) | set(SIZES) | {"outlined", "a", "an", "and", ","}
    phrases = [p for ps in POSITION_PHRASES.values() for p in ps] + list(RELATIONS) + list(PREFIXES)
    phrases += list(DARK_PHRASES) + list(LIGHT_PHRASES.values())
    for phrase in phrases:
        words |= set(phrase.split())
    return sorted(words)


# ----------------------------------------------------------------------------------------------------------
# Parsing captions back into scenes
# ----------------------------------------------------------------------------------------------------------

_NP = re.compile(
    r"\b(?:an?|one|the)\s+(?P<outlined>outlined\s+)?(?:(?P<size>small|large|big|medium)\s+)?"
    rf"(?P<color>{'|'.join(COLORS)})\s+(?P<shape>{'|'.join(SHAPES)})s?\b"
)
_PHRASE_TO_POSITION = {p: pos for pos, ps in POSITION_PHRASES.items() for p in ps}
_PHRASE_TO_POSITION.update({"on the top": "top", "on the bottom": "bottom", "in the centre": "center"})


def parse_caption(text: str) -> Scene:
    """Parse a caption in the forms `caption` writes into a Scene; unknown attributes become None."""
    text = " ".join(text.lower().replace(",", " , ").split())
    matches = list(_NP.finditer(text))
    if not matches:
        raise ValueError(f"caption names no '<color> <shape>' object that the toy world knows: {text!r}")
    objects, outlined, related = [], False, {}
    for i, m in enumerate(matches):
        between = text[m.end() : matches[i + 1].start() if i + 1 < len(matches) else len(text)]
        position = next((pos for p, pos in _PHRASE_TO_POSITION.items() if p in between), None)
        relation = next((r for r in RELATIONS if r in between), None) if i + 1 < len(matches) else None
        if relation is not None:
            position, related[i + 1] = RELATIONS[relation]
        position = position or related.get(i)
        outlined = outlined or bool(m["outlined"])
        size = {"big": "large"}.get(m["size"], m["size"])
        objects.append(ObjectSpec(m["shape"], m["color"], position, size))
    dark = any(f"{w} background" in text for w in ("dark", "black"))
    background = "dark" if dark else ("gray" if "gray background" in text else "white")
    layout = {1: "single", 2: "pair"}.get(len(objects), "row")
    return Scene(tuple(objects), background, outlined, layout)


def scene_matches_caption(scene: Scene, parsed: Scene) -> bool:
    """True when every attribute `parsed` specifies agrees with `scene` (objects in any order)."""
    if (
        len(scene.objects) != len(parsed.objects)
        or scene.dark != parsed.dark
        or scene.outlined != parsed.outlined
    ):
        return False
    for perm in permutations(scene.objects):
        if all(
            (a.shape, a.color) == (b.shape, b.color)
            and b.position in (None, a.position)
            and b.size in (None, a.size)
            for a, b in zip(perm, parsed.objects)
        ):
            return True
    return False
