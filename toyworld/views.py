"""The toy multi-view world for UpFusion: procedural 3D objects and an analytic torch ray caster.

An object is 1-4 primitives near the origin (world y up; a single primitive is always a cube): cubes
(axis-aligned boxes turned about y, one colour per face so that front and back differ), spheres, capped
cylinders and capped cones (both with a vertical axis, cone apex up), each in a saturated palette colour.
``sample_object(seed)`` is deterministic.

Named worlds (``WORLDS``, the ``world`` argument of ``sample_object`` / ``sample_views`` /
``curriculum_views``) give UpFusion a curriculum:

- ``"general"`` (the default): the objects above, unchanged; the general test.
- ``"cubes"``: a lone cube with six distinct face colours, random size and yaw, so that the far side of the
  first view is a different picture that only more input views can reveal.
- ``"detail"``: the general layout with detail a blurry regression cannot carry: cubes with striped or
  checkered faces (two palette colours per face, ``PATTERN_CELLS`` cells across), spheres, cylinders and
  cones in two tones split by a plane through the part's centre tilted ``TWO_TONE_TILT`` degrees from the
  vertical (turned by the part's yaw).

Rendering casts one ray per pixel (``guidance.cameras.ray_grid``: OpenCV c2w poses, principal point at the
image centre), intersects every primitive analytically, keeps the nearest hit and shades it with Lambert
lighting (a fixed directional light plus ambient) on a white background. ``antialias`` renders at k x k
samples per pixel and averages. Cameras orbit at ``DISTANCE`` with a ~40 degree field of view
(``focal = FOCAL_FRACTION * size``), so the object fills most of the frame.

Held-out split (``split_of``): seeds ``>= HELDOUT_SEED_START`` (1_000_000) are held out; seeds in
``[0, HELDOUT_SEED_START)`` are training objects. Train on ``split_seeds("train", n)`` and evaluate novel
views on ``split_seeds("heldout", n)``; the objects' continuous parameters (positions, sizes, turns) make
the two sets disjoint objects, not just disjoint seeds. Negative seeds are refused.

UpFusion (Kani et al.) trains on views of an object with no input poses; ``sample_views`` gives N random
views of one object (random azimuth, elevation in a range, fixed distance and focal) with their poses, which
the model only uses for the query camera (relative to the first view, see ``guidance.cameras``).
``curriculum_views`` spreads the input views around the object and, in the cubes world, puts the queries on
the far side of the first view. ``covisibility`` measures how much of a query view the inputs see at all.
"""

from __future__ import annotations

import json
import math
import random
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace

import torch
from PIL import Image

from guidance.cameras import check_pose, orbit_camera, ray_grid

__all__ = [
    "AMBIENT",
    "DEPTH_TOLERANCE",
    "DISTANCE",
    "FAR_SIDE_SPREAD",
    "FOCAL_FRACTION",
    "FOV_DEGREES",
    "HELDOUT_SEED_START",
    "LIGHT_DIRECTION",
    "PALETTE",
    "PATTERNS",
    "PATTERN_CELLS",
    "SHAPES",
    "TWO_TONE_TILT",
    "WORLDS",
    "Object3D",
    "Part",
    "covisibility",
    "curriculum_views",
    "default_focal",
    "render",
    "render_pil",
    "sample_object",
    "sample_views",
    "split_of",
    "split_seeds",
]

# ----------------------------------------------------------------------------------------------------------
# The world's vocabulary and camera defaults
# ----------------------------------------------------------------------------------------------------------

SHAPES: tuple[str, ...] = ("cube", "sphere", "cylinder", "cone")
PALETTE: dict[str, tuple[int, int, int]] = {  # saturated, well separated in hue
    "red": (220, 30, 30),
    "orange": (245, 130, 20),
    "yellow": (240, 215, 20),
    "green": (30, 170, 50),
    "cyan": (20, 190, 210),
    "blue": (30, 70, 230),
    "purple": (150, 40, 210),
    "magenta": (230, 40, 160),
}
CUBE_FACES: tuple[str, ...] = ("+x", "-x", "+y", "-y", "+z", "-z")  # order of a cube part's colours
WORLDS: tuple[str, ...] = ("general", "cubes", "detail")
PATTERNS: dict[str, tuple[str, ...]] = {  # the patterns each shape allows ("solid": one colour per face)
    "cube": ("solid", "stripes", "checks"),
    "sphere": ("solid", "two_tone"),
    "cylinder": ("solid", "two_tone"),
    "cone": ("solid", "two_tone"),
}
PATTERN_CELLS = 3  # stripes / checks across a patterned cube face
TWO_TONE_TILT = 45.0  # degrees from the vertical of the plane that splits a two-tone part

DISTANCE = 4.0  # camera distance from the origin
FOV_DEGREES = 40.0  # full field of view
FOCAL_FRACTION = 0.5 / math.tan(math.radians(FOV_DEGREES / 2))  # focal in pixels = FOCAL_FRACTION * size
ELEVATION_RANGE: tuple[float, float] = (-10.0, 40.0)

LIGHT_DIRECTION: tuple[float, float, float] = (0.4, 0.8, 0.45)  # toward the light (normalised when used)
AMBIENT = 0.45
DIFFUSE = 0.55
BACKGROUND: tuple[float, float, float] = (1.0, 1.0, 1.0)

HELDOUT_SEED_START = 1_000_000
_EPS = 1e-6


def default_focal(size: int) -> float:
    """Focal length in pixels for a ``size``-pixel image at the default field of view (``FOV_DEGREES``)."""
    return FOCAL_FRACTION * float(size)


# ----------------------------------------------------------------------------------------------------------
# Objects
# ----------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Part:
    """One primitive: a cube (half-extent ``size``, turned ``yaw`` degrees about y), sphere, cylinder or cone.

    ``size`` is the half-extent (cube) or radius (others); ``height`` the half-height (cylinder, cone; the
    cone apex is at ``center.y + height``, its base at ``center.y - height``). ``colors`` holds six palette
    names for a cube (faces ``CUBE_FACES`` in the cube's own frame: +x, -x, +y, -y, +z, -z), one otherwise.
    ``pattern`` is one of ``PATTERNS[shape]``: a striped or checkered cube face alternates its colour with the
    same face's entry of ``second_colors`` over ``PATTERN_CELLS`` cells; a two-tone part wears its
    ``second_colors`` entry below the ``TWO_TONE_TILT`` plane through its centre (turned by ``yaw``).
    """

    shape: str
    center: tuple[float, float, float]
    size: float
    colors: tuple[str, ...]
    height: float = 0.0
    yaw: float = 0.0
    pattern: str = "solid"
    second_colors: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.shape not in SHAPES:
            raise ValueError(f"Part.shape must be one of {SHAPES}; got {self.shape!r}")
        expected = 6 if self.shape == "cube" else 1
        if len(self.colors) != expected:
            raise ValueError(
                f"Part.colors of a {self.shape} must hold {expected} colour(s); got {len(self.colors)}"
            )
        unknown = [c for c in self.colors if c not in PALETTE]
        if unknown:
            raise ValueError(f"Part.colors must be palette names {tuple(PALETTE)}; got {unknown}")
        if self.shape in ("cylinder", "cone") and self.height <= 0:
            raise ValueError(f"Part.height of a {self.shape} must be > 0; got {self.height}")
        if self.size <= 0:
            raise ValueError(f"Part.size must be > 0; got {self.size}")
        if self.pattern not in PATTERNS[self.shape]:
            raise ValueError(
                f"Part.pattern of a {self.shape} must be one of {PATTERNS[self.shape]}; got {self.pattern!r}"
            )
        expected = 0 if self.pattern == "solid" else len(self.colors)
        if len(self.second_colors) != expected:
            raise ValueError(
                f"Part.second_colors of a {self.pattern} {self.shape} must hold {expected} colour(s); "
                f"got {len(self.second_colors)}"
            )
        unknown = [c for c in self.second_colors if c not in PALETTE]
        if unknown:
            raise ValueError(f"Part.second_colors must be palette names {tuple(PALETTE)}; got {unknown}")
        same = [c for c, d in zip(self.colors, self.second_colors) if c == d]
        if same:
            raise ValueError(
                f"Part.second_colors must differ from Part.colors face by face; both hold {same}"
            )


@dataclass(frozen=True)
class Object3D:
    """A procedural object: its parts and the seed it came from (-1 when built by hand)."""

    parts: tuple[Part, ...]
    seed: int = -1
    split: str = field(default="train")

    def to_json(self) -> str:
        """The object as a JSON string (round-trips through ``Object3D.from_json``; solid parts as before)."""
        data = asdict(self)
        for part in data["parts"]:  # solid parts without pattern fields: older JSON stays equal
            if part["pattern"] == "solid":
                del part["pattern"], part["second_colors"]
        return json.dumps(data, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> Object3D:
        """Rebuild an object from ``to_json`` output."""
        data = json.loads(text)
        parts = tuple(
            Part(
                shape=p["shape"],
                center=tuple(float(v) for v in p["center"]),
                size=float(p["size"]),
                colors=tuple(p["colors"]),
                height=float(p["height"]),
                yaw=float(p["yaw"]),
                pattern=str(p.get("pattern", "solid")),
                second_colors=tuple(p.get("second_colors", ())),
            )
            for p in data["parts"]
        )
        return cls(parts=parts, seed=int(data["seed"]), split=str(data["split"]))


def split_of(seed: int) -> str:
    """``"heldout"`` for seeds ``>= HELDOUT_SEED_START`` (1_000_000), ``"train"`` for smaller seeds (>= 0)."""
    if int(seed) < 0:
        raise ValueError(f"seed must be a non-negative integer; got {seed}")
    return "heldout" if int(seed) >= HELDOUT_SEED_START else "train"


def split_seeds(split: str, count: int, offset: int = 0) -> list[int]:
    """``count`` consecutive object seeds of ``split`` ("train" or "heldout"), starting ``offset`` into it."""
    if split not in ("train", "heldout"):
        raise ValueError(f"split must be 'train' or 'heldout'; got {split!r}")
    start = (HELDOUT_SEED_START if split == "heldout" else 0) + int(offset)
    seeds = list(range(start, start + int(count)))
    if split == "train" and seeds and seeds[-1] >= HELDOUT_SEED_START:
        raise ValueError(f"train split has only {HELDOUT_SEED_START} seeds; offset + count is too large")
    return seeds


def _sample_part(rng: random.Random, shape: str, center: tuple[float, float, float], scale: float) -> Part:
    """One primitive of ``shape`` at ``center`` with a size drawn around ``scale``."""
    names = list(PALETTE)
    size = scale * rng.uniform(0.8, 1.1)
    if shape == "cube":
        colors = tuple(rng.sample(names, 6))  # six distinct colours: every face differs
        return Part("cube", center, size * 0.8, colors, yaw=rng.uniform(-35.0, 35.0))
    colors = (rng.choice(names),)
    if shape == "sphere":
        return Part("sphere", center, size, colors)
    return Part(shape, center, size * 0.85, colors, height=size * rng.uniform(0.8, 1.2))


def _sample_detail_part(
    rng: random.Random, shape: str, center: tuple[float, float, float], scale: float
) -> Part:
    """``_sample_part`` with a pattern: a striped or checkered cube, or a two-tone round part at a random yaw."""
    part = _sample_part(rng, shape, center, scale)
    others = lambda color: [n for n in PALETTE if n != color]  # noqa: E731
    second = tuple(rng.choice(others(c)) for c in part.colors)
    if shape == "cube":
        return replace(part, pattern=rng.choice(("stripes", "checks")), second_colors=second)
    return replace(part, pattern="two_tone", second_colors=second, yaw=rng.uniform(0.0, 360.0))


def _sample_parts(rng: random.Random, sample_part: Callable[..., Part] = _sample_part) -> tuple[Part, ...]:
    """1-4 parts from ``sample_part``: a lone cube at the origin, or parts on a jittered ring about y."""
    count = rng.choice((1, 2, 2, 3, 3, 4))
    if count == 1:  # a lone cube: a lone sphere, cylinder or cone would look the same from every azimuth
        return (sample_part(rng, "cube", (0.0, 0.0, 0.0), 0.95),)
    scale = {2: 0.58, 3: 0.5, 4: 0.45}[count]
    ring = {2: 0.56, 3: 0.66, 4: 0.72}[count]  # parts on a ring about y, evenly spread, jittered
    start = rng.uniform(0.0, 2 * math.pi)
    parts = []
    for k in range(count):
        angle = start + 2 * math.pi * k / count + rng.uniform(-0.3, 0.3)
        center = (
            round(ring * math.cos(angle), 6),
            round(rng.uniform(-0.35, 0.35), 6),
            round(ring * math.sin(angle), 6),
        )
        parts.append(sample_part(rng, rng.choice(SHAPES), center, scale))
    return tuple(parts)


_WORLD_PARTS: dict[str, Callable[[random.Random], tuple[Part, ...]]] = {
    "general": _sample_parts,
    "cubes": lambda rng: (_sample_part(rng, "cube", (0.0, 0.0, 0.0), 0.95),),
    "detail": lambda rng: _sample_parts(rng, _sample_detail_part),
}


def _check_world(world: str) -> str:
    """``world`` if it names one of ``WORLDS``, else a ValueError naming the parameter."""
    if world not in WORLDS:
        raise ValueError(f"world must be one of {WORLDS}; got {world!r}")
    return world


def sample_object(seed: int, world: str = "general") -> Object3D:
    """A deterministic procedural object of ``world`` (one of ``WORLDS``) near the origin (seed -> same object)."""
    _check_world(world)
    split = split_of(seed)
    # The general world keeps its original stream; the others draw from their own.
    rng = random.Random(
        f"toyworld.views/{int(seed)}" if world == "general" else f"toyworld.views/{world}/{int(seed)}"
    )
    return Object3D(_WORLD_PARTS[world](rng), seed=int(seed), split=split)


# ----------------------------------------------------------------------------------------------------------
# Ray caster: analytic ray-primitive intersections (nearest positive t), Lambert shading
# ----------------------------------------------------------------------------------------------------------


def _rgb(name: str) -> torch.Tensor:
    return torch.tensor(PALETTE[name], dtype=torch.float32) / 255.0


def _safe(d: torch.Tensor) -> torch.Tensor:
    """Direction components with exact zeros nudged away from 0 (slab tests divide by them)."""
    return torch.where(d.abs() < 1e-12, torch.full_like(d, 1e-12), d)


def _yaw_rotation(part: Part, dtype: torch.dtype) -> torch.Tensor:
    """The part's local -> world rotation (3,3): ``yaw`` degrees about y (row vectors: world -> local is ``@ rot``)."""
    yaw = math.radians(part.yaw)
    c, s = math.cos(yaw), math.sin(yaw)
    return torch.tensor([[c, 0.0, s], [0.0, 1.0, 0.0], [-s, 0.0, c]], dtype=dtype)


def _face_colors(part: Part, local: torch.Tensor, axis: torch.Tensor, face: torch.Tensor) -> torch.Tensor:
    """Colours (R,3) of cube hits at local points (R,3) on faces ``face``: solid, or striped / checkered cells."""
    colors = torch.stack([_rgb(n) for n in part.colors])
    if part.pattern == "solid":
        return colors[face]
    second = torch.stack([_rgb(n) for n in part.second_colors])
    cells = ((local + part.size) / (2 * part.size) * PATTERN_CELLS).floor().clamp(0, PATTERN_CELLS - 1).long()
    u = cells.gather(-1, ((axis + 1) % 3)[:, None]).squeeze(-1)  # the face's two in-plane axes
    v = cells.gather(-1, ((axis + 2) % 3)[:, None]).squeeze(-1)
    odd = (u % 2 == 1) if part.pattern == "stripes" else ((u + v) % 2 == 1)
    return torch.where(odd[:, None], second[face], colors[face])


def _round_colors(part: Part, point: torch.Tensor) -> torch.Tensor:
    """Colours (R,3) of hits on a sphere, cylinder or cone at points (R,3) relative to its centre."""
    first = _rgb(part.colors[0]).expand(point.shape[0], 3)
    if part.pattern == "solid":
        return first
    tilt = math.radians(TWO_TONE_TILT)
    normal = torch.tensor([math.sin(tilt), math.cos(tilt), 0.0], dtype=point.dtype)  # in the part's frame
    below = (point @ _yaw_rotation(part, point.dtype)) @ normal < 0
    return torch.where(below[:, None], _rgb(part.second_colors[0]).expand_as(first), first)


def _hit_box(part: Part, o: torch.Tensor, d: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Slab test against a box turned about y: t (R,), world normal (R,3), colour (R,3)."""
    rot = _yaw_rotation(part, o.dtype)  # local -> world
    center = torch.tensor(part.center, dtype=o.dtype)
    lo = (o - center) @ rot  # world -> local: R^T (o - c), rows as vectors
    ld = _safe(d @ rot)
    h = part.size
    t1, t2 = (-h - lo) / ld, (h - lo) / ld
    tmin, tmax = torch.minimum(t1, t2), torch.maximum(t1, t2)
    near, axis = tmin.max(dim=-1)
    far = tmax.min(dim=-1).values
    hit = (near <= far) & (near > _EPS)
    t = torch.where(hit, near, torch.full_like(near, math.inf))
    sign = -torch.sign(ld.gather(-1, axis[:, None]).squeeze(-1))  # entering face faces the ray
    normal_local = torch.zeros_like(lo)
    normal_local.scatter_(-1, axis[:, None], sign[:, None])
    normal = normal_local @ rot.T
    face = axis * 2 + (sign < 0).long()  # +x, -x, +y, -y, +z, -z
    local = lo + torch.where(hit, t, torch.zeros_like(t))[:, None] * ld
    return t, normal, _face_colors(part, local, axis, face)


def _hit_sphere(
    part: Part, o: torch.Tensor, d: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Ray-sphere quadratic (unit d): nearest positive root."""
    center = torch.tensor(part.center, dtype=o.dtype)
    oc = o - center
    b = (oc * d).sum(-1)
    cc = (oc * oc).sum(-1) - part.size**2
    disc = b * b - cc
    root = torch.sqrt(disc.clamp(min=0))
    t = -b - root
    hit = (disc >= 0) & (t > _EPS)
    t = torch.where(hit, t, torch.full_like(t, math.inf))
    point = oc + torch.where(hit, t, torch.zeros_like(t))[:, None] * d
    normal = point / part.size
    return t, normal, _round_colors(part, point)


def _cap(o: torch.Tensor, d: torch.Tensor, y: float, radius: float) -> torch.Tensor:
    """t where the ray meets the disc of ``radius`` at local height ``y`` (inf when it misses)."""
    dy = _safe(d[:, 1])
    t = (y - o[:, 1]) / dy
    p = o + t[:, None] * d
    inside = (p[:, 0] ** 2 + p[:, 2] ** 2 <= radius**2) & (t > _EPS)
    return torch.where(inside, t, torch.full_like(t, math.inf))


def _nearest(candidates: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Element-wise minimum over candidate t's and the index of the winner."""
    stacked = torch.stack(candidates, dim=0)
    t, which = stacked.min(dim=0)
    return t, which


def _quadratic_roots(a: torch.Tensor, b: torch.Tensor, c: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Both real roots of a t^2 + b t + c (NaN-free: inf where none or a ~ 0), smaller first."""
    disc = b * b - 4 * a * c
    ok = (disc >= 0) & (a.abs() > 1e-9)
    root = torch.sqrt(disc.clamp(min=0))
    a_safe = torch.where(a.abs() > 1e-9, a, torch.ones_like(a))
    r1, r2 = (-b - root) / (2 * a_safe), (-b + root) / (2 * a_safe)
    lo, hi = torch.minimum(r1, r2), torch.maximum(r1, r2)
    inf = torch.full_like(lo, math.inf)
    return torch.where(ok, lo, inf), torch.where(ok, hi, inf)


def _hit_cylinder(
    part: Part, o: torch.Tensor, d: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Capped cylinder with a vertical axis: side quadratic in xz plus the two cap discs."""
    lo = o - torch.tensor(part.center, dtype=o.dtype)
    r, h = part.size, part.height
    a = d[:, 0] ** 2 + d[:, 2] ** 2
    b = 2 * (lo[:, 0] * d[:, 0] + lo[:, 2] * d[:, 2])
    c = lo[:, 0] ** 2 + lo[:, 2] ** 2 - r * r
    sides = []
    for root in _quadratic_roots(a, b, c):
        y = lo[:, 1] + torch.where(torch.isfinite(root), root, torch.zeros_like(root)) * d[:, 1]
        sides.append(torch.where((root > _EPS) & (y.abs() <= h), root, torch.full_like(root, math.inf)))
    t, which = _nearest([*sides, _cap(lo, d, h, r), _cap(lo, d, -h, r)])
    point = lo + torch.where(torch.isfinite(t), t, torch.zeros_like(t))[:, None] * d
    side_normal = torch.stack([point[:, 0], torch.zeros_like(t), point[:, 2]], dim=-1) / r
    up = torch.tensor([0.0, 1.0, 0.0], dtype=o.dtype).expand_as(o)
    normal = torch.where((which < 2)[:, None], side_normal, torch.where((which == 2)[:, None], up, -up))
    return t, normal, _round_colors(part, point)


def _hit_cone(
    part: Part, o: torch.Tensor, d: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Capped cone, apex up: x^2 + z^2 = k^2 (h - y)^2 for -h <= y <= h (k = r / 2h), plus the base disc."""
    lo = o - torch.tensor(part.center, dtype=o.dtype)
    r, h = part.size, part.height
    k2 = (r / (2 * h)) ** 2
    oy = h - lo[:, 1]  # distance below the apex
    a = d[:, 0] ** 2 + d[:, 2] ** 2 - k2 * d[:, 1] ** 2
    b = 2 * (lo[:, 0] * d[:, 0] + lo[:, 2] * d[:, 2] + k2 * oy * d[:, 1])
    c = lo[:, 0] ** 2 + lo[:, 2] ** 2 - k2 * oy**2
    sides = []
    for root in _quadratic_roots(a, b, c):  # the double cone: keep the nappe between base and apex
        y = lo[:, 1] + torch.where(torch.isfinite(root), root, torch.zeros_like(root)) * d[:, 1]
        sides.append(torch.where((root > _EPS) & (y >= -h) & (y <= h), root, torch.full_like(root, math.inf)))
    t, which = _nearest([*sides, _cap(lo, d, -h, r)])
    point = lo + torch.where(torch.isfinite(t), t, torch.zeros_like(t))[:, None] * d
    # Gradient of x^2 + z^2 - k^2 (h - y)^2: (x, k^2 (h - y), z), tilting up toward the apex.
    side_normal = torch.stack([point[:, 0], k2 * (h - point[:, 1]), point[:, 2]], dim=-1)
    side_normal = side_normal / side_normal.norm(dim=-1, keepdim=True).clamp(min=1e-12)
    down = torch.tensor([0.0, -1.0, 0.0], dtype=o.dtype).expand_as(o)
    normal = torch.where((which < 2)[:, None], side_normal, down)
    return t, normal, _round_colors(part, point)


def _bounding_radius(part: Part) -> float:
    """Radius of a sphere about the part's centre that contains the part."""
    if part.shape == "cube":
        return part.size * math.sqrt(3.0) * 1.001
    if part.shape == "sphere":
        return part.size * 1.001
    return math.hypot(part.size, part.height) * 1.001


_INTERSECTORS = {"cube": _hit_box, "sphere": _hit_sphere, "cylinder": _hit_cylinder, "cone": _hit_cone}


def _trace(
    obj: Object3D, origins: torch.Tensor, directions: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Nearest hit of rays (R,3) over all parts: depth t along the ray (R,; inf on a miss), normal, colour."""
    n_rays = origins.shape[0]
    best_t = torch.full((n_rays,), math.inf, dtype=origins.dtype)
    best_normal = torch.zeros(n_rays, 3, dtype=origins.dtype)
    best_color = torch.tensor(BACKGROUND, dtype=origins.dtype).expand(n_rays, 3).clone()
    for part in obj.parts:
        # Bounding-sphere cull: only rays that can reach the part run its exact intersection test.
        oc = origins - torch.tensor(part.center, dtype=origins.dtype)
        b = (oc * directions).sum(-1)
        disc = b * b - ((oc * oc).sum(-1) - _bounding_radius(part) ** 2)
        rays = torch.nonzero((disc >= 0) & (torch.sqrt(disc.clamp(min=0)) - b > 0)).flatten()
        if rays.numel() == 0:
            continue
        t, normal, color = _INTERSECTORS[part.shape](part, origins[rays], directions[rays])
        closer = t < best_t[rays]
        rays, t = rays[closer], t[closer]
        best_t[rays], best_normal[rays], best_color[rays] = t, normal[closer], color[closer].to(origins.dtype)
    return best_t, best_normal, best_color


def _cast(obj: Object3D, origins: torch.Tensor, directions: torch.Tensor) -> torch.Tensor:
    """Shade rays (R,3): nearest hit over all parts, Lambert + ambient, background where nothing is hit."""
    t, normal, color = _trace(obj, origins, directions)
    light = torch.tensor(LIGHT_DIRECTION, dtype=origins.dtype)
    light = light / light.norm()
    shade = AMBIENT + DIFFUSE * (normal @ light).clamp(min=0.0)
    hit = torch.isfinite(t)
    shaded = torch.where(hit[:, None], color * shade[:, None], color)
    return shaded.clamp(0.0, 1.0)


def render(
    obj: Object3D, c2w: torch.Tensor, size: int = 32, focal: float | None = None, antialias: int = 2
) -> torch.Tensor:
    """Ray-cast ``obj`` from pose(s) ``c2w`` (4,4) or (N,4,4): images (N,3,size,size) in [0,1] on white.

    ``focal`` defaults to ``default_focal(size)`` (~40 degree field of view); ``antialias`` k casts k x k rays
    per pixel and averages them (1 = one ray through each pixel centre).
    """
    poses = check_pose(c2w, "c2w")
    if poses.ndim == 2:
        poses = poses[None]
    poses = poses.reshape(-1, 4, 4).cpu()
    size, k = int(size), int(antialias)
    if size < 1 or k < 1:
        raise ValueError(f"size and antialias must be >= 1; got size={size}, antialias={k}")
    focal = default_focal(size) if focal is None else float(focal)
    # k x k samples per pixel: a size*k image with focal*k has the same field of view.
    origins, directions = ray_grid(poses, focal * k, size * k)
    colors = _cast(obj, origins.reshape(-1, 3), directions.reshape(-1, 3))
    images = colors.reshape(poses.shape[0], size * k, size * k, 3).permute(0, 3, 1, 2)
    if k > 1:
        images = torch.nn.functional.avg_pool2d(images, k)
    return images.contiguous()


def render_pil(
    obj: Object3D, c2w: torch.Tensor, size: int = 32, focal: float | None = None, antialias: int = 2
) -> Image.Image:
    """``render`` as a PIL image: one view for a (4,4) pose, a horizontal strip of views for (N,4,4)."""
    images = render(obj, c2w, size=size, focal=focal, antialias=antialias)
    strip = torch.cat(list(images), dim=-1)  # (3, size, N * size)
    array = (strip.permute(1, 2, 0) * 255.0).round().clamp(0, 255).to(torch.uint8).numpy()
    return Image.fromarray(array, mode="RGB")


def _check_elevation_range(elevation_range: Sequence[float]) -> tuple[float, float]:
    """``(low, high)`` in degrees, or a ValueError unless -90 <= low <= high <= 90."""
    low, high = (float(v) for v in elevation_range)
    if not -90.0 <= low <= high <= 90.0:
        raise ValueError(
            f"elevation_range must satisfy -90 <= low <= high <= 90; got {tuple(elevation_range)}"
        )
    return low, high


def _orbit_views(
    obj: Object3D,
    azimuths: list[float],
    elevations: list[float],
    size: int,
    distance: float,
    antialias: int,
) -> dict:
    """Render ``obj`` from orbit cameras: the views dict of ``sample_views``."""
    c2w = torch.stack([orbit_camera(a, e, distance) for a, e in zip(azimuths, elevations)])
    focal = default_focal(size)
    return {
        "images": render(obj, c2w, size=size, focal=focal, antialias=antialias),
        "c2w": c2w,
        "focal": focal,
        "azimuth": torch.tensor(azimuths, dtype=torch.float32),
        "elevation": torch.tensor(elevations, dtype=torch.float32),
        "object": obj,
    }


def sample_views(
    obj_seed: int,
    n_views: int,
    size: int = 32,
    seed: int | random.Random = 0,
    elevation_range: Sequence[float] = ELEVATION_RANGE,
    distance: float = DISTANCE,
    antialias: int = 2,
    world: str = "general",
) -> dict:
    """``n_views`` random views of object ``obj_seed``: dict(images (N,3,S,S), c2w (N,4,4), focal, ...).

    Azimuths are uniform in [0, 360), elevations uniform in ``elevation_range`` (degrees), at a fixed
    ``distance`` and ``focal = default_focal(size)``; deterministic per (obj_seed, seed). The dict also
    carries ``azimuth``/``elevation`` (N,) in degrees and the ``object`` (``sample_object(obj_seed, world)``).
    """
    rng = (
        seed if isinstance(seed, random.Random) else random.Random(f"toyworld.views/views/{obj_seed}/{seed}")
    )
    low, high = _check_elevation_range(elevation_range)
    obj = sample_object(obj_seed, world)
    azimuths = [rng.uniform(0.0, 360.0) for _ in range(int(n_views))]
    elevations = [rng.uniform(low, high) for _ in range(int(n_views))]
    return _orbit_views(obj, azimuths, elevations, size, distance, antialias)


FAR_SIDE_SPREAD = 60.0  # cubes-world queries: azimuth 180 +- this many degrees from input view 0
_FAR_SIDE_WORLDS = ("cubes",)


def curriculum_views(
    obj_seed: int,
    n_inputs: int,
    n_queries: int,
    size: int = 32,
    world: str = "general",
    seed: int = 0,
    elevation_range: Sequence[float] = ELEVATION_RANGE,
    distance: float = DISTANCE,
    antialias: int = 2,
) -> dict:
    """Input views spread around object ``obj_seed`` of ``world``, then query views: ``sample_views``' dict.

    Input k sits at azimuth ``a0 + 360 k / n_inputs`` (a0 uniform in [0, 360); inputs k >= 1 jittered by up to
    a quarter of the spacing); queries sit at uniform azimuths, or in the cubes world at ``a0 + 180 +-
    FAR_SIDE_SPREAD``, the far side of input 0. Elevations are uniform in ``elevation_range``. The dict adds
    ``inputs`` and ``queries``: index tensors into its views (inputs first). Input 0 and the queries depend
    only on (obj_seed, world, seed), not on ``n_inputs``, so counts of inputs compare on the same queries.
    """
    if int(n_inputs) < 1 or int(n_queries) < 0:
        raise ValueError(f"n_inputs must be >= 1 and n_queries >= 0; got {n_inputs} and {n_queries}")
    low, high = _check_elevation_range(elevation_range)
    obj = sample_object(obj_seed, world)
    rng = random.Random(f"toyworld.views/curriculum/{world}/{obj_seed}/{seed}")
    first = rng.uniform(0.0, 360.0)
    azimuths, elevations = [first], [rng.uniform(low, high)]
    far_side = world in _FAR_SIDE_WORLDS
    queries = [
        (
            (first + 180.0 + rng.uniform(-FAR_SIDE_SPREAD, FAR_SIDE_SPREAD)) % 360.0
            if far_side
            else rng.uniform(0.0, 360.0),
            rng.uniform(low, high),
        )
        for _ in range(int(n_queries))
    ]
    spacing = 360.0 / int(n_inputs)
    for k in range(1, int(n_inputs)):
        azimuths.append((first + k * spacing + rng.uniform(-0.25, 0.25) * spacing) % 360.0)
        elevations.append(rng.uniform(low, high))
    azimuths += [a for a, _ in queries]
    elevations += [e for _, e in queries]
    views = _orbit_views(obj, azimuths, elevations, size, distance, antialias)
    views["inputs"] = torch.arange(int(n_inputs))
    views["queries"] = torch.arange(int(n_inputs), int(n_inputs) + int(n_queries))
    return views


# ----------------------------------------------------------------------------------------------------------
# Covisibility: how much of a query view the input views see
# ----------------------------------------------------------------------------------------------------------

DEPTH_TOLERANCE = 1e-3  # world units (objects span ~2): a surface point is visible when its ray hits it first


def _visible_from(
    obj: Object3D, c2w: torch.Tensor, focal: float, size: int, points: torch.Tensor
) -> torch.Tensor:
    """Which world points (P,3) camera ``c2w`` sees: inside its frame and the first hit of its ray to them."""
    centre, rotation = c2w[:3, 3], c2w[:3, :3]
    camera = (points - centre) @ rotation  # world -> camera (OpenCV: x right, y down, z forward)
    z = camera[:, 2]
    pixels = camera[:, :2] / z.clamp(min=1e-12)[:, None] * focal + size / 2
    inside = (z > 0) & (pixels >= 0).all(-1) & (pixels < size).all(-1)
    offsets = points - centre
    depth = offsets.norm(dim=-1)
    t, _, _ = _trace(obj, centre.expand_as(points), offsets / depth.clamp(min=1e-12)[:, None])
    return inside & ((t - depth).abs() <= DEPTH_TOLERANCE)


def covisibility(
    obj: Object3D,
    input_c2w: torch.Tensor,
    query_c2w: torch.Tensor,
    size: int = 32,
    focal: float | None = None,
) -> torch.Tensor:
    """Per query view (Q,): the share of its object pixels whose surface point some input view sees.

    Casts one ray through each query pixel centre, takes the hit points and counts one as covisible when it
    projects inside an input camera's frame and that camera's own ray to it hits it first (depth within
    ``DEPTH_TOLERANCE``). ``focal`` defaults to ``default_focal(size)``; NaN for a query that shows no object.
    """
    inputs = check_pose(input_c2w, "input_c2w").reshape(-1, 4, 4).cpu().to(torch.float64)
    queries = check_pose(query_c2w, "query_c2w").reshape(-1, 4, 4).cpu().to(torch.float64)
    size = int(size)
    focal = default_focal(size) if focal is None else float(focal)
    shares = []
    for pose in queries:
        origins, directions = ray_grid(pose, focal, size)
        origins, directions = origins.reshape(-1, 3), directions.reshape(-1, 3)
        t, _, _ = _trace(obj, origins, directions)
        hit = torch.isfinite(t)
        points = origins[hit] + t[hit, None] * directions[hit]
        seen = torch.zeros(points.shape[0], dtype=torch.bool)
        for camera in inputs:
            seen |= _visible_from(obj, camera, focal, size, points)
        shares.append(seen.double().mean().item() if points.shape[0] else math.nan)
    return torch.tensor(shares, dtype=torch.float64)
